"""S3 pre-flight against a real S3 protocol server (moto) on loopback: a missing bucket or object,
or a bucket without permission, is one clear error before any work. (Reading and writing s3://
runs in tests/test_cluster.py, test_readme.py and test_report.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import boto3

from conftest import start_moto


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
