#!/bin/sh
# Grafana reads the store with its own read-only role (run once, on an empty data volume).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v reader_password="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password';
GRANT pg_read_all_data TO grafana_reader;
SQL
