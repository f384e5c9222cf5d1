"""Shared fixtures: one embedded Ray for the session, the shared corpora, small prepare configs."""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Ray Train's controller polls its workers every 2 s; the suite's short runs end sooner this way
# (about 2-3 s per run; inherited by the Ray processes the tests start).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not here (tests read the shared corpora from ../shared/data)")
    return path


def articles() -> list[str]:
    """24 Wikipedia articles of over 3,000 characters from wikitext-2 (validation split)."""
    text = shared_file("wikitext2-valid.txt").read_text()
    return [a for a in re.split(r"\n(?= = [^=].* = \n)", text) if len(a) > 3000][:24]


def start_session_ray() -> None:
    import ray

    session_s3()  # its environment first, for the Ray workers to inherit
    # The dashboard stays on: the session's Tune sweeps free their finished trials' resources through it.
    ray.init(num_cpus=2, logging_level="warning")


@pytest.fixture(scope="module")
def one_thread():
    """Models this small run as fast on one thread, and do not stall when other work shares the CPUs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    start_session_ray()
    yield
    ray.shutdown()


@pytest.fixture
def run_prepare(ray_session, tmp_path):
    """prepare() with small, fast settings; returns the manifest."""
    from raylm.config import load_config
    from raylm.data.prepare import prepare

    def run(*overrides: str, output: Path | None = None) -> dict:
        out = output or tmp_path / "prepared"
        defaults = [f"data.output={out}", "data.tokenizer.vocab_size=512", "data.seq_len=64"]
        return prepare(load_config(None, [*defaults, *overrides]), log=lambda _: None)

    return run


def raylm_command(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> list[str]:
    """A `raylm` command through the console script, as a user types it; the lines it printed
    (stdout, then stderr). It must succeed."""
    script = Path(sys.executable).parent / "raylm"
    result = subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"raylm {' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout.splitlines() + result.stderr.splitlines()


FIRST_PREPARE = ("prepare", "data.sources=[input.txt]", "data.output=prepared")  # the README's first command
RAYLM_LINE = re.compile(r"^(raylm: |prepare: |pretrain: |step \d+/\d+ \| |eval (step \d+|before training) \| |"
                        r"2 workers on 1 node, )")
# Ray's C++ core worker logs errors to the driver's stderr, which Python cannot filter: one line when Ray Data
# starts an actor pool, a false alarm about restarts (ray-project/ray#57733, open).
RAY_CORE_WORKER_LINE = re.compile(r"^\[[\d-]+ [\d:,]+ E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: "
                                  r"'MapWorker\(MapBatches\(TokenizeAndWrite\)\)'.*has constructor arguments")


def assert_the_console_shows_raylm_lines_only(commands_lines: list[list[str]]) -> None:
    """What a newcomer's commands printed: a few raylm lines each, Ray's log folder named once per
    command, nothing of Ray's own."""
    lines = [line for printed in commands_lines for line in printed if not RAY_CORE_WORKER_LINE.match(line)]
    assert len(lines) < 20 * len(commands_lines)
    assert [line for line in lines if not RAYLM_LINE.match(line)] == []
    assert sum("Ray's own logs are in /tmp/ray/session_" in line for line in lines) == len(commands_lines)


@pytest.fixture(scope="session")
def default_prepared(tmp_path_factory) -> tuple[Path, list[str]]:
    """The README's first command, as a newcomer runs it, every setting a default, on Tiny
    Shakespeare as `input.txt` (one 1.1 MB file): the prepared folder and what it printed."""
    folder = tmp_path_factory.mktemp("first-run")
    (folder / "input.txt").symlink_to(shared_file("tinyshakespeare.txt"))
    lines = raylm_command(*FIRST_PREPARE, cwd=folder)
    return folder / "prepared", lines


def split_documents(output: Path, manifest: dict, split: str) -> list[str]:
    """The documents written to a split, decoded; the last one lacks what the unwritten end of the
    last window held."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(output / "tokenizer.json"))
    eos = manifest["tokenizer"]["eos_id"]
    ids = [token for shard in read_split(output, manifest, split) for row in shard for token in row]
    ends = [i for i, token in enumerate(ids) if token == eos] + [len(ids)]
    starts = [0] + [end + 1 for end in ends[:-1]]
    return [tokenizer.decode(ids[start:end]) for start, end in zip(starts, ends) if end > start]


def read_split(output: Path, manifest: dict, split: str) -> list:
    """Token windows of a split, shard by shard, as listed in the manifest (lists of ids)."""
    return [pq.read_table(output / shard).column("tokens").to_pylist() for shard in manifest["splits"][split]["shards"]]


def load_manifest(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(**server_env: str):
    """An S3 protocol server (moto) on loopback: (server process, client environment, boto3 client)."""
    import boto3

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, **server_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    return server, env, client


@functools.cache
def session_s3():
    """The session's S3 server: (client environment, boto3 client). Its environment goes into this
    process's, before the session's Ray starts, so that Ray workers reach it too and S3 commands
    can run in process."""
    server, env, client = start_moto()
    atexit.register(server.terminate)
    os.environ.update(env)
    return env, client


@pytest.fixture(scope="session")
def s3_server():
    return session_s3()
