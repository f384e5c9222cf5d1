"""prepare from and to s3:// against a real S3 protocol server (moto) on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pyarrow.parquet as pq

from conftest import start_moto
from raylm import storage


def test_prepare_reads_and_writes_s3(s3_server, tmp_path, monkeypatch):
    env, client = s3_server
    client.create_bucket(Bucket="corpus")
    rows = "".join(json.dumps({"text": f"Document {i}: " + "words of text " * 40}) + "\n" for i in range(60))
    client.put_object(Bucket="corpus", Key="raw/part-0.jsonl", Body=rows.encode())
    client.put_object(Bucket="corpus", Key="raw/held-out.txt", Body=b"A held-out document. " * 50)
    result = subprocess.run(
        [sys.executable, "-m", "raylm", "prepare", "--num-cpus", "2", "data.sources=[s3://corpus/raw/*.jsonl]",
         "data.test_sources=[s3://corpus/raw/held-out.txt]", "data.output=s3://corpus/prepared/v1",
         "data.filters.profile=none", "data.dedup.near=false", "data.tokenizer.vocab_size=300", "data.split.val=0.1",
         "data.split.test=0"],
        env={**os.environ, **env, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}, capture_output=True, text=True, timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="corpus", Prefix="prepared/")["Contents"]}
    manifest = json.loads(client.get_object(Bucket="corpus", Key="prepared/v1/manifest.json")["Body"].read())
    assert manifest["documents"]["read"] == 61 and manifest["documents"]["kept_per_split"]["test"] == 1
    for split in ("train", "test"):
        for shard in manifest["splits"][split]["shards"]:
            assert f"prepared/v1/{shard}" in keys
    assert {"prepared/v1/tokenizer.json", "prepared/v1/config.yaml"} <= keys
    assert not any(".staging-" in k for k in keys)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage._s3.cache_clear()  # an S3 filesystem made under this environment
    fs, inner = storage.filesystem("s3://corpus/prepared/v1/" + manifest["splits"]["train"]["shards"][0])
    rows = pq.read_table(inner, filesystem=fs).column("tokens").to_pylist()
    assert rows and all(len(row) == manifest["seq_len"] + 1 for row in rows)
    storage._s3.cache_clear()


def test_missing_bucket_and_object_are_clear_errors_before_work(s3_server, tmp_path):
    env, client = s3_server
    client.create_bucket(Bucket="exists")
    client.put_object(Bucket="exists", Key="a.txt", Body=b"text")
    full_env = {**os.environ, **env}
    for source, fragment in (("s3://no-such-bucket/raw", "source not found: s3://no-such-bucket/raw"),
                             ("s3://exists/missing.jsonl", "source not found: s3://exists/missing.jsonl")):
        result = subprocess.run([sys.executable, "-m", "raylm", "prepare", f"data.sources=[{source}]"],
                                env=full_env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "raylm", "prepare", "data.sources=[s3://exists]",
                             "data.output=s3://no-such-bucket/out"], env=full_env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "output s3://no-such-bucket/out is not writable" in result.stderr


def test_a_bucket_without_permission_is_a_clear_error_before_work(tmp_path):
    """IAM enforced (moto counts the first few calls as set-up): a user with no policy."""
    server, env, client = start_moto(INITIAL_NO_AUTH_ACTION_COUNT="4")
    try:
        client.create_bucket(Bucket="private")
        client.put_object(Bucket="private", Key="raw/a.txt", Body=b"text")
        iam = boto3.client("iam", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        user_env = {**os.environ, **env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                    "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        for args, fragment in ((["data.sources=[s3://private/raw]"], "cannot access s3://private/raw"),
                               ([f"data.sources=[{tmp_path}]", "data.output=s3://private/out"],
                                "output s3://private/out is not writable")):
            (tmp_path / "a.txt").write_text("local text")
            result = subprocess.run([sys.executable, "-m", "raylm", "prepare", *args], env=user_env,
                                    capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert result.returncode == 2 and fragment in result.stderr and "ACCESS_DENIED" in result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    finally:
        server.terminate()
        server.wait()
