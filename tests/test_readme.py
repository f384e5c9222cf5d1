"""The README is the user's contract: its `raylm` commands run here as written (on a small corpus
laid out under the names they use). `make demo` and `make test` are run by CI (.ci/run)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = [line for block in re.findall(r"```sh\n(.*?)```", README, re.S) for line in block.splitlines() if "raylm " in line]


def articles() -> list[str]:
    text = shared_file("wikitext2-valid.txt").read_text()
    return [a for a in re.split(r"\n(?= = [^=].* = \n)", text) if len(a) > 3000][:24]


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
    (tmp_path / "my-data.yaml").write_text(re.search(r"```yaml\n(.*?)```", README, re.S).group(1))
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
    assert len(COMMANDS) == 5
    assert "make demo\nmake test" in README


@pytest.mark.timeout(300)
def test_local_sources_command(user_folder):
    assert "prepare: wrote" in run_readme_command(next(c for c in COMMANDS if "books/,articles" in c), user_folder, {}).stdout
    manifest = json.loads((user_folder / "prepared" / "books" / "manifest.json").read_text())
    assert manifest["files"]["read"] == 6 and manifest["documents"]["kept_per_split"]["val"] >= 1
    assert manifest["documents"]["kept"] >= 10


@pytest.mark.timeout(300)
def test_config_file_command(user_folder):
    run_readme_command(next(c for c in COMMANDS if "--config my-data.yaml" in c), user_folder, {})
    manifest = json.loads((user_folder / "prepared" / "books" / "manifest.json").read_text())
    assert manifest["seq_len"] == 1024 and manifest["config"]["data"]["dedup"]["threshold"] == 0.85
    assert manifest["documents"]["read"] == 4 * 3 + 1  # chapters split on the separator + held-out file
    assert manifest["documents"]["kept_per_split"]["test"] == 1


@pytest.mark.timeout(300)
def test_s3_command(user_folder, s3_server):
    env, client = s3_server
    client.create_bucket(Bucket="my-bucket")
    for path in (user_folder / "books").iterdir():
        client.put_object(Bucket="my-bucket", Key=f"raw/{path.name}", Body=path.read_bytes())
    run_readme_command(next(c for c in COMMANDS if "s3://" in c), user_folder, env)
    manifest = json.loads(client.get_object(Bucket="my-bucket", Key="prepared/manifest.json")["Body"].read())
    assert manifest["files"]["read"] == 4 and manifest["documents"]["kept"] > 0


@pytest.mark.timeout(400)
def test_pretrain_and_evaluate_commands(tmp_path, ray_session):
    """On a small `prepared` folder in the working directory, as after `raylm prepare`."""
    from raylm.config import load_config
    from raylm.data.prepare import prepare

    prepare(load_config(None, [f"data.sources=[{shared_file('tinyshakespeare.txt')}]", r"data.document_separator='\n\n'",
                               "data.filters.profile=none", "data.dedup.exact=false", "data.dedup.near=false", "data.tokenizer.vocab_size=300",
                               "data.seq_len=64", f"data.output={tmp_path / 'prepared'}"]), log=lambda _: None)
    run_readme_command(next(c for c in COMMANDS if c.startswith("raylm pretrain")), tmp_path, {})
    steps = [json.loads(line)["step"] for line in (tmp_path / "runs" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 200
    report = json.loads(run_readme_command(next(c for c in COMMANDS if c.startswith("raylm evaluate")), tmp_path, {}).stdout)
    assert report["checkpoint"].endswith("checkpoint-0000200") and report["bits_per_byte"] > 0
