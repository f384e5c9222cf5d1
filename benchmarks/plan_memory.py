"""`raylm plan`'s memory estimate against real training steps on CPU.

    python benchmarks/plan_memory.py                 # every configuration below: estimate vs measured
    python benchmarks/plan_memory.py --gpu           # on a GPU: gpt2-124m, max_memory_allocated vs the estimate
    python benchmarks/plan_memory.py --child JSON    # one measurement (what the table and tests/test_plan.py run)

Each configuration runs in a fresh process: one thread, a warm-up step of a tiny model of the same
kind (so the kernels' code is paged in before the baseline), then the model built as the training
loop builds it (raylm.train.loop.build_model's GPT and `parallelize`, AdamW with the loop's groups
and betas, `train.loss_chunk_rows`), and training steps as the loop takes them (`_, loss = model(...)`,
backward, clipping, step, zero_grad). Measured: the peak resident set (VmHWM, reset after the
baseline) over the resident set before the model existed.

glibc's malloc is run with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=131072, its default value
without the dynamic raise), so every tensor of 128 KiB or more is its own mapping, returned to the
kernel when freed, and MKL's own buffer cache is off (MKL_DISABLE_FAST_MM=1: it keeps the packed
copies of matmul operands after use): the resident set then follows the live tensors, as
torch.cuda.max_memory_allocated follows them on a GPU. Both allocators keep freed memory for reuse
by default; the `default malloc` column shows how much more that costs here (plan.usable_memory
leaves room for the CUDA caching allocator's equivalent on a GPU).

Also counted, in process: the bytes autograd saves per token in one block, with saved-tensor hooks,
against raylm.plan.plan.layer_activation_bytes, for CPU fp32, CPU bf16 autocast (the dtype policy of
DDP on a GPU) and a bf16 model (FSDP2's bf16 parameters). The last two are the GPU modes' dtype
policies exercised on CPU, not GPU measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys

import torch

from raylm.config import ModelConfig

LIVE_TENSORS = {"MALLOC_MMAP_THRESHOLD_": "131072", "MKL_DISABLE_FAST_MM": "1"}

# (what it stresses, spec): L layers, h width, H heads, T tokens, B sequences, V vocabulary, chunk
# (train.loss_chunk_rows), ckpt (activation checkpointing), mlp, kv (key/value heads)
CONFIGS = [
    ("activations", {"L": 2, "h": 512, "H": 8, "T": 256, "B": 8, "V": 4096, "chunk": 1024}),
    ("activations, 6 layers", {"L": 6, "h": 512, "H": 8, "T": 256, "B": 8, "V": 4096, "chunk": 1024}),
    ("activations, batch 16", {"L": 2, "h": 512, "H": 8, "T": 256, "B": 16, "V": 4096, "chunk": 1024}),
    ("whole logits (no chunks)", {"L": 2, "h": 512, "H": 8, "T": 256, "B": 8, "V": 4096}),
    ("GPT-2 vocabulary, chunked", {"L": 2, "h": 256, "H": 4, "T": 256, "B": 8, "V": 50257, "chunk": 1024}),
    ("checkpointing, 6 layers", {"L": 6, "h": 512, "H": 8, "T": 256, "B": 8, "V": 4096, "chunk": 1024, "ckpt": True}),
    ("gradients dominate", {"L": 4, "h": 1024, "H": 8, "T": 64, "B": 1, "V": 4096, "chunk": 1024}),
    ("GELU, GQA", {"L": 4, "h": 512, "H": 8, "kv": 2, "T": 256, "B": 8, "V": 4096, "chunk": 1024, "mlp": "gelu"}),
]


# DDP's GPU dtype policy exercised on CPU: bf16 autocast around forward and backward, compared with
# the GPU estimate for DDP (whose activations and bf16 weight copies it shares; not a GPU measurement).
AUTOCAST_CONFIGS = [
    ("autocast, 2 layers", {"L": 2, "h": 512, "H": 8, "T": 256, "B": 8, "V": 4096, "chunk": 1024, "autocast": True}),
    ("autocast, 6 layers", {"L": 6, "h": 512, "H": 8, "T": 256, "B": 8, "V": 4096, "chunk": 1024, "autocast": True}),
    ("autocast, whole logits", {"L": 4, "h": 512, "H": 8, "T": 128, "B": 8, "V": 4096, "autocast": True}),
]


# `--gpu`: the same step on a CUDA device (bf16 autocast, fused AdamW, as the loop on a GPU), its
# torch.cuda.max_memory_allocated against the plan's GPU estimate for DDP: gpt2-124m with GPT-2's
# vocabulary at 16 x 1,024, whole logits, chunked and with activation checkpointing.
GPT2 = {"L": 12, "h": 768, "H": 12, "T": 1024, "B": 16, "V": 50257, "device": "cuda", "steps": 3}
GPU_CONFIGS = [("gpt2-124m, whole logits", GPT2), ("gpt2-124m, chunks of 4096", {**GPT2, "chunk": 4096}),
               ("gpt2-124m, checkpointing", {**GPT2, "chunk": 4096, "ckpt": True})]


def model_config(spec: dict) -> ModelConfig:
    return ModelConfig(preset=None, n_layer=spec["L"], n_head=spec["H"], n_kv_head=spec.get("kv"), n_embd=spec["h"],
                       block_size=spec["T"], vocab_size=spec["V"], mlp=spec.get("mlp", "swiglu"))


def estimate(spec: dict):
    from raylm.plan.plan import memory, meta_model, shapes_of

    return memory(shapes_of(meta_model(model_config(spec))), batch_size=spec["B"], seq_len=spec["T"], world=1,
                  strategy="ddp", checkpointing=spec.get("ckpt", False), loss_chunk_rows=spec.get("chunk"),
                  device="gpu" if spec.get("autocast") or spec.get("device") == "cuda" else "cpu")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def child(spec: dict) -> dict:
    """Peak resident memory of training steps, as the loop takes them, over the process before the
    model; on a GPU (spec "device": "cuda") the peak of torch.cuda.max_memory_allocated instead."""
    from raylm.model.gpt import GPT
    from raylm.train.parallelize import parallelize

    torch.set_num_threads(1)
    cuda = spec.get("device") == "cuda"
    device = torch.device("cuda" if cuda else "cpu")

    def autocast():  # bf16 autocast on a GPU, as the loop's; "autocast": the same policy on CPU
        if cuda or spec.get("autocast"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def build(config: ModelConfig):
        torch.manual_seed(0)
        model = GPT(config).to(device)
        model.loss_chunk_rows = spec.get("chunk")
        model = parallelize(model, "ddp", device, compile=False, activation_checkpointing=spec.get("ckpt", False))
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in model.param_groups(0.1)]
        return model, torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), fused=cuda)

    def steps(model, optimizer, tokens, count):
        for _step in range(count):  # the loop's step; `_` keeps the logits, as the loop's does
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            with autocast():  # around forward and backward, as the loop's
                _, loss = model(inputs, targets)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    if cuda:
        tokens = torch.randint(0, spec["V"], (spec["B"], spec["T"] + 1), device=device)
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        model, optimizer = build(model_config(spec))
        steps(model, optimizer, tokens, spec.get("steps", 3))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"baseline": baseline, "peak": peak, "growth": peak - baseline, "reserved": torch.cuda.max_memory_reserved(),
                "parameters": sum(p.numel() for p in model.parameters()), "device": torch.cuda.get_device_name()}
    tiny = {**spec, "L": 1, "h": 64, "H": 2, "kv": None}
    warm_model, warm_optimizer = build(model_config(tiny))
    steps(warm_model, warm_optimizer, torch.randint(0, spec["V"], (2, spec["T"] + 1)), 2)
    del warm_model, warm_optimizer
    gc.collect()
    tokens = torch.randint(0, spec["V"], (spec["B"], spec["T"] + 1), generator=torch.Generator().manual_seed(0))
    baseline = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
    except OSError:
        pass
    model, optimizer = build(model_config(spec))
    steps(model, optimizer, tokens, spec.get("steps", 3))  # the first creates AdamW's moments
    return {"baseline": baseline, "peak": _status("VmHWM"), "growth": _status("VmHWM") - baseline,
            "parameters": sum(p.numel() for p in model.parameters())}


def measure(spec: dict, default_malloc: bool = False) -> dict:
    """`child` in a fresh process."""
    env = {**os.environ, **({} if default_malloc else LIVE_TENSORS), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def saved_per_layer(spec: dict, mode: str) -> float:
    """Bytes autograd saves per token in the second block (parameters aside), counted with
    saved-tensor hooks over a forward pass: "fp32", "autocast" (CPU bf16 autocast, less the bf16
    weight copies autocast saves for the block's Linears: those are weights, not activations) or
    "bf16" (a bf16 model)."""
    from raylm.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(model_config(spec))
    model.loss_chunk_rows = spec.get("chunk")
    if mode == "bf16":
        model = model.to(torch.bfloat16)
    params = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}
    inside = [False]

    def pack(tensor):
        storage = tensor.untyped_storage()
        if inside[0] and storage.data_ptr() not in params:
            storages.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    block = model.blocks[1]
    hooks = [block.register_forward_pre_hook(lambda m, a: inside.__setitem__(0, True)),
             block.register_forward_hook(lambda m, a, o: inside.__setitem__(0, False))]
    tokens = torch.randint(0, spec["V"], (spec["B"], spec["T"] + 1))
    context = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()
    with context, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens[:, :-1], tokens[:, 1:])
    for hook in hooks:
        hook.remove()
    copies = sum(2 * m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear)) if mode == "autocast" else 0
    return (sum(storages.values()) - copies) / (spec["B"] * spec["T"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help="the GPU configurations: max_memory_allocated vs the estimate")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.gpu:
        gib = 2**30
        print(f"{'configuration':28}{'estimate':>10}{'measured':>10}{'ratio':>8}{'reserved':>10}   GiB, one GPU, DDP (no wrapper)")
        for name, spec in GPU_CONFIGS:
            ours, result = estimate(spec), measure(spec, default_malloc=True)
            print(f"{name:28}{ours.peak / gib:>10.2f}{result['growth'] / gib:>10.2f}{ours.peak / result['growth']:>8.3f}"
                  f"{result['reserved'] / gib:>10.2f}   {result['device']}")
        return
    from raylm.plan.plan import layer_activation_bytes, meta_model, shapes_of

    mib = 2**20
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; peak resident memory over the baseline, MiB\n")
    print(f"{'configuration':28}{'estimate':>10}{'measured':>10}{'ratio':>8}{'default malloc':>16}   estimate's parts")
    measured = {}
    for name, spec in CONFIGS + AUTOCAST_CONFIGS:
        ours, fixed, default = estimate(spec), measure(spec), measure(spec, default_malloc=True)
        measured[name] = fixed
        parts = ", ".join(f"{key} {value / mib:.0f}" for key, value in vars(ours).items() if key != "peak" and value)
        print(f"{name:28}{ours.peak / mib:>10.1f}{fixed['growth'] / mib:>10.1f}{ours.peak / fixed['growth']:>8.3f}"
              f"{default['growth'] / mib:>16.1f}   {parts}")

    # The per-layer constant from two depths: what four more blocks add, less their weights and AdamW
    # moments (12 bytes a parameter) and, under autocast, their bf16 copies (2 bytes).
    print()
    specs = dict(CONFIGS + AUTOCAST_CONFIGS)
    for few, more, extra, policy, unit in (("activations", "activations, 6 layers", 0, "fp32", "fp32 values"),
                                          ("autocast, 2 layers", "autocast, 6 layers", 2, "bf16 autocast", "bytes")):
        spec = specs[few]
        layers = specs[more]["L"] - spec["L"]
        grow = measured[more]["growth"] - measured[few]["growth"]
        params = measured[more]["parameters"] - measured[few]["parameters"]
        per_layer = (grow - (12 + extra) * params) / layers / (spec["B"] * spec["T"])
        per_h = per_layer / spec["h"] / (4 if unit == "fp32 values" else 1)
        print(f"per block per token, measured from {spec['L']} -> {specs[more]['L']} layers, {policy} (n_embd {spec['h']}, "
              f"SwiGLU ffn {model_config(spec).ffn_size}): {per_layer:.0f} bytes = {per_h:.1f} x n_embd {unit}")

    print("\nsaved for backward per token in one block, bytes: formula / saved-tensor hooks")
    for name, spec in [("SwiGLU", dict(CONFIGS)["activations"]), ("GELU, GQA", dict(CONFIGS)["GELU, GQA"])]:
        s = shapes_of(meta_model(model_config(spec)))
        cells = []
        for mode in ("fp32", "autocast", "bf16"):
            counted = saved_per_layer(spec, mode)
            cells.append(f"{mode} {layer_activation_bytes(s, mode):.0f} / {counted:.0f} "
                         f"({layer_activation_bytes(s, mode) / spec['h']:.1f} x n_embd)")
        print(f"  {name:12}" + "   ".join(cells))


if __name__ == "__main__":
    main()
