"""`raylm <command> [--config FILE] [KEY=VALUE ...]`: the command line over the library."""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import json
import os
import sys
import textwrap

from raylm.config import Config, describe_keys, load_config
from raylm.errors import RaylmError, redact


def _keys_epilog(*sections: str) -> str:
    lines = ["config keys (set in the YAML file or as KEY=VALUE; lists in flow style, e.g. data.sources=[a,b]):"]
    for section in sections:
        for key, default, description in describe_keys(Config.model_fields[section].annotation, f"{section}."):
            lines.append(f"  {key} = {'(from the preset)' if default is ... else json.dumps(default)}")
            lines.extend(textwrap.wrap(description, 96, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def _command(commands, name: str, run, help: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=textwrap.fill(description, 100), epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser


def _config_command(commands, name: str, help: str, description: str, sections: tuple[str, ...], entry: str) -> None:
    """A command that takes the config tree: --config, overrides, --address/--num-cpus, and the
    reference of its sections' keys in --help."""
    parser = _command(commands, name, functools.partial(_run_config_command, entry), help, description,
                      epilog=_keys_epilog(*sections))
    _add_common_options(parser)


def _run_config_command(entry: str, args: argparse.Namespace) -> int:
    """Load the config, then call `module:function(config, address=..., num_cpus=...)`, imported
    only now so that `--help` and config errors stay fast. A run that failed exits 1."""
    from raylm import storage

    config = load_config(args.config, args.overrides)
    storage.configure_s3(config.s3.endpoint_url, config.s3.region)
    module, function = entry.split(":")
    result = getattr(importlib.import_module(module), function)(config, address=args.address, num_cpus=args.num_cpus)
    return 1 if getattr(result, "error", None) is not None else 0


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file; KEY=VALUE overrides apply on top of it.")
    parser.add_argument("--address", metavar="ADDR",
                        help="Ray cluster to join (default: $RAY_ADDRESS, else start Ray embedded in this process).")
    parser.add_argument("--num-cpus", type=int, metavar="N",
                        help="CPUs of the embedded local Ray (default: all of this machine's).")
    _add_verbose(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Dotted config overrides, e.g. data.seq_len=512.")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="Also show Ray's own console output (worker logs, Ray Data progress); by default it goes "
                        "only to the Ray session's log folder. RAYLM_VERBOSE=1 does the same.")


def _run_evaluate(args: argparse.Namespace) -> int:
    from raylm.eval.evaluate import evaluate

    report = evaluate(args.checkpoint, args.inputs, workers=args.workers, address=args.address, num_cpus=args.num_cpus)
    if args.json:
        print(json.dumps(report))
        return 0
    scored_by = f"{report['workers']} Ray workers" if report["workers"] else "this process"
    print(f"checkpoint {report['checkpoint']}\ndata       {report['data']}: {report['tokens']} tokens, "
          f"{report['bytes']} bytes, scored by {scored_by}\n")
    print(f"{'':32}{'loss (nats/token)':>19}{'perplexity':>12}{'bits/byte':>11}")
    for name, row in (("model", report), ("unigram baseline (no training)", report["baseline"])):
        print(f"{name:32}{row['loss']:>19.4f}{row['perplexity']:>12.2f}{row['bits_per_byte']:>11.4f}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from raylm.demo import demo

    demo(args.output, quick=args.quick, num_cpus=args.num_cpus)
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    import torch

    from raylm.train.checkpoint import load_model
    from raylm.eval.generate import check_sampling, generate

    check_sampling(args.temperature, args.top_k, args.top_p)
    model, source = load_model(args.checkpoint)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    print(args.prompt, end="", flush=True)
    generate(model, source.tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_k=args.top_k, top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache,
             on_text=lambda piece: print(piece, end="", flush=True))
    print()
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from raylm.export.export import export

    export(args.run_dir, args.output, dtype=args.dtype, max_shard_size=args.max_shard_size)
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    from raylm.plan.plan import make_plan, read_node_type, render

    config = load_config(args.config, args.overrides)
    if args.node_type and not args.cluster:
        raise RaylmError("--node-type names a node type of a --cluster file: give both, e.g. "
                         "--cluster cluster/aws-gpu.yaml --node-type gpu-large")
    node = read_node_type(args.cluster, args.node_type) if args.cluster else None
    plan = make_plan(config, node)
    print(json.dumps(plan) if args.json else render(plan))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from raylm.report.report import write_report

    written = write_report(args.folder, args.output, **({"sample_tokens": 0} if args.no_sample else {}))
    print(f"report {written['markdown']}\nhtml   {written['html']}")
    for plot in written["plots"]:
        print(f"plot   {plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylm",
        description="LLM training on Ray: prepare data, pretrain, evaluate, fine-tune, tune.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _config_command(
        commands, "prepare",
        help="Clean, filter, deduplicate, split and tokenize raw text into packed Parquet shards.",
        description="Read data.sources (files, folders, globs, s3:// URIs; .txt/.md/code, .jsonl, .json, .parquet, "
        "optionally gzipped), clean, filter, deduplicate, split, train or load a BPE tokenizer, and write "
        "packed token shards, tokenizer.json, config.yaml and manifest.json to data.output.",
        sections=("data", "s3"), entry="raylm.data.prepare:prepare")
    _config_command(
        commands, "pretrain",
        help="Pretrain a GPT on prepared shards with Ray Train (DDP or FSDP2, CPU or GPU).",
        description="Train model.* on the prepared dataset train.data with train.workers Ray Train workers. The run "
        "folder <train.storage>/<train.name>/ holds config.yaml, tokenizer.json, metrics.jsonl, TensorBoard "
        "events and checkpoints; starting a run whose folder has checkpoints resumes it.",
        sections=("model", "train", "s3"), entry="raylm.train.trainer:pretrain")
    _config_command(
        commands, "finetune",
        help="Continue training a pretrained run on new data: full or LoRA, text or instruction pairs.",
        description="Start from the latest checkpoint of the run folder finetune.init, or from a Hugging Face model "
        "folder (Llama, Mistral, Qwen2; its model and tokenizer either way), and "
        "train on train.data (a folder prepared with data.tokenizer.path=<init>/tokenizer.json) or on the "
        "prompt/response JSONL files finetune.instructions (loss on responses only; finetune.format=chat renders "
        "them with the folder's chat template), with the same Ray Train "
        "path as pretrain. Validates before and after (<run>/finetune.json); a LoRA run also saves the merged "
        "model as <run>/merged/. The run is <train.storage>/<train.name> (default name: finetune).",
        sections=("finetune", "train", "data", "s3"), entry="raylm.finetune.finetune:finetune")
    _config_command(
        commands, "tune",
        help="Ray Tune search over any config keys (ASHA on validation loss) for pretrain or finetune.",
        description="Run tune.num_samples trials of tune.command, each a Ray Train run with the config plus a "
        "point of tune.search_space, stopping weak ones early with ASHA on tune.metric. The sweep folder "
        "<train.storage>/<tune.name>/ holds results.json, best-config.yaml (runs as is with "
        "`raylm pretrain --config`), and every trial's run folder and TensorBoard events under trials/.",
        sections=("tune", "train", "model", "finetune", "s3"), entry="raylm.tune.sweep:tune")

    plan = _command(
        commands, "plan", _run_plan,
        help="Before paying for GPUs: parameters, FLOPs, memory per GPU, fit, time and cost of a pretraining config.",
        description="From the config alone (no GPU, no Ray): parameters and FLOPs per token; memory per GPU (weights, "
        "gradients, AdamW moments, bf16 copies, activations with and without checkpointing, the loss) under DDP and "
        "under FSDP2 over train.workers GPUs; whether it fits the GPU and the largest micro-batch that does; step "
        "time and tokens/s at an MFU (plan.mfu, default the one measured in BENCHMARKS.md); wall time, GPU-hours "
        "and cost for train.max_tokens or train.max_steps; and Chinchilla's compute-optimal token count. The GPU "
        "is the --node-type's of a --cluster file (Ray cluster launcher or KubeRay YAML), else plan.gpu.",
        epilog=_keys_epilog("plan"))
    plan.add_argument("--config", metavar="FILE", help="YAML config file; KEY=VALUE overrides apply on top of it.")
    plan.add_argument("--cluster", metavar="FILE", help="Cluster YAML whose --node-type the run trains on, e.g. "
                      "cluster/aws-gpu.yaml; train.workers GPUs of it (train.workers' max for a [min, max] range).")
    plan.add_argument("--node-type", metavar="NAME", help="A GPU node type of --cluster, e.g. gpu-large.")
    plan.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
    plan.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="Dotted config overrides, e.g. model.preset=gpt2-124m train.max_tokens=10000000000.")

    evaluate = _command(
        commands, "evaluate", _run_evaluate,
        help="Held-out loss, perplexity and bits per byte of a run's latest checkpoint.",
        description="Score the latest checkpoint of a run folder, or a Hugging Face model folder, on a prepared "
        "dataset (its test split, else val) or on text files (tokenized with the model's tokenizer). Default: the "
        "run's own training data. Also "
        "reports a unigram baseline (the entropy of the scored tokens' frequencies): what a model that "
        "learned nothing beyond token frequencies would score.",
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="RUN",
                          help="Run folder (<train.storage>/<train.name>) or Hugging Face model folder, local or s3://.")
    evaluate.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
    evaluate.add_argument("--workers", type=int, metavar="N",
                          help="Score on Ray with N workers (default: in this process, or one worker per CPU "
                          "above 4096 windows).")
    evaluate.add_argument("--address", metavar="ADDR",
                          help="Ray cluster to join when scoring on Ray (default: $RAY_ADDRESS, else start Ray "
                          "embedded in this process).")
    evaluate.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the embedded local Ray (default: all).")
    _add_verbose(evaluate)
    evaluate.add_argument("inputs", nargs="*", metavar="PATH", help="A prepared folder, or text files.")

    report = _command(
        commands, "report", _run_report,
        help="A self-contained report (Markdown, HTML, PNG plots) of a run, a sweep or a prepared dataset.",
        description="Plot the metrics of a run folder (loss, learning rate, throughput, val bits per byte) or of a "
        "sweep folder (every trial's curves, final metric per trial), summarise the config, results and a sample "
        "from the latest checkpoint; or of a prepared folder (data.output): its splits, what was dropped and why "
        "with examples, the kept documents' lengths and the stage timings. Writes report.md, report.html (plots "
        "embedded) and the PNGs.",
    )
    report.add_argument("folder", metavar="RUN", help="Run folder (<train.storage>/<train.name>), sweep folder "
                        "(<train.storage>/<tune.name>, with results.json) or prepared folder (with manifest.json).")
    report.add_argument("--output", metavar="DIR", help="Where to write the report (default: RUN/report).")
    report.add_argument("--no-sample", action="store_true", help="Skip generating a text sample from the checkpoint.")

    export = _command(
        commands, "export", _run_export,
        help="A run's latest checkpoint as a Hugging Face model folder (transformers, vLLM, lm-eval, the Hub).",
        description="Write config.json (the family the run started from; else LlamaForCausalLM, or Qwen2ForCausalLM "
        "with qkv biases), safetensors weights (LoRA merged; sharded above --max-shard-size), the run's tokenizer "
        "files, "
        "generation_config.json and a model card. Runs with learned positions or GELU blocks are refused.",
    )
    export.add_argument("run_dir", metavar="RUN", help="Run folder (<train.storage>/<train.name>), local or s3://.")
    export.add_argument("--output", metavar="DIR", help="Folder to write, local or s3:// (default: RUN/hf).")
    export.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="Weight dtype (default: bfloat16).")
    export.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                        help="Largest safetensors file, e.g. 5GB or 200MB (default: 5GB, as the Hub).")

    generate = _command(
        commands, "generate", _run_generate,
        help="Sample text from a run's latest checkpoint.",
        description="Print the prompt and stream its continuation, sampled from the latest checkpoint of a run "
        "folder, or a Hugging Face model folder, until --max-new-tokens or the tokenizer's end-of-text token. An "
        "empty prompt starts a new document.",
    )
    generate.add_argument("--checkpoint", required=True, metavar="RUN",
                          help="Run folder (<train.storage>/<train.name>) or Hugging Face model folder, local or s3://.")
    generate.add_argument("--prompt", default="", metavar="TEXT", help="Text to continue (default: none).")
    generate.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="Tokens to generate at most (default: 200).")
    generate.add_argument("--temperature", type=float, default=0.8, metavar="T",
                          help="Softmax temperature; 0 is greedy (default: 0.8).")
    generate.add_argument("--top-k", type=int, default=50, metavar="K",
                          help="Sample from the K most likely tokens; 0 is off (default: 50).")
    generate.add_argument("--top-p", type=float, default=0.95, metavar="P",
                          help="Sample from the fewest most likely tokens whose probabilities add up to P; 1 is off "
                          "(default: 0.95).")
    generate.add_argument("--seed", type=int, default=0, metavar="S", help="Sampling seed: the same seed, the same text (default: 0).")
    generate.add_argument("--no-cache", action="store_true",
                          help="Recompute the whole context for every token instead of using the KV cache (slower; for checking).")

    demo = _command(
        commands, "demo", _run_demo,
        help="The whole path on this machine's Python standard library, with an embedded Ray, in minutes.",
        description="Prepare the Python standard library found on this machine (no download), pretrain a small model "
        "for a few minutes, evaluate it on held-out files, generate a sample, run a small ASHA sweep over learning "
        "rate and width, fine-tune with LoRA on docstring -> body pairs, and write the reports; prints where "
        "everything went. About 9 minutes on 2 cores; --quick runs every stage at toy size.",
    )
    demo.add_argument("--output", default="demo", metavar="DIR", help="Folder for everything the demo writes (default: ./demo; replaced).")
    demo.add_argument("--quick", action="store_true", help="Every stage at toy size (a couple of minutes on 2 cores).")
    demo.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the embedded Ray (default: all of this machine's).")
    _add_verbose(demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        os.environ["RAYLM_VERBOSE"] = "1"
    try:
        return args.run(args)
    except RaylmError as err:
        print(f"raylm: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except Exception as err:
        from ray.train import TrainingFailedError

        if not isinstance(err, TrainingFailedError):
            raise
        # Ray Train's error carries the workers' tracebacks; the first lines say what failed.
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        print(f"raylm: error: training failed: {redact(first)}\n{redact(_last_traceback_line(str(err)))}", file=sys.stderr)
        return 1


def _last_traceback_line(text: str) -> str:
    """The exception line a traceback ends with ('ValueError: ...')."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if ":" in line and not line.startswith("File ")), lines[-1] if lines else "")


def console(argv: list[str] | None = None) -> None:
    """The `raylm` command: `main()`, then Ray stopped (when this process started it) and the
    interpreter left without its final garbage collection, which takes a second over the
    objects torch, Ray and pydantic leave (1.2 s -> 0.2 s measured here); nothing of ours waits
    on a finalizer."""
    code = main(argv)
    from raylm import runtime

    runtime.shutdown()
    sys.stdout.flush()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
