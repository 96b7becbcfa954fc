"""flowwarden dashboards stage."""
