"""`ray job submit --working-dir . -- python jobs/finetune.py [--config FILE] [KEY=VALUE ...]`

Fine-tuning as a Ray job: the same code as `raylm finetune`, on the cluster the job runs on."""

from _submit import run

if __name__ == "__main__":
    run("finetune")
