"""PrivateTune stage logic: one module per pipeline stage, importable without Airflow."""
