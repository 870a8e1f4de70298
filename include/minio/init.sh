#!/bin/sh
# One-shot (compose service `minio-init`, image minio/mc): create the buckets and a least-privilege
# access key for them. The root credentials stay here and in `minio`; MLflow (and later DVC) get a key
# that can read and write these two buckets only. Idempotent: safe on every `docker compose up`.
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${PFT_S3_ACCESS_KEY_ID:?}" "${PFT_S3_SECRET_ACCESS_KEY:?}"
: "${MLFLOW_BUCKET:?}" "${DVC_BUCKET:?}"

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$MLFLOW_BUCKET" "local/$DVC_BUCKET"
mc anonymous set none "local/$MLFLOW_BUCKET"   # model weights and data: never public
mc anonymous set none "local/$DVC_BUCKET"

cat > /tmp/privatetune-rw.json <<JSON
{"Version": "2012-10-17",
 "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
   "Resource": ["arn:aws:s3:::$MLFLOW_BUCKET", "arn:aws:s3:::$DVC_BUCKET"]},
  {"Effect": "Allow",
   "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
   "Resource": ["arn:aws:s3:::$MLFLOW_BUCKET/*", "arn:aws:s3:::$DVC_BUCKET/*"]}]}
JSON
mc admin policy create local privatetune-rw /tmp/privatetune-rw.json
# `user add` on an existing user resets its secret to the one in .env (rotation = edit .env, re-run).
mc admin user add local "$PFT_S3_ACCESS_KEY_ID" "$PFT_S3_SECRET_ACCESS_KEY"
# attach fails when the policy is already attached; that is the state we want, so check it instead.
mc admin policy attach local privatetune-rw --user "$PFT_S3_ACCESS_KEY_ID" 2>/dev/null \
  || mc admin user info local "$PFT_S3_ACCESS_KEY_ID" | grep -q privatetune-rw
echo "buckets $MLFLOW_BUCKET, $DVC_BUCKET ready"
