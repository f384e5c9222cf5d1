"""`ray job submit --working-dir . -- python jobs/tune.py [--config FILE] [KEY=VALUE ...]`

A Tune sweep as a Ray job: the same code as `raylm tune`, on the cluster the job runs on."""

from _submit import run

if __name__ == "__main__":
    run("tune")
