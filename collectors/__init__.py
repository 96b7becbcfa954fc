"""flowwarden collectors stage."""
