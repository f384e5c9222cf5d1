"""`raylm <command> [--config FILE] [KEY=VALUE ...]`: the command line over the library."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from raylm.config import DataConfig, ModelConfig, TrainConfig, describe_keys, load_config
from raylm.errors import RaylmError


def _keys_epilog(model, prefix: str) -> str:
    lines = ["config keys (set in the YAML file or as KEY=VALUE; lists in flow style, e.g. data.sources=[a,b]):"]
    for key, default, description in describe_keys(model, prefix):
        lines.append(f"  {key} = {'(from the preset)' if default is ... else json.dumps(default)}")
        lines.extend(textwrap.wrap(description, 96, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file; KEY=VALUE overrides apply on top of it.")
    parser.add_argument("--address", metavar="ADDR",
                        help="Ray cluster to join (default: $RAY_ADDRESS, else start Ray embedded in this process).")
    parser.add_argument("--num-cpus", type=int, metavar="N",
                        help="CPUs of the embedded local Ray (default: all of this machine's).")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Dotted config overrides, e.g. data.seq_len=512.")


def _run_prepare(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from raylm.data.prepare import prepare

    prepare(config, address=args.address, num_cpus=args.num_cpus)
    return 0


def _run_pretrain(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from raylm.train.trainer import pretrain

    result = pretrain(config, address=args.address, num_cpus=args.num_cpus)
    return 0 if result.error is None else 1


def _run_evaluate(args: argparse.Namespace) -> int:
    from raylm.eval.evaluate import evaluate

    report = evaluate(args.checkpoint, args.inputs)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"checkpoint {report['checkpoint']}\ndata       {report['data']}")
        print(f"loss {report['loss']:.4f} nats/token | perplexity {report['perplexity']:.2f} | "
              f"bits/byte {report['bits_per_byte']:.4f} | {report['tokens']} tokens, {report['bytes']} bytes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylm",
        description="LLM training on Ray: prepare data, pretrain, evaluate, fine-tune, tune.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prepare = commands.add_parser(
        "prepare",
        help="Clean, filter, deduplicate, split and tokenize raw text into packed Parquet shards.",
        description=textwrap.fill(
            "Read data.sources (files, folders, globs, s3:// URIs; .txt/.md/code, .jsonl, .json, .parquet, "
            "optionally gzipped), clean, filter, deduplicate, split, train or load a BPE tokenizer, and write "
            "packed token shards, tokenizer.json, config.yaml and manifest.json to data.output.", 100),
        epilog=_keys_epilog(DataConfig, "data."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common_options(prepare)
    prepare.set_defaults(run=_run_prepare)

    pretrain = commands.add_parser(
        "pretrain",
        help="Pretrain a GPT on prepared shards with Ray Train (DDP or FSDP2, CPU or GPU).",
        description=textwrap.fill(
            "Train model.* on the prepared dataset train.data with train.workers Ray Train workers. The run "
            "folder <train.storage>/<train.name>/ holds config.yaml, tokenizer.json, metrics.jsonl, TensorBoard "
            "events and checkpoints; starting a run whose folder has checkpoints resumes it.", 100),
        epilog=_keys_epilog(ModelConfig, "model.") + "\n" + _keys_epilog(TrainConfig, "train.").split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common_options(pretrain)
    pretrain.set_defaults(run=_run_pretrain)

    evaluate = commands.add_parser(
        "evaluate",
        help="Held-out loss, perplexity and bits per byte of a run's latest checkpoint.",
        description="Score the latest checkpoint of a run folder on a prepared dataset (its test split, else val) "
        "or on text files (tokenized with the run's tokenizer). Default: the run's own training data.",
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="RUN", help="Run folder (<train.storage>/<train.name>).")
    evaluate.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
    evaluate.add_argument("inputs", nargs="*", metavar="PATH", help="A prepared folder, or text files.")
    evaluate.set_defaults(run=_run_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except RaylmError as err:
        print(f"raylm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
