"""The DVC remote on an S3-compatible object store (MinIO in compose; moto's S3 server on loopback here).

One registry is versioned with $PFT_DVC_REMOTE_URL set: the bytes must land in the bucket, a fresh
checkout must pull them back from the bucket alone, and the credentials must never enter git.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.common import offline
from tasks.data.version import (
    REMOTE_ENDPOINT_ENV,
    REMOTE_NAME,
    REMOTE_URL_ENV,
    _point_remote,
    checkout_dataset,
    version_dataset,
)

offline.apply()

BUCKET, PREFIX = "pft-dvc-test", "registry"
KEY_ID = "PFTTESTKEYID0000001"
SECRET = "pft-test-secret-7c1e9b0d4a6f"  # must never appear in the registry's git history
ROWS = [
    {
        "record_id": "R-2026-01-000001",
        "record_type": "claim_note",
        "text": "Member <PERSON_1> asked about <CLAIM_ID_1>.",
    },
    {"record_id": "R-2026-01-000002", "record_type": "support_ticket", "text": "Call back at <PHONE_NUMBER_1>."},
]


@pytest.fixture()
def s3(monkeypatch, tmp_path):
    """moto's S3 server on 127.0.0.1 with one bucket, and the env a compose worker gets."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {
        REMOTE_URL_ENV: f"s3://{BUCKET}/{PREFIX}",
        REMOTE_ENDPOINT_ENV: endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        # Nothing from the developer's machine: no ~/.aws files, no instance metadata, no proxy.
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-creds"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }.items():
        monkeypatch.setenv(name, value)
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, region_name="us-east-1"
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, check=check, capture_output=True, text=True)


def test_version_pushes_to_s3_and_checkout_pulls_from_s3_alone(s3, tmp_path, monkeypatch):
    masked = tmp_path / "masked"
    masked.mkdir()
    source = masked / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    data = source.read_bytes()
    registry, remote = tmp_path / "datasets", tmp_path / "dvc-remote"

    out = version_dataset(masked_dir=masked, registry_dir=registry, remote_dir=remote, run_id="s3-run-1")
    md5 = out["dvc_md5"]
    assert md5 == hashlib.md5(data).hexdigest()

    # The object is in the bucket at DVC 3's content address, with the dataset's bytes; the local
    # remote folder stayed empty (the push went to S3, not to the folder).
    key = f"{PREFIX}/files/md5/{md5[:2]}/{md5[2:]}"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == [key]
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    assert not any(remote.rglob("*")), "bytes were pushed to the local remote folder"

    # Credentials are in no file of the registry; URL and endpoint only in the git-ignored config.local.
    for path in (p for p in registry.rglob("*") if p.is_file()):
        body = path.read_bytes()
        assert SECRET.encode() not in body and KEY_ID.encode() not in body, path
    local_conf = (registry / ".dvc" / "config.local").read_text()
    assert f"s3://{BUCKET}/{PREFIX}" in local_conf and "endpointurl" in local_conf
    assert git(registry, "check-ignore", "-q", ".dvc/config.local", check=False).returncode == 0
    revs = git(registry, "rev-list", "--all").stdout.split()
    assert revs
    # A hit exits 0, no hit 1. Positive controls: the search reads the committed .dvc/config, which
    # turns analytics off and names the local folder (the remote the registry was created with).
    for committed in ("analytics = false", f"url = {remote.resolve()}"):
        assert git(registry, "grep", "-q", "-i", "-F", committed, *revs, check=False).returncode == 0, committed
    for needle in (SECRET, KEY_ID, f"s3://{BUCKET}", "endpointurl"):
        assert git(registry, "grep", "-q", "-F", needle, *revs, check=False).returncode == 1, needle

    # A worker elsewhere: the registry's cache and the local remote folder are gone, so the only
    # copy of the bytes is the bucket.
    shutil.rmtree(registry / ".dvc" / "cache")
    shutil.rmtree(remote)
    pulled = checkout_dataset(registry_dir=registry, remote_dir=remote, rev=out["tag"], out_dir=tmp_path / "work")
    assert pulled.read_bytes() == data
    assert not remote.exists()

    # Unset the variable and the checkout's default remote is the local folder again, endpoint dropped.
    from dvc.config import Config

    monkeypatch.delenv(REMOTE_URL_ENV)
    _point_remote(tmp_path / "work", remote)
    conf = Config(dvc_dir=str(tmp_path / "work" / ".dvc"), validate=False)
    assert conf["core"]["remote"] == REMOTE_NAME and str(conf["core"]["analytics"]).lower() == "false"
    assert dict(conf["remote"][REMOTE_NAME]) == {"url": str(remote.resolve())}


@pytest.mark.parametrize(
    "url, endpoint",
    [
        ("gs://bucket/x", ""),  # only S3 is wired (dvc-s3)
        ("s3://", ""),  # no bucket
        ("s3://AKIA:pft-test-secret-in-url@bucket/x", ""),  # credentials in the URL
        ("s3://bucket/x", "http://AKIA:pft-test-secret-in-url@minio:9000"),
        ("s3://bucket/x", "minio:9000"),  # no scheme
    ],
)
def test_a_bad_remote_setting_fails_without_echoing_it(tmp_path, monkeypatch, url, endpoint):
    masked = tmp_path / "masked"
    masked.mkdir()
    (masked / "train.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    monkeypatch.setenv(REMOTE_URL_ENV, url)
    monkeypatch.setenv(REMOTE_ENDPOINT_ENV, endpoint)
    with pytest.raises(ValueError) as info:
        version_dataset(masked_dir=masked, registry_dir=tmp_path / "datasets", remote_dir=tmp_path / "r", run_id="x")
    assert REMOTE_URL_ENV in str(info.value) or REMOTE_ENDPOINT_ENV in str(info.value)
    assert "pft-test-secret-in-url" not in str(info.value)
    assert not (tmp_path / "datasets").exists()  # refused before the registry was touched
