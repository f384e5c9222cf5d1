"""Ray Train's overhead on a training step: the same model, batch and threads with and without it.

    python benchmarks/ray_overhead.py [--rounds 2] [--steps 300] [--preset shakespeare] [--batch 32]
    python benchmarks/ray_overhead.py --gpu --preset gpt2-124m --seq 1024 --batch 16 --steps 200   # one GPU

Without Ray: one process, the windows of a prepared dataset in memory, the training step of
`raylm.train.loop` by hand. With Ray: `raylm pretrain` with one worker (one torch thread, as the
plain loop), data streamed by Ray Data, metrics, no evaluation or checkpoints inside the timed
steps. Each reports its median step time after a warm-up. The two alternate (plain, Ray, plain, …,
plain) and each Ray run is compared with the mean of the plain runs on either side of it, so a
machine that drifts (shared VMs do) biases neither side; the Ray cluster stays up throughout, so
its idle daemons weigh on both. With --gpu both sides run bf16 autocast and fused AdamW on the
GPU and wait for it at the end of every step (the Ray run logs every step, which waits too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from raylm.config import load_config

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def plain_step_times(data: Path, config, steps: int, device: torch.device) -> list[float]:
    import contextlib

    from raylm.model.gpt import GPT

    manifest = json.loads((data / "manifest.json").read_text())
    windows = np.concatenate([np.asarray(pq.read_table(data / s).column("tokens").to_pylist())
                              for s in manifest["splits"]["train"]["shards"]])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    model = GPT(config.model.model_copy(update={"vocab_size": manifest["tokenizer"]["vocab_size"]})).to(device)
    optimizer = torch.optim.AdamW(model.param_groups(0.1), lr=config.train.lr, betas=(0.9, 0.95), fused=cuda)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    batch = config.train.batch_size
    times = []
    for i in range(steps):
        started = time.perf_counter()
        tokens = torch.from_numpy(windows[(i * batch) % (len(windows) - batch):][:batch].astype(np.int64)).to(device)
        with autocast:
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # waits for the device, as a step that logs does
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="Ray runs, each between two plain ones")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--preset", default="shakespeare")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128, help="tokens per window (data.seq_len)")
    parser.add_argument("--gpu", action="store_true", help="both sides on one GPU (all the machine's CPUs for Ray)")
    parser.add_argument("--shuffle-buffer", type=int, default=1024, help="train.shuffle_buffer of the Ray run")
    args = parser.parse_args()

    import ray

    from raylm.data.prepare import prepare
    from raylm.train.trainer import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        ray.init(num_cpus=None if args.gpu else 2, logging_level="warning")
        data = Path(tmp) / "data"
        prepare(load_config(None, [f"data.sources=[{CORPUS}]", "data.filters.profile=none", "data.dedup.exact=false",
                                   "data.dedup.near=false", "data.tokenizer.vocab_size=512", f"data.seq_len={args.seq}",
                                   "data.split.val=0", "data.split.test=0", f"data.output={data}"]), log=lambda _: None)
        config = load_config(None, [
            f"model.preset={args.preset}", f"train.data={data}", f"train.storage={tmp}/runs", "train.name=overhead",
            "train.workers=1", f"train.batch_size={args.batch}", f"train.max_steps={args.steps}", "train.log_every=1",
            f"train.eval_every={args.steps * 10}", f"train.checkpoint_every={args.steps * 10}", "train.warmup_steps=10",
            f"train.shuffle_buffer={args.shuffle_buffer}", f"train.use_gpu={args.gpu}",
        ])
        device = torch.device("cuda" if args.gpu else "cpu")

        def plain() -> float:
            return statistics.median(plain_step_times(data, config, args.steps // 2, device)[args.warmup:])

        def with_ray(round_: int) -> float:
            name = f"overhead-{round_}"
            pretrain(config.model_copy(update={"train": config.train.model_copy(update={"name": name})}), log=lambda _: None)
            records = [json.loads(line) for line in (Path(tmp) / "runs" / name / "metrics.jsonl").read_text().splitlines()]
            return statistics.median(r["step_ms"] / 1e3 for r in records[args.warmup : args.steps - 1])

        plains, rays = [plain()], []
        for round_ in range(args.rounds):
            rays.append(with_ray(round_))
            plains.append(plain())
        ray.shutdown()
    where = torch.cuda.get_device_name() if args.gpu else "CPU, 1 thread"
    print(f"{args.preset}, batch {args.batch} x {args.seq} tokens, {where}, shuffle buffer {args.shuffle_buffer}")
    overheads = []
    for round_, seconds in enumerate(rays):
        baseline = (plains[round_] + plains[round_ + 1]) / 2
        overheads.append((seconds / baseline - 1) * 100)
        print(f"round {round_ + 1}: plain loop {plains[round_] * 1e3:.1f} / {plains[round_ + 1] * 1e3:.1f} ms/step "
              f"(before / after), Ray Train {seconds * 1e3:.1f} ms/step: overhead {overheads[-1]:+.1f}%")
    print(f"median overhead over {len(overheads)} rounds: {statistics.median(overheads):+.1f}%")


if __name__ == "__main__":
    main()
