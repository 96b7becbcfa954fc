from flowwarden.cli import main

main()
