"""`raylm report` on real run folders (trained in-process by run_kit, no Ray) and on a sweep built
from them: the files a user opens, what they must say, and one-line errors for wrong folders."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import shared_file
from raylm import storage
from raylm.config import Config
from raylm.errors import RaylmError
from raylm.model.gpt import GPT
from raylm.report.report import finetune_blocks, render_markdown, write_report
from run_kit import make_run

RAYLM = [sys.executable, "-m", "raylm"]


@pytest.fixture(scope="module")
def text() -> str:
    return shared_file("tinyshakespeare.txt").read_text()[:20_000]


def append_records(run: Path, *records: dict) -> None:
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.writelines(json.dumps(record) + "\n" for record in records)


def eval_record(step: int, loss: float, val_loss: float) -> dict:
    """A logged step with an evaluation, as the training loop writes it (train and val in one record)."""
    return {"step": step, "loss": loss, "lr": 3e-3, "grad_norm": 0.9, "tokens": step * 256, "tokens_per_s": 4000.0 + step,
            "step_ms": 64.0, "train_seconds": step * 0.064, "mfu": None,
            "val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_bpb": val_loss * 0.4}


def assert_real_png(path: str) -> None:
    """A readable PNG with something drawn on it, not an empty canvas."""
    assert Path(path).stat().st_size > 10_000, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width > 600 and image.height > 250
        low, high = image.convert("L").getextrema()
        assert high - low > 100, f"{path} is nearly one colour"


def test_run_report_has_plots_summary_finetune_and_sample(tmp_path, text):
    run = make_run(tmp_path / "run", text, steps=30)
    # Step 30 is logged again, as by a resumed run: the later record must win.
    append_records(run, eval_record(10, 5.1, 5.3), eval_record(20, 4.6, 4.9), eval_record(30, 4.1234, 4.5678))
    # As `raylm finetune` writes it: the run's first and last validation.
    before = {"step": 0, "loss": 4.5, "perplexity": 90.0, "bits_per_byte": 2.5}
    after = {"step": 30, "loss": 3.75, "perplexity": 42.5, "bits_per_byte": 2.0}
    (run / "finetune.json").write_text(json.dumps({"before": before, "after": after}))

    written = write_report(str(run), sample_tokens=12, log=lambda _: None)

    assert Path(written["markdown"]).parent == run / "report"
    assert sorted(Path(p).name for p in written["plots"]) == ["loss.png", "lr.png", "throughput.png", "val_bpb.png"]
    for plot in written["plots"]:
        assert_real_png(plot)
    markdown = Path(written["markdown"]).read_text()
    params = GPT(Config.model_validate(yaml.safe_load((run / "config.yaml").read_text())).model).num_params()
    for fragment in (f"{params:,}", "final train loss | 4.1234 (step 30)", "final val loss | 4.5678",
                     "preset tiny: 2 layers, 2 heads, 64 wide, context 128 tokens", "tokens seen | 7,680",
                     "Fine-tuning: before vs after", "before at step 0, after at step 30",
                     "| loss (nats/token) | 4.5000 | 3.7500 | -0.7500 (-16.7%) |",
                     "![Train loss per step", "## Sample", "```text"):
        assert fragment in markdown, fragment
    page = Path(written["html"]).read_text()
    assert page.count('src="data:image/png;base64,') == 4 and "<table>" in page
    assert 'src="http' not in page and ".png\"" not in page  # self-contained


def test_sweep_report_compares_trials_and_names_the_best(tmp_path, text):
    sweep = tmp_path / "tune"
    trials = []
    for i, (lr, val_loss, status) in enumerate([(1e-3, 5.2, "TERMINATED"), (3e-3, 4.8, "TERMINATED"),
                                                 (1e-2, 5.0, "EARLY_STOPPED")]):
        run = make_run(sweep / "trials" / f"trial-{i:03d}", text, f"train.lr={lr}", steps=12)
        append_records(run, eval_record(6, 5.5, val_loss + 0.3), eval_record(12, 5.0, val_loss))
        trials.append({"name": f"trial-{i:03d}", "run": str(run), "params": {"train.lr": lr, "model.n_embd": 64},
                       "metric": val_loss, "steps": 12, "status": status})
    trials[2]["run"] = "/where/the/sweep/ran/trial-002"  # a moved sweep: its trials/ copy is read instead
    trials.append({"name": "trial-003", "run": "/gone", "params": {"train.lr": 0.1, "model.n_embd": 64},
                   "metric": None, "steps": 0, "status": "ERROR"})
    (sweep / "results.json").write_text(json.dumps({"metric": "val_loss", "mode": "min", "best": "trial-001",
                                                    "trials": trials}))

    logged = []
    written = write_report(str(sweep), output=str(tmp_path / "out"), sample_tokens=0, log=logged.append)

    assert sorted(Path(p).name for p in written["plots"]) == ["sweep-curves.png", "sweep-final.png"]
    for plot in written["plots"]:
        assert_real_png(plot)
    assert Path(written["markdown"]).parent == tmp_path / "out"
    markdown = Path(written["markdown"]).read_text()
    for fragment in ("trial-001: val_loss 4.8000 with train.lr=0.003, model.n_embd=64",
                     "| trial | train.lr | model.n_embd | val_loss | steps | status |",
                     "| trial-001 (best) | 0.003 | 64 | 4.8000 | 12 | TERMINATED |",
                     "| trial-003 | 0.1 | 64 | — | 0 | ERROR |",
                     "4 (2 terminated, 1 early stopped, 1 error)",
                     "## Best trial: trial-001"):
        assert fragment in markdown, fragment
    assert markdown.index("trial-001 (best)") < markdown.index("| trial-002") < markdown.index("| trial-000")
    assert "## Sample" not in markdown and "### Sample" not in markdown
    assert any(line.startswith("trial-003: no curves") for line in logged)
    assert Path(written["html"]).read_text().count("data:image/png;base64,") == 2


def test_finetune_scored_by_evaluate_names_checkpoints_and_data():
    before = {"checkpoint": "runs/base/checkpoint-0000100", "data": "heldout.txt", "loss": 4.0, "perplexity": 54.6,
              "bits_per_byte": 2.0, "tokens": 1000, "bytes": 4000}
    after = {**before, "checkpoint": "runs/chat/checkpoint-0000050", "loss": 3.0, "perplexity": 20.1, "bits_per_byte": 1.5}
    markdown = render_markdown(finetune_blocks({"before": before, "after": after}))
    assert "Scored on heldout.txt: before at runs/base/checkpoint-0000100, after at runs/chat/checkpoint-0000050." in markdown
    assert "| bits per byte | 2.0000 | 1.5000 | -0.5000 (-25.0%) |" in markdown


def test_sweep_where_no_trial_reported_the_metric_still_reports(tmp_path):
    trials = [{"name": f"trial-{i:03d}", "run": str(tmp_path / "trials" / f"trial-{i:03d}"), "params": {"train.lr": 0.1},
               "metric": None, "steps": 0, "status": "ERROR"} for i in range(2)]
    (tmp_path / "results.json").write_text(json.dumps({"metric": "val_loss", "mode": "min", "best": None,
                                                       "trials": trials}))
    written = write_report(str(tmp_path), sample_tokens=0, log=lambda _: None)
    assert written["plots"] == []
    markdown = Path(written["markdown"]).read_text()
    assert "| trials | 2 (2 error) |" in markdown and "| best trial | none: no trial reported val_loss |" in markdown


def test_run_on_s3_is_reported_into_its_folder_on_s3(s3_server, tmp_path, text, monkeypatch):
    env, client = s3_server
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage._s3.cache_clear()  # an S3 filesystem made under this environment
    run = make_run(tmp_path / "run", text, steps=10)
    client.create_bucket(Bucket="runs")
    for path in run.rglob("*"):
        if path.is_file():
            client.put_object(Bucket="runs", Key=f"remote/{path.relative_to(run)}", Body=path.read_bytes())
    try:
        written = write_report("s3://runs/remote", sample_tokens=8, log=lambda _: None)
    finally:
        storage._s3.cache_clear()
    assert written["markdown"] == "s3://runs/remote/report/report.md"
    markdown = client.get_object(Bucket="runs", Key="remote/report/report.md")["Body"].read().decode()
    assert "| folder | s3://runs/remote |" in markdown and "## Sample" in markdown
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="runs", Prefix="remote/report/")["Contents"]}
    assert {"remote/report/report.html", "remote/report/loss.png", "remote/report/lr.png"} <= keys


def test_folders_that_are_not_runs_or_sweeps_are_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RaylmError, match="is no run folder .*, sweep folder .* or prepared folder"):
        write_report(str(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(RaylmError, match=r"metrics.jsonl is missing or empty"):
        write_report(str(run))


def test_cli_writes_the_report_or_exits_2_with_one_line(tmp_path, text):
    run = make_run(tmp_path / "run", text, steps=10)
    done = subprocess.run([*RAYLM, "report", str(run), "--output", str(tmp_path / "out"), "--no-sample"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"report {tmp_path / 'out' / 'report.md'}" in done.stdout and "loss.png" in done.stdout
    assert "## Sample" not in (tmp_path / "out" / "report.md").read_text()

    failed = subprocess.run([*RAYLM, "report", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.startswith("raylm: error: ") and failed.stderr.count("\n") == 1, failed.stderr
    assert "is no run folder" in failed.stderr
