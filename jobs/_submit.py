"""What every jobs/*.py shares: put the submitted working dir (which holds raylm/) on sys.path and
run one raylm command with the job's arguments. The driver joins the cluster named by RAY_ADDRESS,
which Ray sets for submitted jobs."""

import sys
from pathlib import Path


def run(command: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from raylm.cli import console

    console([command, *sys.argv[1:]])
