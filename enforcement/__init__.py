"""flowwarden enforcement stage."""
