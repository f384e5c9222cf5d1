"""`tune`: the README's 3-trial ASHA sweep of real Ray Train runs, whose best config then trains as is."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from conftest import shared_file
from raylm.cli import main
from raylm.config import load_config
from raylm.errors import ConfigError, RaylmError
from test_readme import COMMANDS, README, readme_yaml

@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory) -> Path:
    from raylm.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "shakespeare"
    prepare(load_config(None, [f"data.sources=[{shared_file('tinyshakespeare.txt')}]", r"data.document_separator='\n\n'",
                               "data.filters.profile=none", "data.dedup.exact=false", "data.dedup.near=false",
                               "data.tokenizer.vocab_size=300", "data.seq_len=32", "data.split.val=0.05", "data.split.test=0",
                               f"data.output={out}"]), log=lambda _: None)
    return out


@pytest.mark.timeout(500)
def test_readme_sweep_runs_asha_and_its_best_config_trains(prepared, tmp_path, monkeypatch, capsys):
    """The README's `raylm tune --config sweep.yaml`, then its `raylm pretrain --config
    runs/sweep/best-config.yaml`, through the CLI in this process: on the session's Ray, since a
    second Ray instance on the machine keeps Ray Train's placement-group cleaner from finding its
    cluster when ASHA stops a trial."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prepared").symlink_to(prepared)
    (tmp_path / "sweep.yaml").write_text(readme_yaml("train:"))
    assert main(shlex.split(next(c for c in COMMANDS if c.startswith("raylm tune")))[1:]) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "runs" / "sweep"
    results = json.loads((sweep / "results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 3 and len({t["params"]["train.lr"] for t in trials}) == 3
    assert all(t["status"] in ("TERMINATED", "EARLY_STOPPED") and t["metric"] > 0 for t in trials)
    best = next(t for t in trials if t["name"] == results["best"])
    assert best["metric"] == min(t["metric"] for t in trials) and best["status"] == "TERMINATED"
    for trial in trials:  # each trial is an ordinary run folder, its val loss logged at every evaluation
        records = [json.loads(line) for line in (Path(trial["run"]) / "metrics.jsonl").read_text().splitlines()]
        assert trial["steps"] in [r["step"] for r in records if "val_loss" in r]
        assert list((Path(trial["run"]) / "tensorboard").glob("events.out.tfevents.*"))
    assert list((sweep / "tensorboard").rglob("events.out.tfevents.*"))
    assert f"{best['name']}" in out and "<- best" in out

    best_config = load_config(sweep / "best-config.yaml")
    assert best_config.train.lr == best["params"]["train.lr"] and best_config.model.n_embd == best["params"]["model.n_embd"]
    assert "raylm pretrain --config runs/sweep/best-config.yaml" in README
    assert main(["pretrain", "--config", "runs/sweep/best-config.yaml"]) == 0
    assert (tmp_path / "runs" / "sweep-best" / "checkpoint-0000060").is_dir()


@pytest.mark.timeout(300)
def test_a_sweep_on_s3_writes_its_results_and_trials_there(prepared, s3_server, monkeypatch, tmp_path):
    """train.storage on S3: the sweep folder (results, best config) and each trial's run folder."""
    env, client = s3_server
    client.create_bucket(Bucket="sweeps")
    monkeypatch.chdir(tmp_path)
    assert main(["tune", f"train.data={prepared}", "train.storage=s3://sweeps/runs", "model.preset=tiny", "train.workers=1",
                 "train.batch_size=8", "train.max_steps=4", "train.eval_every=2", "train.log_every=2", "tune.num_samples=1",
                 "tune.scheduler=fifo", "tune.search_space={train.lr: {choice: [0.003]}}"]) == 0
    results = json.loads(client.get_object(Bucket="sweeps", Key="runs/sweep/results.json")["Body"].read())
    assert len(results["trials"]) == 1 and all(t["run"].startswith("s3://sweeps/runs/sweep/") for t in results["trials"])
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="sweeps", Prefix="runs/sweep/")["Contents"]}
    assert "runs/sweep/best-config.yaml" in keys
    for trial in results["trials"]:
        run = trial["run"].removeprefix("s3://sweeps/")
        assert f"{run}/metrics.jsonl" in keys and any(k.startswith(f"{run}/checkpoint-0000004/") for k in keys)


def test_search_space_mistakes_are_one_line_errors(prepared, tmp_path):
    from raylm.tune.sweep import tune

    base = [f"train.data={prepared}", f"train.storage={tmp_path}"]
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'; did you mean 'train.lr'"):
        tune(load_config(None, [*base, "tune.search_space={train.lrr: {choice: [0.1]}}"]))
    with pytest.raises(ConfigError, match="give exactly one of choice, grid"):
        load_config(None, [*base, "tune.search_space={train.lr: {normal: [0, 1]}}"])
    with pytest.raises(RaylmError, match="tune.search_space is empty"):
        tune(load_config(None, base))


def test_a_joined_cluster_gets_no_trial_cap_so_waiting_trials_can_scale_it(ray_session, monkeypatch):
    """On a cluster the driver joined, trials that do not fit yet are the autoscaler's demand; on a
    local instance the cap is what fits now; tune.max_concurrent_trials overrides both."""
    from raylm import runtime
    from raylm.tune.sweep import max_concurrent_trials

    config = load_config(None, ["train.workers=1", "train.use_gpu=true"])
    assert max_concurrent_trials(config) == 1  # this machine has no GPU: one at a time
    monkeypatch.setattr(runtime, "_joined_cluster", True)
    assert max_concurrent_trials(config) == 0
    assert max_concurrent_trials(config.model_copy(update={"tune": config.tune.model_copy(update={"max_concurrent_trials": 3})})) == 3
