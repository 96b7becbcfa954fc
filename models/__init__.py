"""flowwarden models stage."""
