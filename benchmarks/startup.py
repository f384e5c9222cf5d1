"""The fixed cost of raylm's commands, phase by phase, for this code and a baseline revision, in
the same run on the same machine.

    python benchmarks/startup.py [--baseline REV] [--demo]

Each command runs as a user runs it (a fresh `python -m raylm` process, embedded Ray, 2 CPUs by
default) on Tiny Shakespeare from ../shared/data; lines are stamped as they arrive:
- a 2-step `pretrain` (tiny preset, 2 workers) on windows of 128 the current code prepared: driver start
  (imports, Ray start, planning) until its first `pretrain:` line; then until Ray Train's controller
  asks for resources; until the worker group has started; until the first step is logged; until
  fit returns; until the process exits. Ray's own lines mark the middle phases, so the command runs
  with RAYLM_VERBOSE=1 (the baseline prints them anyway);
- a 1.1 MB `prepare` of the same text cut into paragraphs, no filters (the same work for code from
  before issue 12, where one file was one document): the manifest's phases and the wall time;
- with --demo, `raylm demo --quick`: its stages, as it prints them;
- the current code's fit once more, joining a Ray that `ray start --head` started beforehand
  (column "joined"; `ray stop` ends every Ray process on the machine afterwards).
The baseline runs from a `git worktree` of REV (default: the code as issue 13 was filed) on
PYTHONPATH, which Ray's local workers inherit. Runs alternate baseline, current.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
FIT_MARKS = [  # (phase that ends at the first line matching, regex)
    ("imports, Ray start, planning", r"^pretrain: .*parameters"),
    ("trainer built, controller started", r"Requesting resources"),
    ("resources granted, workers started", r"Started training worker group"),
    ("process group, model, data, first step", r"step 1/2 \|"),  # (RayTrainWorker pid=…) step … in the baseline
    ("second step, checkpoint, teardown", r"pretrain: finished"),
    ("Ray shutdown, process exit", None),
]


def stamped(command: list[str], env: dict[str, str], cwd: Path) -> tuple[list[tuple[float, str]], float]:
    """The lines a command prints (stdout and stderr, merged) with their arrival times, and its wall time."""
    started = time.perf_counter()
    env = {**env, "PYTHONUNBUFFERED": "1"}  # a line's time is when it was printed, not when a buffer filled
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.perf_counter() - started, line.rstrip("\n")) for line in process.stdout]
    if process.wait():
        tail = "\n".join(line for _, line in lines[-30:])
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}:\n{tail}")
    return lines, time.perf_counter() - started


def fit_phases(code: Path, env: dict[str, str], data: Path, work: Path, *options: str) -> dict[str, float]:
    command = [sys.executable, "-m", "raylm", "pretrain", *options, f"train.data={data}", "model.preset=tiny",
               "train.workers=2", "train.max_steps=2", "train.log_every=1", f"train.storage={work}", "train.name=startup"]
    lines, wall = stamped(command, {**env, "RAYLM_VERBOSE": "1"}, work)
    phases, mark = {}, 0.0
    for phase, pattern in FIT_MARKS:
        at = wall if pattern is None else next((t for t, line in lines if re.search(pattern, line)), None)
        if at is None:
            raise SystemExit(f"{code}: no line matched {pattern!r}")
        phases[phase], mark = at - mark, at
    return {**phases, "wall": wall}


def joined_fit_phases(env: dict[str, str], data: Path, work: Path) -> dict[str, float]:
    """The same fit joining a local Ray that `ray start --head` started before (what someone
    iterating on one machine can leave running): the command starts and stops no Ray. Its own
    HOME holds the cluster's auth token; `ray stop` ends it."""
    home = work / "home"
    home.mkdir(parents=True)
    env = {**env, "HOME": str(home)}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "start", "--head", "--num-cpus=2"], env=env, check=True, capture_output=True)
    try:
        return fit_phases(ROOT, env, data, work, "--address=auto")
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True)


PARAGRAPHS = [r"data.document_separator='\n\n'", "data.filters.profile=none"]


def prepare_phases(env: dict[str, str], output: Path, work: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "raylm", "prepare", f"data.sources=[{CORPUS}]", f"data.output={output}", *PARAGRAPHS]
    _, wall = stamped(command, env, work)
    manifest = json.loads((output / "manifest.json").read_text())
    inside = manifest["wall_seconds"]
    return {"process start, imports (outside prepare())": wall - inside, **manifest["phases_seconds"],
            "listing, Ray start, summary (rest of prepare())": inside - sum(manifest["phases_seconds"].values()),
            "wall": wall}


def demo_phases(env: dict[str, str], work: Path) -> dict[str, float]:
    """The demo's stages from its own headers (`=== demo: tune ... (173s) ===`, `done in 294s`)."""
    lines, wall = stamped([sys.executable, "-m", "raylm", "demo", "--quick", "--output", str(work / "demo")], env, work)
    text = "\n".join(line for _, line in lines)
    starts = [(name, float(at)) for name, at in re.findall(r"^=== demo: (\w+).* \((\d+)s\) ===$", text, re.M)]
    done = float(re.search(r"^=== demo: done in (\d+)s ===$", text, re.M).group(1))
    phases = {"process start, imports": wall - done, "Ray start": starts[0][1]}
    for (name, start), end in zip(starts, [at for _, at in starts[1:]] + [done]):
        phases[name] = end - start
    return {**phases, "wall": wall}


def table(title: str, columns: dict[str, dict[str, float]]) -> str:
    rows = [f"{title:52}" + "".join(f" {name:>9}" for name in columns)]
    for phase in columns["current"]:
        rows.append(f"  {phase:50}" + "".join(f" {column.get(phase, float('nan')):8.1f}s" for column in columns.values()))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="9bb160d", help="git revision to compare with (default: %(default)s)")
    parser.add_argument("--demo", action="store_true", help="also time `raylm demo --quick` (2-4 minutes more)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline), args.baseline], check=True)
        try:
            codes = {"baseline": baseline, "current": ROOT}
            envs = {name: {**os.environ, "PYTHONPATH": str(code)} for name, code in codes.items()}
            data = tmp / "prepared"
            stamped([sys.executable, "-m", "raylm", "prepare", f"data.sources=[{CORPUS}]", f"data.output={data}",
                     "data.seq_len=128", *PARAGRAPHS], envs["current"], tmp)
            results: dict[str, dict[str, dict[str, float]]] = {"fit": {}, "prepare": {}, "demo": {}}
            for name in codes:
                work = tmp / f"runs-{name}"
                work.mkdir()
                results["fit"][name] = fit_phases(codes[name], envs[name], data, work)
                results["prepare"][name] = prepare_phases(envs[name], work / "prepared", work)
                if args.demo:
                    results["demo"][name] = demo_phases(envs[name], work)
            results["fit"]["joined"] = joined_fit_phases(envs["current"], data, tmp / "runs-joined")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)
    print(f"baseline {args.baseline} vs current ({os.cpu_count()} CPUs)")
    print(table("pretrain, tiny, 2 workers, 2 steps", results["fit"]))
    print(table("prepare, 1.1 MB, defaults", results["prepare"]))
    if args.demo:
        print(table("demo --quick", results["demo"]))


if __name__ == "__main__":
    main()
