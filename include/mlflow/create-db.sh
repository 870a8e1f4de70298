#!/bin/sh
# One-shot (compose service `mlflow-db-init`): create MLflow's own database on the shared Postgres,
# idempotently, so MLflow's tables never mix with Airflow's and an existing volume gets it too
# (docker-entrypoint-initdb.d only runs on an empty data directory).
set -eu
: "${MLFLOW_DB:?MLFLOW_DB is not set}"
case "$MLFLOW_DB" in
  *[!a-z0-9_]* | [0-9]* | "") echo "MLFLOW_DB='$MLFLOW_DB': use lower-case letters, digits and _ only" >&2; exit 2 ;;
esac
# \gexec runs the generated CREATE only when the database is missing; %I quotes the name.
psql -v ON_ERROR_STOP=1 -v db="$MLFLOW_DB" -h postgres -U "$POSTGRES_USER" -d "$POSTGRES_DB" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
echo "database $MLFLOW_DB ready"
