"""`raylm demo --quick`: every stage of the path, end to end, on a slice of the standard library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raylm.cli import main
from raylm.config import load_config


@pytest.mark.timeout(500)
def test_quick_demo_walks_the_whole_path(ray_session, tmp_path, capsys):
    # In this process, on the session's Ray: a second Ray instance on the machine would keep Ray
    # Train's placement-group cleaner from finding its cluster when ASHA stops a trial.
    assert main(["demo", "--quick", "--output", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    for stage in ("prepare", "pretrain", "evaluate", "generate", "tune", "finetune", "report", "done"):
        assert f"=== demo: {stage}" in out
    demo = tmp_path / "demo"
    runs = demo / "runs"

    manifest = json.loads((demo / "prepared" / "manifest.json").read_text())
    assert manifest["documents"]["kept"] > 20 and manifest["splits"]["test"]["sequences"] > 0
    steps = [json.loads(line)["step"] for line in (runs / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 30
    assert "unigram baseline" in out and len((demo / "sample.txt").read_text()) > len("def")

    sweep = json.loads((runs / "sweep" / "results.json").read_text())
    assert len(sweep["trials"]) == 2 and sweep["best"] in {t["name"] for t in sweep["trials"]}
    assert load_config(runs / "sweep" / "best-config.yaml").train.name == "sweep-best"

    finetune = json.loads((runs / "finetune" / "finetune.json").read_text())
    assert finetune["after"]["loss"] < finetune["before"]["loss"]
    assert load_config(runs / "finetune" / "config.yaml").finetune.method == "lora"
    assert_merged_model_is_the_adapted_one(runs / "finetune", runs / "pretrain")

    for report in (runs / "pretrain", runs / "sweep", runs / "finetune"):
        assert (report / "report" / "report.html").stat().st_size > 20_000  # plots embedded
        assert list((report / "report").glob("*.png"))


def assert_merged_model_is_the_adapted_one(run: Path, base_run: Path) -> None:
    """<run>/merged (LoRA folded in and saved) scores like the LoRA run merged on load, unlike the
    base model, and only the adapted projections changed."""
    from raylm.eval.evaluate import load_model

    merged, _, merged_config, _ = load_model(str(run / "merged"))
    adapted = load_model(str(run))[0]
    base = load_model(str(base_run))[0]
    assert merged_config.finetune.method == "full"
    x = torch.randint(200, (1, 24))
    assert torch.allclose(merged(x)[0], adapted(x)[0], atol=1e-5)
    assert not torch.allclose(merged(x)[0], base(x)[0], atol=1e-4)
    assert torch.equal(merged.wte.weight, base.wte.weight)
