"""`raylm demo`: every stage of the path, end to end, on the standard library (`--quick`: a slice)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from raylm.cli import main
from raylm.config import load_config, run_config


@pytest.fixture
def demo(ray_session, tmp_path, capsys) -> tuple[Path, str | None]:
    """The demo's output folder, and what it printed when it ran here. CI (.ci/run) runs the full
    demo before the tests and names its folder in RAYLM_DEMO_OUTPUT: its outputs are checked and
    nothing is run twice. Otherwise `raylm demo --quick` runs here, in this process, on the
    session's Ray: a second Ray instance on the machine would keep Ray Train's placement-group
    cleaner from finding its cluster when ASHA stops a trial."""
    if os.environ.get("RAYLM_DEMO_OUTPUT"):
        return Path(os.environ["RAYLM_DEMO_OUTPUT"]), None
    assert main(["demo", "--quick", "--output", str(tmp_path / "demo")]) == 0
    return tmp_path / "demo", capsys.readouterr().out


@pytest.mark.timeout(500)
def test_the_demo_walks_the_whole_path(demo):
    demo, out = demo
    if out is not None:
        for stage in ("prepare", "pretrain", "evaluate", "generate", "tune", "finetune", "report", "done"):
            assert f"=== demo: {stage}" in out
        assert "unigram baseline" in out
    runs = demo / "runs"

    manifest = json.loads((demo / "prepared" / "manifest.json").read_text())
    assert manifest["documents"]["kept"] > 20 and manifest["splits"]["test"]["sequences"] > 0
    records = [json.loads(line) for line in (runs / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    train = run_config(str(runs / "pretrain")).train
    assert records[-1]["step"] == train.max_steps or records[-1]["train_seconds"] >= 60 * train.max_minutes
    assert len((demo / "sample.txt").read_text()) > len("def")

    sweep = json.loads((runs / "sweep" / "results.json").read_text())
    best = load_config(runs / "sweep" / "best-config.yaml")
    assert len(sweep["trials"]) == best.tune.num_samples and sweep["best"] in {t["name"] for t in sweep["trials"]}
    assert best.train.name == "sweep-best"

    finetune = json.loads((runs / "finetune" / "finetune.json").read_text())
    assert finetune["after"]["loss"] < finetune["before"]["loss"]
    assert load_config(runs / "finetune" / "config.yaml").finetune.method == "lora"
    assert_merged_model_is_the_adapted_one(runs / "finetune", runs / "pretrain")

    for report in (demo / "prepared", runs / "pretrain", runs / "sweep", runs / "finetune"):
        assert (report / "report" / "report.html").stat().st_size > 20_000  # plots embedded
        assert list((report / "report").glob("*.png"))


def assert_merged_model_is_the_adapted_one(run: Path, base_run: Path) -> None:
    """<run>/merged (LoRA folded in and saved) scores like the LoRA run merged on load, unlike the
    base model, and only the adapted projections changed."""
    from raylm.train.checkpoint import load_model

    merged, merged_source = load_model(str(run / "merged"))
    merged_config = merged_source.config
    adapted = load_model(str(run))[0]
    base = load_model(str(base_run))[0]
    assert merged_config.finetune.method == "full"
    x = torch.randint(200, (1, 24))
    assert torch.allclose(merged(x)[0], adapted(x)[0], atol=1e-5)
    assert not torch.allclose(merged(x)[0], base(x)[0], atol=1e-4)
    assert torch.equal(merged.wte.weight, base.wte.weight)
