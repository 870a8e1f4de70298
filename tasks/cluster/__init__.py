"""`make cluster`: the production topology of docker-compose.yaml as native processes on one machine.

Postgres (Airflow's metadata, MLflow's backend and the privacy ledger, three databases), Redis (the
Celery broker), an S3-compatible server (moto; MinIO in compose), the MLflow tracking server, Airflow
with the CeleryExecutor (api-server, scheduler, dag-processor, triggerer) and two Celery workers.
Every byte of state lives under `$PFT_HOME/cluster/`; `python -m tasks.cluster up|down|status|env`.
"""
