"""flowwarden pipeline stage."""
