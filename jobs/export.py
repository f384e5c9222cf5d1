"""`ray job submit --working-dir . -- python jobs/export.py RUN [--output DIR | s3://...] [--dtype bfloat16]`

Export as a Ray job: the same code as `raylm export`, run by the job's driver on the cluster, where
the run's storage (s3:// for a multi-node run) is reachable."""

from _submit import run

if __name__ == "__main__":
    run("export")
