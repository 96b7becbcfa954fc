#!/usr/bin/env bash
# Make sure the services the tests use and the machine does not start itself are up.
# PostgreSQL on 127.0.0.1:5432 (trust auth) is started if it is down; the Kafka-protocol
# broker (tansu), Prometheus and Alertmanager are started by the test fixtures themselves.
set -euo pipefail
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
fi
for _ in $(seq 1 60); do
  pg_isready -h 127.0.0.1 -p 5432 -q && exit 0
  sleep 1
done
echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
exit 1
