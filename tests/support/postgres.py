"""Session fixture for the machine's real PostgreSQL. Filled in by the store work."""
