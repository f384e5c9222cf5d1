"""`ray job submit --working-dir . -- python jobs/prepare.py [--config FILE] [KEY=VALUE ...]`

Data preparation as a Ray job: the same code as `raylm prepare`, on the cluster the job runs on."""

from _submit import run

if __name__ == "__main__":
    run("prepare")
