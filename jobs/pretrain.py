"""`ray job submit --working-dir . -- python jobs/pretrain.py [--config FILE] [KEY=VALUE ...]`

Pretraining as a Ray job: the same code as `raylm pretrain`, on the cluster the job runs on."""

from _submit import run

if __name__ == "__main__":
    run("pretrain")
