#!/bin/sh
# One-shot (compose service `minio-init`, image minio/mc): create the buckets and one least-privilege
# access key per bucket. The root credentials stay here and in `minio`; MLflow gets a key that can read
# and write MLFLOW_BUCKET only, the Airflow workers (DVC remote) one for DVC_BUCKET only.
# Idempotent: safe on every `docker compose up`.
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${PFT_S3_ACCESS_KEY_ID:?}" "${PFT_S3_SECRET_ACCESS_KEY:?}"
: "${PFT_DVC_S3_ACCESS_KEY_ID:?}" "${PFT_DVC_S3_SECRET_ACCESS_KEY:?}" "${MLFLOW_BUCKET:?}" "${DVC_BUCKET:?}"

if [ "$PFT_S3_ACCESS_KEY_ID" = "$PFT_DVC_S3_ACCESS_KEY_ID" ]; then
  echo "PFT_S3_ACCESS_KEY_ID and PFT_DVC_S3_ACCESS_KEY_ID must differ: one key per bucket" >&2; exit 1
fi

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$MLFLOW_BUCKET" "local/$DVC_BUCKET"
mc anonymous set none "local/$MLFLOW_BUCKET"   # model weights and data: never public
mc anonymous set none "local/$DVC_BUCKET"

# bucket_key POLICY BUCKET KEY_ID SECRET: a read/write policy on one bucket, attached to one user.
bucket_key() {
  cat > "${TMPDIR:-/tmp}/$1.json" <<JSON
{"Version": "2012-10-17",
 "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
   "Resource": ["arn:aws:s3:::$2"]},
  {"Effect": "Allow",
   "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
   "Resource": ["arn:aws:s3:::$2/*"]}]}
JSON
  mc admin policy create local "$1" "${TMPDIR:-/tmp}/$1.json"
  # `user add` on an existing user resets its secret to the one in .env (rotation = edit .env, re-run).
  mc admin user add local "$3" "$4"
  # attach fails when the policy is already attached; that is the state we want, so check it instead.
  mc admin policy attach local "$1" --user "$3" 2>/dev/null \
    || mc admin user info local "$3" | grep -q "$1"
}
bucket_key privatetune-rw "$MLFLOW_BUCKET" "$PFT_S3_ACCESS_KEY_ID" "$PFT_S3_SECRET_ACCESS_KEY"
bucket_key privatetune-dvc-rw "$DVC_BUCKET" "$PFT_DVC_S3_ACCESS_KEY_ID" "$PFT_DVC_S3_SECRET_ACCESS_KEY"
echo "buckets $MLFLOW_BUCKET, $DVC_BUCKET ready"
