#!/bin/sh
# One-shot (compose service `mlflow-db-init`): create MLflow's and the privacy ledger's own databases on
# the shared Postgres, idempotently, so their tables never mix with Airflow's and an existing volume gets
# them too (docker-entrypoint-initdb.d only runs on an empty data directory). `make cluster` does the same
# natively (tasks/cluster/services.py).
set -eu
: "${MLFLOW_DB:?MLFLOW_DB is not set}"
: "${LEDGER_DB:?LEDGER_DB is not set}"
for db in "$MLFLOW_DB" "$LEDGER_DB"; do
  case "$db" in
    *[!a-z0-9_]* | [0-9]* | "") echo "database name '$db': use lower-case letters, digits and _ only" >&2; exit 2 ;;
  esac
  # \gexec runs the generated CREATE only when the database is missing; %I quotes the name.
  psql -v ON_ERROR_STOP=1 -v db="$db" -h postgres -U "$POSTGRES_USER" -d "$POSTGRES_DB" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
  echo "database $db ready"
done
