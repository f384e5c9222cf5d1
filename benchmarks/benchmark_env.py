"""Environments of their own for the libraries a benchmark compares raylm with (lm-eval, datatrove):
they never enter raylm's dependencies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def sh(*command: str, env: dict | None = None, cwd: Path | None = None, echo: bool = True) -> str:
    """A command's stdout; on failure, the end of its stderr (and the command, when echoed)."""
    if echo:
        print("$", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command) if echo else command[0]}\n"
                         f"{result.stderr[-3000:]}")
    return result.stdout


def benchmark_env(venv: Path, packages: list[str]) -> Path:
    """The python of a virtual environment with `packages`, made on first use (pip keeps what is
    there already)."""
    if not (venv / "bin" / "python").exists():
        sh(sys.executable, "-m", "venv", str(venv))
    sh(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *packages)
    return venv / "bin" / "python"
