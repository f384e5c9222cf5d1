"""raylm on real Ray clusters started on this machine the way a user starts them:

- two nodes (`ray start --head` on loopback with token auth, and `ray start --address` for a
  worker): `ray job submit` runs prepare; an elastic pretrain across both nodes, which loses the
  worker node mid-run, goes on with one worker and grows back to two when the node returns, then
  is stopped by `ray job stop`; and evaluate of its newest checkpoint, with every path on s3:// (moto
  on loopback). (A run submitted again resumes: tests/test_pretrain.py.)
  A client without the cluster's token is refused; the nodes' S3 secret appears in no output and
  no job log.
- the local autoscaling rehearsal (cluster/local.yaml, started by the commands in its header): a
  two-worker pretrain job makes the autoscaler launch worker nodes from zero, released once idle.

`ray stop` ends every Ray process on the machine, so the session's embedded Ray is shut down
before a cluster starts and started again after.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import _free_port, articles, start_session_ray
from raylm.runtime import DATA_RESOURCE
from raylm.train.checkpoint import latest_complete, saved_state

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


@pytest.fixture
def machine_for_a_cluster():
    import ray

    embedded = ray.is_initialized()
    ray.shutdown()
    yield
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    if embedded:
        start_session_ray()


@pytest.fixture
def articles_prepared(run_prepare, tmp_path) -> Path:
    """Wikipedia articles prepared on the session's Ray, before a cluster test shuts it down."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(articles()):
        (corpus / f"article-{i:02d}.txt").write_text(text)
    run_prepare(f"data.sources=[{corpus}]", "data.dedup.near=false", output=tmp_path / "articles-prepared")
    return tmp_path / "articles-prepared"


def cluster_env(**extra: str) -> dict[str, str]:
    """What a user's shell has: the venv's `ray` and `python` first on PATH, token mode on (and no
    AWS settings but those given)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("AWS_")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "RAY_AUTH_MODE": "token",
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **extra}


def ray_cli(*args: str, env: dict, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([RAY, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"ray {' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


SUBMIT = """
import json, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient

client = JobSubmissionClient(sys.argv[1])
job = client.submit_job(entrypoint=sys.argv[2], runtime_env=json.loads(sys.argv[3]))
while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
    time.sleep(1)
print(client.get_job_logs(job))
sys.exit(status != JobStatus.SUCCEEDED)
"""


def submit(address: str, entrypoint: str, env: dict, **env_vars: str) -> str:
    """A job with this repository as its working dir through the SDK (JobSubmissionClient), in a
    client process of its own (Ray caches the auth mode per process); its logs once it succeeded."""
    runtime_env = {"working_dir": str(ROOT), "env_vars": env_vars}
    result = subprocess.run([sys.executable, "-c", SUBMIT, address, entrypoint, json.dumps(runtime_env)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{entrypoint}\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    return result.stdout


@pytest.mark.timeout(900)
def test_jobs_on_a_two_node_token_cluster_with_every_path_on_s3(machine_for_a_cluster, s3_server, tmp_path):
    s3_env, s3 = s3_server
    # moto (no IAM here) takes any key pair: a distinctive secret, to look for in everything written.
    secret = "raylm-test-secret-" + secrets.token_hex(8)
    (tmp_path / "token").write_text(secrets.token_hex(32))
    # The nodes have credentials (as from an instance profile) but not the endpoint: jobs bring it,
    # in the config (s3.endpoint_url) or in the job's runtime_env.
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    node_s3 = {**s3_env, "AWS_SECRET_ACCESS_KEY": secret}
    del node_s3["AWS_ENDPOINT_URL"]
    env = cluster_env(**node_s3, RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"))
    s3.create_bucket(Bucket="lm-cluster")
    texts = articles()
    for i, text in enumerate(texts[:-1]):
        s3.put_object(Bucket="lm-cluster", Key=f"raw/article-{i:02d}.txt", Body=text.encode())
    s3.put_object(Bucket="lm-cluster", Key="held-out.txt", Body=texts[-1].encode())

    gcs, dashboard = _free_port(), _free_port()
    # The head declares a node dead after 2 missed health checks a second apart (Ray's default: 5, 3 s apart).
    # Only the head declares the data mark, as a CPU node type does; the worker node stands for a GPU one.
    ray_cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=1",
            f"--resources={json.dumps({DATA_RESOURCE: 1})}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats",
            env={**env, "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "2"})
    node = WorkerNode(gcs, env)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        jobs_on_two_nodes(address, gcs, env, node, s3, endpoint, secret, tmp_path)
    finally:
        node.remove()


class WorkerNode:
    """A one-CPU worker node (`ray start --block`) in a process group of its own, so a test can take
    the node away at once, as when an instance vanishes: SIGKILL to the raylet and its agents; the
    node's worker processes (in process groups of their own) exit when their raylet is gone. It
    has a temp dir of its own, as a machine of its own would: nodes that share one unpack job
    working dirs into the same folder, and a node that first sees a package deletes and unpacks
    it again under the feet of a job already running there."""

    def __init__(self, gcs: int, env: dict) -> None:
        self.gcs, self.env = gcs, env
        self.temp_dir = tempfile.mkdtemp(prefix="raylm-node-")  # short: Ray's socket paths live under it
        self.start()

    def start(self) -> None:
        """Start the node and return once it has joined the cluster."""
        self.process = subprocess.Popen([RAY, "start", f"--address=127.0.0.1:{self.gcs}", "--num-cpus=1", "--block",
                                         f"--temp-dir={self.temp_dir}"],
                                        env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + 120
        while sum(n["state"] == "ALIVE" for n in nodes(self.env, self.gcs)) < 2:
            assert self.process.poll() is None and time.monotonic() < deadline, "the worker node did not join"
            time.sleep(1)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def jobs_on_two_nodes(address, gcs, env, node, s3, endpoint, secret, tmp_path) -> None:

    # prepare through the CLI, as the README shows it
    out = ray_cli("job", "submit", f"--address={address}", "--working-dir=.", "--", "python", "jobs/prepare.py",
                  "data.sources=[s3://lm-cluster/raw]", "data.test_sources=[s3://lm-cluster/held-out.txt]",
                  "data.output=s3://lm-cluster/prepared", "data.tokenizer.vocab_size=512",
                  "data.seq_len=64", "data.filters.profile=none", "data.dedup.near=false", "data.split.val=0.2",
                  f"s3.endpoint_url={endpoint}", env=env)
    assert "prepare: wrote s3://lm-cluster/prepared" in out.stdout + out.stderr
    manifest = json.loads(s3.get_object(Bucket="lm-cluster", Key="prepared/manifest.json")["Body"].read())
    assert manifest["documents"]["read"] == 24 and manifest["splits"]["val"]["sequences"] >= 2
    assert manifest["documents"]["kept_per_split"]["test"] == 1  # the held-out source, and only it
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket="lm-cluster", Prefix="prepared/")["Contents"]}
    assert {"prepared/tokenizer.json", "prepared/config.yaml"} <= keys and not any(".staging-" in k for k in keys)
    # Every task and actor of prepare's own stages asked for the data mark, and so ran on the head
    # (an actor's node is in the actor list: its creation task names none).
    head = next(n["node_id"] for n in nodes(env, gcs) if n["is_head_node"])
    state = [f"--address=127.0.0.1:{gcs}", "--format=json", "--detail", "--limit=10000"]
    tasks = json.loads(ray_cli("list", "tasks", *state, env=env).stdout)
    marked = [t for t in tasks if DATA_RESOURCE in (t.get("required_resources") or {})]
    stages = {t["name"] for t in marked}
    assert any("_read_files" in name for name in stages) and "_train_bpe_task" in stages, stages
    assert any("TokenizeAndWrite" in name for name in stages), stages
    assert {t["node_id"] for t in marked if t["type"] == "NORMAL_TASK"} == {head}
    actors = json.loads(ray_cli("list", "actors", *state, env=env).stdout)
    assert {a["node_id"] for a in actors if "TokenizeAndWrite" in a["class_name"]} == {head}

    # An elastic pretrain ([1, 2] workers) across both nodes, allowed to retry forever. Once it has
    # checkpointed, the worker node (with the rank-1 worker) goes away: the run resumes from its
    # newest S3 checkpoint on the head's one worker without waiting for the node, and when the node
    # is back it grows to 2 workers again. Then `ray job stop`.
    pretrain = ["python", "jobs/pretrain.py", "model.preset=tiny", "train.data=s3://lm-cluster/prepared",
                "train.storage=s3://lm-cluster/runs", "train.workers=[1,2]", "train.batch_size=8", "train.log_every=2",
                "train.eval_every=6", "train.checkpoint_every=6", "train.max_failures=-1", "train.resize_check_seconds=2",
                f"s3.endpoint_url={endpoint}"]
    # Killed at once, the node is still alive to Ray for a moment, so the first restart may try both
    # workers again and wait for the worker-group start timeout (60 s by default) before taking one.
    # The timeout is for the placement group, which one node's free CPUs grant at once.
    quick_start = json.dumps({"env_vars": {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "5"}})
    out = ray_cli("job", "submit", f"--address={address}", "--working-dir=.", f"--runtime-env-json={quick_start}",
                  "--no-wait", "--", *pretrain, "train.max_steps=100000", env=env)
    job = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out.stdout + out.stderr).group(1)
    wait_while_running(job, address, env, until=lambda: latest_step() >= 6)
    assert "2 workers on 2 nodes" in job_logs(address, job, env)
    node.kill()
    while any(n["state"] == "ALIVE" for n in nodes(env, gcs) if not n["is_head_node"]):
        time.sleep(0.5)

    def resumed_after(marker: str) -> int | None:
        """The step the run resumed from after the job log's last `marker` line, if it has yet."""
        found = re.findall(r"resumed from step (\d+)", job_logs(address, job, env).rpartition(marker)[2])
        return int(found[0]) if found and marker in job_logs(address, job, env) else None

    wait_while_running(job, address, env, until=lambda: resumed_after("1 worker on 1 node") is not None)
    resumed = resumed_after("1 worker on 1 node")
    assert resumed >= 6
    wait_while_running(job, address, env, until=lambda: latest_step() >= resumed + 6)  # on one worker, node still gone
    node.start()
    wait_while_running(job, address, env, until=lambda: "2 workers on 2 nodes" in job_logs(address, job, env).rpartition(
        "1 worker on 1 node")[2] and resumed_after("2 workers on 2 nodes") is not None)
    grown = resumed_after("2 workers on 2 nodes")
    assert grown >= resumed + 6
    wait_while_running(job, address, env, until=lambda: latest_step() >= grown + 6)  # and on from there
    ray_cli("job", "stop", f"--address={address}", job, env=env)
    assert "was stopped" in ray_cli("job", "status", f"--address={address}", job, env=env).stdout
    pretrain_logs = ray_cli("job", "logs", f"--address={address}", job, env=env).stdout
    assert "2 workers on 2 nodes" in pretrain_logs
    assert "Execution plan" not in pretrain_logs and "(RayTrainWorker" not in pretrain_logs  # as quiet as a console
    last = latest_step()
    metrics = s3.get_object(Bucket="lm-cluster", Key="runs/pretrain/metrics.jsonl")["Body"].read().decode()
    records = {}  # a resumed run logs the steps it redid again: the later record wins (read_metrics)
    for line in metrics.splitlines():
        if "loss" in line:
            records[json.loads(line)["step"]] = json.loads(line)
    steps = [step for step in sorted(records) if step <= last]  # (the stopped job may have logged past `last`)
    assert steps == list(range(2, last + 1, 2))  # every logged step once: none lost, none twice
    workers = [records[step]["workers"] for step in steps]  # 2, then 1 after the node went, then 2
    assert workers[0] == 2 and 1 in workers and workers[workers.index(1):].count(2)
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket="lm-cluster", Prefix="runs/")["Contents"]}
    # TensorBoard events go up at each checkpoint: the stopped run kept all three parts' curves.
    assert len([k for k in keys if k.startswith("runs/pretrain/tensorboard/events.out.tfevents.")]) >= 3
    logs = submit(address, "python jobs/evaluate.py --checkpoint s3://lm-cluster/runs/pretrain --json", env,
                  AWS_ENDPOINT_URL=endpoint)
    report = json.loads(next(line for line in logs.splitlines() if line.startswith("{")))
    assert report["checkpoint"].endswith(f"checkpoint-{last:07d}") and report["bits_per_byte"] > 0
    assert "Execution plan" not in logs  # a job's log is as quiet as a console

    # token auth: a request without the token, and a client with another one, are refused
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=30)
    assert refused.value.code == 401
    (tmp_path / "other").write_text(secrets.token_hex(32))
    other = ray_cli("job", "list", f"--address={address}", env={**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "other")},
                    check=False)
    assert other.returncode != 0 and "token is invalid" in other.stderr

    # the secret reached no object and no job log
    for item in s3.list_objects_v2(Bucket="lm-cluster")["Contents"]:
        assert secret.encode() not in s3.get_object(Bucket="lm-cluster", Key=item["Key"])["Body"].read(), item["Key"]
    assert secret not in logs + pretrain_logs + out.stdout + out.stderr


def jobs_api(address: str, path: str, env: dict) -> dict:
    """GET on the jobs REST API with the cluster's token: a poll that costs no Python start-up on a
    machine whose two CPUs are training."""
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{address}/api/jobs/{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def job_status(address: str, job: str, env: dict) -> str:
    return jobs_api(address, job, env)["status"]


def job_logs(address: str, job: str, env: dict) -> str:
    return jobs_api(address, f"{job}/logs", env)["logs"]


def wait_while_running(job: str, address: str, env: dict, until, timeout: float = 240) -> None:
    """Poll until(); fail with the job's status and logs if the job ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not until():
        status = job_status(address, job, env)
        if time.monotonic() > deadline or status in ("FAILED", "STOPPED"):
            pytest.fail(f"{status}\n{job_logs(address, job, env)[-5000:]}")
        time.sleep(1)


def latest_step() -> int:
    """The step of the run's newest whole checkpoint (raylm's own check: every rank's checksums)."""
    checkpoint = latest_complete("s3://lm-cluster/runs/pretrain")
    return saved_state(checkpoint)["step"] if checkpoint else 0


def rehearsal_start_commands() -> list[str]:
    """The shell commands under '# Start' in cluster/local.yaml's header (comments dropped,
    continuation lines joined)."""
    header = (ROOT / "cluster" / "local.yaml").read_text().split("\n# Use")[0].split("# Start")[1]
    commands, pending = [], ""
    for line in header.splitlines():
        if line.startswith("#   "):
            line = re.sub(r"\s+# .*", "", line[1:]).strip()
            pending += line.removesuffix("\\").strip() + " "
            if not line.endswith("\\"):
                commands.append(pending.strip())
                pending = ""
    return commands


def readme_rehearsal() -> list[str]:
    """The README's rehearsal commands: start (as local.yaml's header), a job, `ray status`, `ray stop`."""
    readme = (ROOT / "README.md").read_text()
    return next(b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "RAY_FAKE_CLUSTER" in b).splitlines()


def nodes(env: dict, gcs: int = 6379) -> list[dict]:
    return json.loads(ray_cli("list", "nodes", "--format=json", f"--address=127.0.0.1:{gcs}", env=env).stdout)


def shell(command: str, env: dict) -> str:
    result = subprocess.run(["bash", "-c", command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_the_local_rehearsal_cluster_scales_workers_from_zero_for_a_job_and_back(articles_prepared, machine_for_a_cluster,
                                                                                tmp_path):
    """The README's rehearsal as written (its data and run folders in tmp_path): a two-worker
    pretrain needs more CPUs than the head's one, so the autoscaler adds worker nodes of
    local.yaml's types, and takes them away once idle (idle_timeout_minutes: 0.25)."""
    env = cluster_env(HOME=str(tmp_path / "home"))  # `ray get-auth-token --generate` writes ~/.ray/auth_token
    data = tmp_path / "prepared" / "books"
    shutil.copytree(articles_prepared, data)

    *start, job, status, stop = readme_rehearsal()
    assert start == rehearsal_start_commands()  # the README and local.yaml's header say the same
    for command in start:
        shell(command, env)
    assert [n["is_head_node"] for n in nodes(env) if n["state"] == "ALIVE"] == [True]

    out = shell(job.replace("$PWD/prepared", str(tmp_path / "prepared")).replace("$PWD/runs", str(tmp_path / "runs")), env)
    assert "Adding 1 node(s) of type cpu-worker" in out
    assert (tmp_path / "runs" / "pretrain" / "checkpoint-0000020").is_dir()
    assert "cpu-worker" in shell(status, env)
    launched = [n for n in nodes(env) if not n["is_head_node"]]
    assert launched and {n["labels"]["raylm/role"] for n in launched} <= {"data", "gpu"}

    deadline = time.monotonic() + 180
    while any(n["state"] == "ALIVE" for n in nodes(env) if not n["is_head_node"]):
        assert time.monotonic() < deadline, "idle worker nodes were not released"
        time.sleep(5)
    assert "Stopped" in shell(stop, env)

