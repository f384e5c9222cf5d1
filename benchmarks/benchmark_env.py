"""Environments of their own for the libraries a benchmark compares raylm with (lm-eval, datatrove):
they never enter raylm's dependencies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def sh(*command: str, env: dict | None = None, cwd: Path | None = None, stdin: str | None = None) -> str:
    """A command's stdout; its stderr's end and the command on failure."""
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                            input=stdin)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return result.stdout


def benchmark_env(venv: Path, packages: list[str]) -> Path:
    """The python of a virtual environment with `packages`, made on first use (pip keeps what is
    there already)."""
    if not (venv / "bin" / "python").exists():
        sh(sys.executable, "-m", "venv", str(venv))
    sh(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *packages)
    return venv / "bin" / "python"
