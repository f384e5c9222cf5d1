"""What a run reports: metrics.jsonl, TensorBoard and a console progress line, from rank 0; MFU."""

from __future__ import annotations

import json
import os
import tempfile

import torch

from raylm import storage

METRICS = "metrics.jsonl"
# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' datasheets.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12}
# Memory of each GPU in bytes, as nvidia-smi reports it (the H200's measured on the lent machine:
# BENCHMARKS.md), keyed by Ray's accelerator types (`accelerator_type:H100` in a node type's
# resources). Ray's plain "A100" may be either size: `raylm plan` takes the smaller for it.
GPU_MEMORY_BYTES = {"H200": 143_771 * 2**20, "H100": 81_559 * 2**20, "A100-80G": 81_920 * 2**20,
                    "A100-40G": 40_960 * 2**20, "A100": 40_960 * 2**20, "L4": 23_034 * 2**20, "A10G": 23_028 * 2**20}


def peak_flops(device: torch.device) -> float | None:
    """The device's peak for MFU; None on CPU or an unknown GPU (MFU is then not shown)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def si_number(number: float) -> str:
    """A count with an SI-style suffix, one decimal: 123.6M parameters, 2.9M tokens/s, 10.0B tokens."""
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= factor:
            return f"{number / factor:.1f}{suffix}"
    return f"{number:.0f}"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def read_metrics(run_dir: str) -> list[dict]:
    """metrics.jsonl as one record per step, in step order (none when there is no file). A resumed
    run logs the steps it redid again: the later record wins. A line cut short by a crash is skipped."""
    path = storage.join(run_dir, METRICS)
    by_step = {}
    if storage.exists(path):
        for line in storage.read_bytes(path).decode().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


class RunLog:
    """Rank 0's record of a run: one JSON object per logged step in `<run>/metrics.jsonl` (appended
    across restarts, so a resumed run shows the steps it redid), TensorBoard events in
    `<run>/tensorboard`, and a line on the console."""

    def __init__(self, run_dir: str, total_steps: int, budget_seconds: float | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.metrics_path = storage.join(run_dir, METRICS)
        self.remote = storage.is_remote(run_dir)
        self.lines = [storage.read_bytes(self.metrics_path).decode()] if self.remote and storage.exists(self.metrics_path) else []
        self.tensorboard_dir = storage.join(run_dir, "tensorboard")
        self.local_tensorboard = tempfile.mkdtemp(prefix="raylm-tb-") if self.remote else self.tensorboard_dir
        self.writer = SummaryWriter(self.local_tensorboard)
        self.total_steps, self.budget_seconds = total_steps, budget_seconds

    def write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        if self.remote:  # object stores cannot append: rewrite the (small) file
            self.lines.append(line)
            storage.write_bytes(self.metrics_path, "".join(self.lines).encode())
        else:
            os.makedirs(os.path.dirname(self.metrics_path), exist_ok=True)
            with open(self.metrics_path, "a") as f:
                f.write(line)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def progress(self, record: dict, step_seconds: float) -> str:
        step = record["step"]
        left = (self.total_steps - step) * step_seconds
        if self.budget_seconds is not None:
            left = min(left, max(0.0, self.budget_seconds - record["train_seconds"]))
        eta = duration(left)
        mfu = f" | MFU {record['mfu'] * 100:.1f}%" if record.get("mfu") is not None else ""
        return (f"step {step}/{self.total_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                f"grad {record['grad_norm']:.2f} | {record['tokens_per_s'] / 1e3:.1f}k tok/s | "
                f"{record['step_ms']:.0f} ms/step{mfu} | ETA {eta}")

    def upload_events(self) -> None:
        """On object storage, copy the TensorBoard events written so far: called at every
        checkpoint, so a run stopped, killed or resized keeps its curves up to there (each restart
        writes a file of its own)."""
        if self.remote:
            for name in os.listdir(self.local_tensorboard):
                with open(os.path.join(self.local_tensorboard, name), "rb") as f:
                    storage.write_bytes(storage.join(self.tensorboard_dir, name), f.read())

    def close(self) -> None:
        self.writer.close()
        self.upload_events()
