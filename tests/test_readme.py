"""The README is the user's contract: its `raylm` commands run here as written (on a small corpus
laid out under the names they use). `make demo` and `make test` are run by CI (.ci/run)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (FIRST_PREPARE, articles, assert_the_console_shows_raylm_lines_only, load_manifest, raylm_command,
                      shared_file)
from hf_kit import hf_model, hf_tokenizer, transformers_greedy, transformers_loss
from raylm.cli import main
from raylm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = [line for block in re.findall(r"```sh\n(.*?)```", README, re.S) for line in block.splitlines() if "raylm " in line]


def readme_yaml(first_line: str) -> str:
    """The README's YAML block that starts with `first_line`."""
    return next(b for b in re.findall(r"```yaml\n(.*?)```", README, re.S) if b.startswith(first_line))


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """books/, articles.jsonl.gz, heldout.txt and my-data.yaml, as the README names them."""
    texts = articles()
    (tmp_path / "books").mkdir()
    for i in range(4):
        (tmp_path / "books" / f"book{i}.txt").write_text("\n\n\n".join(texts[3 * i : 3 * i + 3]))
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts[12:22])
    (tmp_path / "articles.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "heldout.txt").write_text(texts[22])
    (tmp_path / "my-data.yaml").write_text(readme_yaml("data:"))
    return tmp_path


def run_readme_command(line: str, cwd: Path, extra_env: dict[str, str]) -> dict:
    words = shlex.split(line)
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    while "=" in words[0]:  # VAR=value prefixes, as a shell would apply them
        key, value = words.pop(0).split("=", 1)
        env[key] = extra_env.get(key, value)
    env.update(extra_env)
    result = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    return result


def test_the_readme_shows_the_commands_this_file_runs():
    assert len(COMMANDS) == 16
    assert "make demo\nmake test" in README
    assert COMMANDS[0] == "raylm " + " ".join(FIRST_PREPARE)  # run by the default_prepared fixture


def test_the_faults_and_bad_input_table_names_tests_that_exist():
    table = README.split("## Faults and bad input")[1].split("\n## ")[0]
    named = re.findall(r"`(test_\w+)::(test_\w+)`", table)
    assert len(named) >= 15
    for module, test in named:
        assert re.search(rf"^def {test}\(", (ROOT / "tests" / f"{module}.py").read_text(), re.M), f"{module}::{test}"


def test_the_plan_commands_print_what_the_readme_shows(tmp_path):
    """`raylm plan` through the console script, in a folder holding cluster/aws-gpu.yaml (and no
    prepared data to take the vocabulary or windows from): each prints the table pasted after it."""
    (tmp_path / "cluster").mkdir()
    shutil.copy(ROOT / "cluster" / "aws-gpu.yaml", tmp_path / "cluster")
    plans = [c for c in COMMANDS if c.startswith("raylm plan ")]
    assert len(plans) == 2
    for command in plans:
        shown = README.split(f"```sh\n{command}\n```\n\n```text\n", 1)[1].split("```", 1)[0]
        assert run_readme_command(command, tmp_path, {}).stdout == shown


@pytest.mark.timeout(300)
def test_local_sources_command(user_folder):
    """Through the `raylm` console script, as a user types it (the commands below run in process),
    with RAYLM_VERBOSE=1: Ray's own console output comes back (test_commands_after_prepare: it is gone
    by default)."""
    printed = run_readme_command(next(c for c in COMMANDS if "books/,articles" in c), user_folder, {"RAYLM_VERBOSE": "1"})
    assert "prepare: wrote" in printed.stdout and "Ray's own logs are in" not in printed.stdout + printed.stderr
    assert "Execution plan of Dataset" in printed.stderr and "streaming_executor.py" in printed.stderr
    manifest = json.loads((user_folder / "prepared" / "books" / "manifest.json").read_text())
    assert manifest["files"]["read"] == 6 and manifest["documents"]["kept_per_split"]["val"] >= 1
    assert manifest["documents"]["kept"] >= 10


@pytest.mark.timeout(300)
def test_config_file_command(user_folder, ray_session, monkeypatch, capsys):
    run_in_process(next(c for c in COMMANDS if "--config my-data.yaml" in c), user_folder, monkeypatch, capsys)
    manifest = json.loads((user_folder / "prepared" / "books" / "manifest.json").read_text())
    assert manifest["seq_len"] == 1024 and manifest["config"]["data"]["dedup"]["threshold"] == 0.85
    assert manifest["documents"]["read"] == 4 * 3 + 1  # chapters split on the separator + held-out file
    assert manifest["documents"]["kept_per_split"]["test"] == 1


@pytest.mark.timeout(300)
def test_s3_command(user_folder, s3_server, ray_session, monkeypatch, capsys):
    """In process: the session's Ray workers have the S3 server's environment (conftest)."""
    env, client = s3_server
    client.create_bucket(Bucket="my-bucket")
    for path in (user_folder / "books").iterdir():
        client.put_object(Bucket="my-bucket", Key=f"raw/{path.name}", Body=path.read_bytes())
    run_in_process(next(c for c in COMMANDS if "s3://" in c), user_folder, monkeypatch, capsys)
    manifest = json.loads(client.get_object(Bucket="my-bucket", Key="prepared/manifest.json")["Body"].read())
    assert manifest["files"]["read"] == 4 and manifest["documents"]["kept"] > 0


def run_in_process(line: str, cwd: Path, monkeypatch, capsys) -> str:
    """A README command through raylm's CLI in this process, on the session's Ray (a Ray start per
    command saved); returns what it printed."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    words = shlex.split(line)
    while "=" in words[0]:  # a VAR=value prefix (AWS_ENDPOINT_URL): the session's own is set already
        words.pop(0)
    assert main(words[1:]) == 0, line
    return capsys.readouterr().out


@pytest.mark.timeout(600)
def test_commands_after_prepare(default_prepared, tmp_path, ray_session, monkeypatch, capsys):
    """pretrain (through the console script), evaluate, generate, export, finetune and report, in a folder holding the `prepared` dataset
    the README's first command made and the `qa.jsonl` instruction pairs the finetune line names.
    (`raylm tune --config sweep.yaml` runs in tests/test_tune.py.)"""
    shutil.copytree(default_prepared[0], tmp_path / "prepared")
    play = shared_file("tinyshakespeare.txt")
    lines = [line for line in play.read_text().splitlines() if line.strip()][:400]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"prompt": a + "\n", "response": b}) + "\n" for a, b in zip(lines, lines[1:])))

    def run(start: str) -> str:
        return run_in_process(next(c for c in COMMANDS if c.startswith(start)), tmp_path, monkeypatch, capsys)

    # A newcomer's first run, through the console script: its console, and 512-token windows training
    # a model of 128 tokens of context.
    pretrain = next(c for c in COMMANDS if c.startswith("raylm pretrain"))
    pretrain_lines = raylm_command(*shlex.split(pretrain)[1:], cwd=tmp_path)
    assert_the_console_shows_raylm_lines_only([default_prepared[1], pretrain_lines])
    assert "pretrain: warmup ends at step 20, 10% of the 200 planned, not after train.warmup_steps=100" in pretrain_lines
    assert len([line for line in pretrain_lines if line.startswith("eval step ")]) == 2
    records = [json.loads(line) for line in (tmp_path / "runs" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 200 and records[-1]["val_bpb"] < records[0]["loss"] / 0.69
    assert load_manifest(tmp_path / "prepared")["seq_len"] == 512
    # Each 513-token window is four rows of the model's 128 + 1: every token predicted once, none lost.
    assert records[-1]["tokens"] == 200 * 16 * 2 * 128
    assert load_config(tmp_path / "runs" / "pretrain" / "config.yaml").data.seq_len == 128  # the rows it trained on
    report = json.loads(next(line for line in run("raylm evaluate").splitlines() if line.startswith("{")))
    assert report["checkpoint"].endswith("checkpoint-0000200") and report["bits_per_byte"] > 0
    assert report["bits_per_byte"] < report["baseline"]["bits_per_byte"]  # it learned more than token frequencies

    printed = run("raylm generate")
    assert len(printed[printed.index("ROMEO:"):].strip()) > len("ROMEO:") + 20  # the prompt, then its continuation

    run("raylm export runs/pretrain")  # transformers loading exports: tests/test_export.py
    exported = json.loads((tmp_path / "runs" / "pretrain-hf" / "config.json").read_text())
    assert exported["architectures"] == ["LlamaForCausalLM"] and exported["torch_dtype"] == "bfloat16"

    run("raylm finetune finetune.init=runs/pretrain")
    before_after = json.loads((tmp_path / "runs" / "finetune" / "finetune.json").read_text())
    assert before_after["after"]["loss"] < before_after["before"]["loss"]
    assert (tmp_path / "runs" / "finetune" / "merged" / "config.yaml").exists()

    run("raylm report runs/finetune")
    html = (tmp_path / "runs" / "finetune" / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "before" in html
    run("raylm report prepared")  # its parts: tests/test_prepare.py (assert_the_data_report_shows_it)
    assert "## What was kept" in (tmp_path / "prepared" / "report" / "report.md").read_text()


@pytest.mark.timeout(300)
def test_hugging_face_commands(tmp_path, ray_session, monkeypatch, capsys):
    """The LoRA chat fine-tune of a Hugging Face folder and its export, as written, on a tiny random
    Llama laid out as `SmolLM2-135M-Instruct/` (ChatML template, `<|im_end|>` its end of text) and
    the `qa.jsonl` pairs; transformers loads the export and scores and continues text as raylm does."""
    from raylm.eval.evaluate import evaluate

    play = shared_file("tinyshakespeare.txt").read_text()
    folder = tmp_path / "SmolLM2-135M-Instruct"
    hf_tokenizer(folder, play[:60_000], "chatml")
    hf_model("llama-gqa-untied", folder, max_position_embeddings=128, eos_token_id=2)
    lines = [line for line in play[:40_000].splitlines() if line.strip()]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"prompt": a, "response": b}) + "\n" for a, b in zip(lines[::2], lines[1::2])))
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(play[50_000:52_000])

    for start in ("raylm finetune finetune.init=SmolLM2", "raylm export runs/smollm2-qa"):
        run_in_process(next(c for c in COMMANDS if c.startswith(start)), tmp_path, monkeypatch, capsys)
    run, exported = tmp_path / "runs" / "smollm2-qa", tmp_path / "smollm2-qa-hf"
    assert json.loads((run / "finetune.json").read_text())["after"]["loss"] < json.loads((run / "finetune.json").read_text())["before"]["loss"]
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "bfloat16"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (exported / name).read_bytes() == (folder / name).read_bytes()  # the folder's own, unchanged
    loss, count = transformers_loss(exported, heldout, 128)
    ours = evaluate(str(exported), [str(heldout)])  # raylm reads the bf16 export, as transformers does
    assert ours["tokens"] == count and ours["loss"] == pytest.approx(loss, rel=1e-5)
    assert evaluate(str(run), [str(heldout)])["loss"] == pytest.approx(loss, rel=2e-2)  # the run itself, fp32
    from raylm.eval.generate import generate
    from raylm.train.checkpoint import load_model

    model, source = load_model(str(exported))
    assert generate(model, source.tokenizer, "ROMEO:\n", max_new_tokens=12, temperature=0) == transformers_greedy(exported, "ROMEO:\n", 12)
