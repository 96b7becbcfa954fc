"""flowwarden simulator stage."""
