"""`ray job submit --working-dir . -- python jobs/prepare.py [--config FILE] [KEY=VALUE ...]`

The prepare stage as a Ray job: the driver joins the cluster named by RAY_ADDRESS (set by Ray for
submitted jobs) and runs the same code as `raylm prepare`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir holds raylm/

from raylm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
