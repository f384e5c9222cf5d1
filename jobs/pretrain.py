"""`ray job submit --working-dir . -- python jobs/pretrain.py [--config FILE] [KEY=VALUE ...]`

Pretraining as a Ray job: the driver joins the cluster named by RAY_ADDRESS (set by Ray for
submitted jobs) and runs the same code as `raylm pretrain`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir holds raylm/

from raylm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
