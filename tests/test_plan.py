"""`raylm plan`: its memory estimate against real training steps, its arithmetic by hand, its table,
JSON and errors. No Ray: plan never starts it (and the measured steps are plain torch)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raylm.cli import main
from raylm.config import ModelConfig, load_config
from raylm.plan.plan import (CHINCHILLA_TOKENS_PER_PARAMETER, LIST_PRICES, MEASURED_MFU, layer_activation_bytes,
                             largest_batch, make_plan, memory, meta_model, read_node_type, shapes_of)
from raylm.train.metrics import GPU_MEMORY_BYTES

ROOT = Path(__file__).resolve().parents[1]
AWS, GCP, KUBERAY = (str(ROOT / "cluster" / name) for name in ("aws-gpu.yaml", "gcp-gpu.yaml", "kuberay/raycluster.yaml"))


def _benchmark():
    spec = importlib.util.spec_from_file_location("plan_memory", ROOT / "benchmarks" / "plan_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plan_memory = _benchmark()


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """In an empty folder: train.data's default, ./prepared, is not some earlier run's data."""
    monkeypatch.chdir(tmp_path)


def plan_json(*args: str, capsys) -> dict:
    capsys.readouterr()
    assert main(["plan", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------------- memory, measured


# Two sizes, both stepping as the training loop does (benchmarks/plan_memory.py's child): 2 layers of
# 512 with the chunked loss, whose peak is the end of forward (a chunk's logits beside the previous
# chunk's), and 3 layers of 384 with the whole logits, whose peak is cross-entropy's backward.
MEASURED = [{"L": 2, "h": 512, "H": 8, "T": 256, "B": 8, "V": 4096, "chunk": 1024, "steps": 2},
            {"L": 3, "h": 384, "H": 6, "T": 128, "B": 8, "V": 4096, "steps": 2}]
TOLERANCE = 0.05


def test_the_memory_estimate_matches_the_measured_peak_of_training_steps_on_cpu():
    """The CPU estimate (fp32, one worker) within 5% of the peak resident memory real training steps
    add to a process, each size in a fresh process where the resident set follows the live tensors
    (glibc's mmap threshold fixed, MKL's buffer cache off: benchmarks/plan_memory.py explains it).

    Why 5%: the estimate's terms are the tensors autograd saves, counted exactly (the next test), and
    transients read off the code (a loss chunk's logits, the gradients flowing through a block's
    backward); over the benchmark's eight configurations it came within 2% of the measurement (these
    two: -1.6% and -0.2%), short by what it leaves out — BLAS scratch and allocations under the
    128 KiB threshold, a few MiB. 5% leaves room for another machine's BLAS, yet each term of the
    peak is larger: leaving out AdamW's moments, the activations or the loss's tensors fails it."""
    with ThreadPoolExecutor(len(MEASURED)) as pool:
        measured = list(pool.map(plan_memory.measure, MEASURED))
    for spec, result in zip(MEASURED, measured):
        estimate = plan_memory.estimate(spec)
        assert estimate.peak == pytest.approx(result["growth"], rel=TOLERANCE), (spec, vars(estimate), result)
        assert result["parameters"] == shapes_of(meta_model(plan_memory.model_config(spec))).params
        for part in ("optimizer", "activations", "loss"):  # each is more than the tolerance
            assert getattr(estimate, part) > 2 * TOLERANCE * result["growth"], part


@pytest.mark.parametrize("mode", ["fp32", "autocast", "bf16"])
@pytest.mark.parametrize("variant", [{}, {"mlp": "gelu", "kv": 2}])
def test_the_activation_count_is_what_autograd_saves(mode, variant):
    """Per token per block, the formula against saved-tensor hooks on a real forward pass, in the three
    dtype policies: fp32 (CPU), bf16 autocast (DDP on a GPU, here CPU autocast) and bf16 weights
    (FSDP2's compute). Exact but for SDPA's log-sum-exp rounding to storage sizes."""
    spec = {"L": 2, "h": 128, "H": 4, "T": 64, "B": 2, "V": 512, "chunk": 64, **variant}
    counted = plan_memory.saved_per_layer(spec, mode)
    s = shapes_of(meta_model(plan_memory.model_config(spec)))
    assert layer_activation_bytes(s, mode) == pytest.approx(counted, rel=2e-3)
    if mode == "fp32" and not variant:  # SwiGLU in fp32: 24 x n_embd values per token (ffn 384 = 3 x 128)
        assert counted / 4 / spec["h"] == pytest.approx(13 + 4 * 3, rel=2e-3)


# ------------------------------------------------------------------------------ arithmetic by hand


def test_parameters_flops_and_memory_of_a_tiny_config_by_hand(capsys):
    """tiny: 2 layers x 64, 2 heads, context 128, SwiGLU ffn 192 (8/3 x 64 rounded up to 64), tied
    embedding of 1,000 tokens padded to 1,024 rows."""
    block = 64 + 64 * 192 + 64 * 64 + 64 + 3 * 64 * 192  # two norms, qkv, proj, w1 w3 w2
    params = 2 * block + 1024 * 64 + 64  # + the tied embedding and the final norm
    assert params == 172_352
    flops = 6 * params + 12 * 2 * 2 * 32 * 128  # 6N + 12 L H Q T
    plan = plan_json("model.vocab_size=1000", "train.workers=4", "train.batch_size=8", "train.max_steps=500",
                     "train.use_gpu=true", capsys=capsys)
    assert plan["model"]["parameters"] == params and plan["model"]["flops_per_token"] == flops == 1_230_720
    assert plan["run"]["tokens_per_step"] == 8 * 128 * 4 and plan["run"]["steps"] == 500
    ddp, fsdp = plan["memory"]["DDP"], plan["memory"]["FSDP2"]
    assert (ddp["weights"], ddp["gradients"], ddp["optimizer"]) == (4 * params, 4 * params, 8 * params)
    assert (fsdp["weights"], fsdp["optimizer"]) == (params, 2 * params)  # sharded over the 4 workers
    linear = 2 * (64 * 192 + 64 * 64 + 3 * 64 * 192)
    assert ddp["bf16_weights"] == 2 * (linear + 1024 * 64)  # autocast's copies; the head is a leaf without chunks
    time = plan["time"]
    assert time["mfu"] == MEASURED_MFU[False]
    assert time["tokens_per_s"] == pytest.approx(4 * 989e12 * MEASURED_MFU[False] / flops)
    assert time["train_seconds"] == pytest.approx(500 * 8 * 128 * 4 / time["tokens_per_s"])
    assert plan["advice"]["compute_optimal_tokens"] == CHINCHILLA_TOKENS_PER_PARAMETER * params
    assert plan["advice"]["tokens_over_optimal"] == pytest.approx(500 * 4096 / (20 * params))


def test_fits_and_the_largest_micro_batch_follow_the_gpu_memory():
    """gpt2-124m with GPT-2's vocabulary fits an H100 at 16 x 1,024 and not an L4; the largest
    micro-batch is the last whose peak is within plan.usable_memory of the GPU."""
    config = load_config(None, ["model.preset=gpt2-124m", "model.vocab_size=50257", "data.seq_len=1024",
                                "train.workers=8", "train.batch_size=16"])
    h100 = make_plan(config, read_node_type(AWS, "gpu-large"))
    l4 = make_plan(config, read_node_type(AWS, "gpu-small"))
    assert h100["gpu"]["type"] == "H100" and h100["gpu"]["memory_bytes"] == GPU_MEMORY_BYTES["H100"]
    assert h100["memory"]["DDP"]["fits"] and not l4["memory"]["DDP"]["fits"]
    s = shapes_of(meta_model(config.model.model_copy(update={"vocab_size": 50257})))
    for plan in (h100, l4):
        budget = 0.9 * plan["gpu"]["memory_bytes"]
        options = dict(seq_len=1024, world=8, strategy="ddp", checkpointing=False, loss_chunk_rows=None)
        largest = plan["memory"]["DDP"]["largest_micro_batch"]
        assert largest == largest_batch(s, budget, **options) and largest >= 1
        assert memory(s, batch_size=largest, **options).peak <= budget < memory(s, batch_size=largest + 1, **options).peak
    assert h100["memory"]["DDP"]["largest_micro_batch"] > 16 > l4["memory"]["DDP"]["largest_micro_batch"]
    assert any("does not fit 16 sequences per GPU" in note for note in l4["advice"]["notes"])
    # Checkpointing and sharding only lower the peak; chunking the loss lowers it at this vocabulary.
    rows = h100["memory"]
    assert rows["DDP+ckpt"]["peak"] < rows["DDP"]["peak"] and rows["FSDP2"]["peak"] < rows["DDP"]["peak"]
    chunked = make_plan(config.model_copy(update={"train": config.train.model_copy(update={"loss_chunk_rows": 2048})}))
    assert chunked["memory"]["DDP"]["loss"] < rows["DDP"]["loss"] / 3


def test_a_model_too_large_for_one_gpu_is_told_to_shard():
    """The 1b preset with DDP needs its fp32 weights, gradients and moments whole on each 24 GB L4 (and
    does not fit); FSDP2 with checkpointing over 8 of them does."""
    config = load_config(None, ["model.preset=1b", "train.workers=8", "train.batch_size=4", "train.use_gpu=true"])
    plan = make_plan(config, read_node_type(GCP, "gpu-small"))
    assert plan["gpu"] == {**plan["gpu"], "type": "L4", "gpus_per_node": 1, "nodes": 8, "max_nodes": 4}
    assert not plan["memory"]["DDP"]["fits"] and plan["memory"]["DDP"]["largest_micro_batch"] == 0
    assert plan["memory"]["FSDP2+ckpt"]["fits"]
    notes = "\n".join(plan["advice"]["notes"])
    assert "it fits with FSDP2" in notes and "8 gpu-small nodes are needed" in notes and "raise its max_workers" in notes


# ------------------------------------------------------------------------------ time, cost, advice


def test_time_and_cost_follow_the_mfu_the_price_and_the_token_budget(capsys):
    args = ["model.preset=gpt2-124m", "model.vocab_size=50257", "data.seq_len=1024", "train.workers=16",
            "train.batch_size=16", "train.tokens_per_step=524288", "train.max_tokens=10000000000",
            "--cluster", AWS, "--node-type", "gpu-large"]
    default = plan_json(*args, capsys=capsys)
    assert default["run"]["accumulate"] == 2 and default["run"]["steps"] == 1000  # train.max_steps caps it
    assert any("set train.max_steps=19074" in note for note in default["advice"]["notes"])
    assert default["gpu"]["nodes"] == 2 and default["time"]["price_per_gpu_hour"] == LIST_PRICES["p5.48xlarge"] / 8
    hours = default["time"]["train_seconds"] / 3600
    assert default["time"]["gpu_hours"] == pytest.approx(16 * hours)
    assert default["time"]["cost_usd"] == pytest.approx(2 * LIST_PRICES["p5.48xlarge"] * hours)

    budget = plan_json("train.max_steps=100000", "plan.mfu=0.4", "plan.price_per_gpu_hour=2", *args, capsys=capsys)
    assert budget["run"]["steps"] == math.ceil(10e9 / 524288) and budget["run"]["tokens"] >= 10e9
    assert budget["time"]["mfu"] == 0.4 and budget["time"]["mfu_from"] == "plan.mfu"
    assert budget["time"]["tokens_per_s"] == pytest.approx(default["time"]["tokens_per_s"] * 0.4 / MEASURED_MFU[False])
    assert budget["time"]["cost_usd"] == pytest.approx(2 * budget["time"]["gpu_hours"])
    assert budget["advice"]["tokens_over_optimal"] == pytest.approx(budget["run"]["tokens"] / (20 * budget["model"]["parameters"]))

    compiled = plan_json("train.compile=true", "train.activation_checkpointing=true", *args, capsys=capsys)
    assert compiled["time"]["mfu"] == MEASURED_MFU[True]
    # Checkpointing runs every block's forward twice: 4/3 of the work for the same tokens.
    assert compiled["time"]["tokens_per_s"] == pytest.approx(
        default["time"]["tokens_per_s"] * MEASURED_MFU[True] / MEASURED_MFU[False] * 3 / 4)


def test_the_vocabulary_and_sequence_come_from_the_prepared_data_when_the_config_leaves_them(tmp_path, capsys):
    prepared = tmp_path / "books"
    prepared.mkdir()
    (prepared / "manifest.json").write_text(json.dumps({"tokenizer": {"vocab_size": 4096}, "seq_len": 512}))
    plan = plan_json(f"train.data={prepared}", "model.preset=shakespeare", capsys=capsys)  # context 128
    assert plan["model"]["vocab_size"] == 4096 and "the tokenizer of" in plan["model"]["vocab_from"]
    assert plan["run"]["seq_len"] == 128 and "as rows of model.block_size 128" in plan["run"]["seq_from"]
    assert plan_json("model.preset=shakespeare", capsys=capsys)["model"]["vocab_size"] == 8192  # data.tokenizer's


def test_the_table_shows_every_part_and_marks_the_configs_strategy(capsys):
    assert main(["plan", "model.preset=gpt2-124m", "model.vocab_size=50257", "train.strategy=fsdp",
                 "train.workers=[2, 8]", "--cluster", KUBERAY, "--node-type", "gpu-large"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("raylm plan: gpt2-124m on 8 x H100 (gpu-large of ")
    for row in ("weights (fp32)", "gradients (fp32)", "AdamW moments (fp32)", "bf16 weight copies", "activations",
                "loss (lm_head, cross-entropy)", "peak of a step", "fits", "largest micro-batch"):
        assert f"\n  {row} " in out
    header = next(line for line in out.splitlines() if "DDP" in line and "FSDP2" in line)
    assert header.split() == ["DDP", "DDP+ckpt", "FSDP2*", "FSDP2+ckpt"]
    assert "cost unknown: set plan.price_per_gpu_hour" in out  # a KubeRay group names no instance type
    assert "train.workers=[2, 8] is planned at its max; on 2 workers a step takes 4x as long" in out
    assert "Chinchilla: ~20 tokens per parameter" in out and "train.use_gpu=true" in out


def test_a_config_file_and_overrides_plan_without_importing_ray(tmp_path):
    """--config and KEY=VALUE as every command takes them, in a fresh process that never imports Ray
    (plan is for before any cluster exists)."""
    (tmp_path / "run.yaml").write_text("model:\n  preset: shakespeare\ntrain:\n  workers: 4\n  batch_size: 2\n")
    code = ("import json, sys; from raylm.cli import main; code = main(['plan', '--json', '--config', 'run.yaml', "
            "'train.batch_size=3']); assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray'; "
            "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["model"]["preset"] == "shakespeare" and plan["run"]["workers"] == 4 and plan["run"]["batch_size"] == 3


def test_help_lists_the_plan_keys(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["plan", "--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and "--cluster FILE" in out and "--node-type NAME" in out and "--json" in out
    for key in ("plan.mfu = null", "plan.price_per_gpu_hour = null", 'plan.gpu = "H100"', "plan.usable_memory = 0.9"):
        assert key in out


@pytest.mark.parametrize("args, fragment", [
    (["--cluster", AWS, "--node-type", "gpu-xl"],
     "unknown --node-type 'gpu-xl' in {AWS}; its GPU node types: gpu-small, gpu-large (all types: head, cpu-worker, "
     "gpu-small, gpu-large)"),
    (["--cluster", AWS], "--node-type is needed with --cluster; its GPU node types: gpu-small, gpu-large"),
    (["--cluster", AWS, "--node-type", "cpu-worker"], "node type 'cpu-worker' of {AWS} has no GPU"),
    (["--node-type", "gpu-large"], "--node-type names a node type of a --cluster file"),
    (["--cluster", "/no/cluster.yaml", "--node-type", "gpu-large"], "cannot read --cluster /no/cluster.yaml"),
    (["plan.gpu=T4"], "plan.gpu: raylm plan does not know the GPU 'T4'; it knows H200, H100, A100-80G"),
    (["plan.mfu=2"], "plan.mfu: Input should be less than or equal to 1"),
    (["plan.mfuu=0.3"], "unknown key 'plan.mfuu'; did you mean 'plan.mfu'?"),
])
def test_bad_input_is_one_line(args, fragment, capsys):
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raylm: error: ") and err.count("\n") == 1 and fragment.format(AWS=AWS) in err, err


def test_every_gpu_node_type_of_the_cluster_files_is_known():
    """Each GPU type the YAMLs use has a memory and a peak, and each instance type a list price."""
    for cluster, instance in ((AWS, True), (GCP, True), (KUBERAY, False)):
        for name in ("gpu-small", "gpu-large"):
            node = read_node_type(cluster, name)
            assert node.accelerator in GPU_MEMORY_BYTES and node.gpus == (8 if name == "gpu-large" else 1)
            assert (node.instance in LIST_PRICES) == instance and node.max_nodes in (2, 4)
    assert ModelConfig(preset="1b").n_layer == 24  # the README's second example
