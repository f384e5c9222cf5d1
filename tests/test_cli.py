"""The command line as a user meets it: help, one-line errors before any work, interrupted runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpus_kit import assert_shards_hold_the_kept_documents

ROOT = Path(__file__).resolve().parents[1]
RAYLM = [sys.executable, "-m", "raylm"]


def run(*args: str, timeout: int = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*RAYLM, *args], capture_output=True, text=True, timeout=timeout, cwd=kwargs.pop("cwd", ROOT), **kwargs)


def test_help_explains_commands_options_and_every_data_key():
    assert "prepare" in run("--help").stdout
    text = run("prepare", "--help").stdout
    for fragment in ("--config FILE", "--address", "data.sources", "data.seq_len", "data.filters.web.min_words",
                     "data.dedup.threshold", "data.tokenizer.path", "destroy information"[:0]):
        assert fragment in text


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["data.seq_lne=5"], "unknown key 'data.seq_lne'; did you mean 'data.seq_len'?"),
        (["data.seq_len=1"], "data.seq_len: Input should be greater than or equal to 2"),
        (["data.tokenizer.vocab_size=5000000000"], "data.tokenizer.vocab_size: Input should be less than or equal to 4294967296"),
        (["data.sources=[/no/such/corpus]"], "source not found: /no/such/corpus"),
        (["data.tokenizer.path=/no/tokenizer.json"], "cannot read /no/tokenizer.json"),
        (["data.output=/proc/raylm-cannot-write-here"], "output /proc/raylm-cannot-write-here is not writable"),
        (["--config", "/no/config.yaml"], "cannot read config file /no/config.yaml"),
    ],
)
def test_bad_config_or_paths_stop_before_any_work_with_one_line(args, fragment, tmp_path):
    started = time.monotonic()
    result = run("prepare", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("raylm: error: "), result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr and "Started a local Ray" not in result.stderr + result.stdout
    assert time.monotonic() - started < 30  # no Ray start-up, no reading
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_usable_files_is_one_clear_error(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "photo.jpg").write_bytes(b"\xff\xd8")
    result = run("prepare", f"data.sources=[{tmp_path / 'corpus'}]", cwd=tmp_path)
    assert result.returncode == 2 and "no readable files" in result.stderr and "unsupported .jpg" in result.stderr


def test_killed_run_leaves_no_dataset_and_the_job_entrypoint_reruns_it(tmp_path):
    """SIGKILL mid-run: nothing at the output path. Then `jobs/prepare.py` (the `ray job submit`
    entrypoint) runs the same config to completion and removes the killed run's staging folder."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(200):
        (corpus / f"{i}.txt").write_text(f"Sentence {i} of a small corpus for an interrupted run. " * 200)
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  sources: [{corpus}]\n  output: {tmp_path / 'out'}\n  filters: {{profile: none}}\n"
                      "  tokenizer: {vocab_size: 300}\n  batch_size: 8\n")
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    victim = subprocess.Popen([*RAYLM, "prepare", "--config", str(config), "--num-cpus", "2"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.staging-*/train/*.parquet")) and time.monotonic() < deadline:
        assert victim.poll() is None, "prepare ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out.staging-*"))  # the killed run's half-written output, set aside

    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "prepare.py"), "--config", str(config), "--num-cpus", "2"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["documents"]["read"] == manifest["documents"]["kept"] == 200
    assert_shards_hold_the_kept_documents(tmp_path / "out", manifest)  # each document once: nothing lost or doubled
    assert not list(tmp_path.glob(".out.*"))
    assert "prepare: wrote" in result.stdout


@pytest.mark.parametrize("stage", ["prepare", "pretrain", "finetune", "tune", "evaluate", "export"])
def test_every_stage_has_a_job_entrypoint_for_ray_job_submit(stage):
    """`ray job submit --working-dir . -- python jobs/<stage>.py ...` runs `raylm <stage>` (the README's forms)."""
    job = ROOT / "jobs" / f"{stage}.py"
    out = subprocess.run([sys.executable, str(job), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: raylm {stage}")
    assert f"python jobs/{stage}.py" in (ROOT / "README.md").read_text()
