"""`ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint RUN [--json] [PATH ...]`

Evaluation as a Ray job: the same code as `raylm evaluate`, on the cluster the job runs on."""

from _submit import run

if __name__ == "__main__":
    run("evaluate")
