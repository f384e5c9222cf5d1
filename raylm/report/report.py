"""`raylm report`: one self-contained page about a run, a sweep or a prepared dataset — report.md, report.html (plots
embedded, so it can be mailed or attached as is) and the PNG plots.

The page is assembled once as a list of blocks (headings, text, tables, plots, code) and rendered
twice, so the Markdown and the HTML always say the same thing. Every path goes through
raylm.storage: the run, the sweep and the output folder may be local or on S3.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylm import storage
from raylm.config import Config, run_config
from raylm.data.manifest import has_manifest, read_manifest
from raylm.errors import RaylmError
from raylm.report import plots
from raylm.train.metrics import METRICS, read_metrics, si_number

SAMPLE_SETTINGS = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}
FINETUNE_METRICS = [("loss", "loss (nats/token)"), ("perplexity", "perplexity"), ("bits_per_byte", "bits per byte")]


# ------------------------------------------------------------------------------------ blocks


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str


@dataclass
class Table:
    rows: list[list[str]]
    header: list[str] | None = None  # None: a two-column key/value table


@dataclass
class Plot:
    filename: str
    png: bytes
    caption: str


@dataclass
class Code:
    text: str


Block = Heading | Text | Table | Plot | Code


# -------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    folder: str
    config: Config
    records: list[dict]  # one per logged step, in step order
    finetune: dict | None  # {"before": evaluate report, "after": evaluate report} of a fine-tuning run

    @property
    def name(self) -> str:
        return self.config.train.name

    def last(self, key: str) -> dict | None:
        """The latest record that logged `key`."""
        return next((r for r in reversed(self.records) if r.get(key) is not None), None)


def read_run(run_dir: str) -> Run:
    records = read_metrics(run_dir)
    if not records:
        raise RaylmError(f"{storage.join(run_dir, METRICS)} is missing or empty: report the run once it has logged a "
                         "step (train.log_every)")
    config = run_config(run_dir)
    finetune_path = storage.join(run_dir, "finetune.json")
    finetune = json.loads(storage.read_bytes(finetune_path)) if storage.exists(finetune_path) else None
    return Run(run_dir, config, records, finetune)


def count_params(config: Config) -> int:
    """Counted on a model built on the meta device: no memory, no initialisation, any size."""
    import torch

    from raylm.model.gpt import GPT

    with torch.device("meta"):
        return GPT(config.model).num_params()


def _workers(worker_range: tuple[int, int]) -> str:
    low, high = worker_range
    return f"{low}" if low == high else f"{low}-{high}"


def summary_table(run: Run) -> Table:
    from raylm.train.metrics import duration

    model, train = run.config.model, run.config.train
    params = count_params(run.config)
    rows = [
        ["run", run.name],
        ["folder", run.folder],
        ["model", f"preset {model.preset}: {model.n_layer} layers, {model.n_head} heads, {model.n_embd} wide, "
                  f"context {model.block_size} tokens, vocabulary {model.vocab_size}"],
        ["parameters", f"{params:,} ({si_number(params)})"],
        ["data", train.data],
        ["optimisation", f"lr {train.lr:g}, {train.schedule} schedule, {train.warmup_steps} warmup steps, "
                         f"{_workers(train.worker_range)} workers x {train.batch_size} sequences"],
        ["steps", f"{run.records[-1]['step']:,}"],
    ]
    if tokens := run.last("tokens"):
        rows.append(["tokens seen", f"{tokens['tokens']:,} ({si_number(tokens['tokens'])})"])
    if timed := run.last("train_seconds"):
        rows.append(["training wall time", duration(timed["train_seconds"])])
    if train_loss := run.last("loss"):
        rows.append(["final train loss", f"{train_loss['loss']:.4f} (step {train_loss['step']:,})"])
    if val := run.last("val_loss"):
        rows.append(["final val loss", f"{val['val_loss']:.4f}, perplexity {val['val_ppl']:.2f}, "
                                       f"{val['val_bpb']:.4f} bits/byte (step {val['step']:,})"])
    return Table(rows)


def _evaluated_at(report: dict) -> str:
    """A checkpoint (an evaluate report) or a step (one of the run's own validations)."""
    return report.get("checkpoint") or f"step {report['step']:,}"


def finetune_blocks(finetune: dict) -> list[Block]:
    before, after = finetune["before"], finetune["after"]
    rows = [[label, f"{before[key]:.4f}", f"{after[key]:.4f}",
             f"{after[key] - before[key]:+.4f} ({(after[key] / before[key] - 1) * 100:+.1f}%)"]
            for key, label in FINETUNE_METRICS]
    scored_on = f" on {after['data']}" if "data" in after else ""
    return [
        Heading(2, "Fine-tuning: before vs after"),
        Text(f"Scored{scored_on}: before at {_evaluated_at(before)}, after at {_evaluated_at(after)}."),
        Table(rows, ["", "before", "after", "change"]),
    ]


def run_plots(run: Run) -> list[Plot]:
    logged = {key for record in run.records for key, value in record.items() if value is not None}
    found = [Plot("loss.png", plots.loss_plot(run.records), "Train loss per step and val loss at each evaluation")]
    if "lr" in logged:
        found.append(Plot("lr.png", plots.lr_plot(run.records), "Learning rate schedule"))
    if "tokens_per_s" in logged:
        found.append(Plot("throughput.png", plots.throughput_plot(run.records), "Training throughput"))
    if "val_bpb" in logged:
        found.append(Plot("val_bpb.png", plots.val_bpb_plot(run.records),
                          "Validation bits per byte (comparable across tokenizers)"))
    return found


def sample_blocks(run: Run, sample_tokens: int, log) -> list[Block]:
    """Text generated from the latest checkpoint from an empty prompt, i.e. the start of a new
    document, so nothing but the training data steers it."""
    import torch

    from raylm.train.checkpoint import load_model
    from raylm.eval.generate import generate
    from raylm.train.checkpoint import latest_complete

    if latest_complete(run.folder) is None:
        return [Text("No checkpoint to sample from yet.")]
    model, source = load_model(run.folder)
    checkpoint = source.checkpoint
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    log(f"sampling {sample_tokens} tokens from {checkpoint}")
    text = generate(model, source.tokenizer, "", max_new_tokens=sample_tokens, seed=0, **SAMPLE_SETTINGS)
    settings = ", ".join(f"{key} {value}" for key, value in SAMPLE_SETTINGS.items())
    return [Text(f"Up to {sample_tokens} tokens from {checkpoint}, starting a new document; {settings}, seed 0."),
            Code(text)]


def run_report(run_dir: str, sample_tokens: int, log) -> tuple[str, list[Block]]:
    run = read_run(run_dir)
    title = f"Run report: {run.name}"
    blocks: list[Block] = [Heading(1, title), Text(_generated()), Heading(2, "Summary"), summary_table(run)]
    if run.finetune:
        blocks += finetune_blocks(run.finetune)
    blocks += [Heading(2, "Plots"), *run_plots(run)]
    if sample_tokens:
        blocks += [Heading(2, "Sample"), *sample_blocks(run, sample_tokens, log)]
    return title, blocks


# ------------------------------------------------------------------------------------ sweeps


def _params_text(params: dict) -> str:
    return ", ".join(f"{key}={_cell(value)}" for key, value in params.items())


def trial_folder(sweep_dir: str, trial: dict) -> str:
    """The trial's run folder: its copy under the sweep's trials/ (which still holds after the
    sweep folder is moved or downloaded), else where results.json says it ran."""
    beside = storage.join(sweep_dir, "trials", trial["name"])
    return beside if storage.exists(beside) else trial["run"]


def trials_table(results: dict) -> Table:
    trials, best, metric = results["trials"], results["best"], results["metric"]
    param_keys = list(dict.fromkeys(key for trial in trials for key in trial["params"]))
    unscored = float("inf") if results["mode"] == "min" else float("-inf")
    ranked = sorted(trials, key=lambda t: unscored if t["metric"] is None else t["metric"],
                    reverse=results["mode"] == "max")
    rows = [[t["name"] + (" (best)" if t["name"] == best else ""),
             *(_cell(t["params"].get(key)) for key in param_keys), _metric(t["metric"]), _cell(t["steps"]), t["status"]]
            for t in ranked]
    return Table(rows, ["trial", *param_keys, metric, "steps", "status"])


def _cell(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metric(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def sweep_summary(sweep_dir: str, results: dict) -> Table:
    trials, best, metric = results["trials"], results["best"], results["metric"]
    statuses = ", ".join(f"{sum(t['status'] == s for t in trials)} {s.lower().replace('_', ' ')}"
                         for s in dict.fromkeys(t["status"] for t in trials))
    rows = [["folder", sweep_dir], ["trials", f"{len(trials)} ({statuses})"],
            ["objective", f"{'lowest' if results['mode'] == 'min' else 'highest'} {metric}"]]
    best_trial = next((t for t in trials if t["name"] == best), None)
    if best_trial is None:
        rows.append(["best trial", f"none: no trial reported {metric}"])
    else:
        found = f"{best}: {metric} {_metric(best_trial['metric'])} with {_params_text(best_trial['params'])}"
        rows += [["best trial", found], ["best config", storage.join(sweep_dir, "best-config.yaml")]]
    return Table(rows)


def sweep_report(sweep_dir: str, sample_tokens: int, log) -> tuple[str, list[Block]]:
    results = json.loads(storage.read_bytes(storage.join(sweep_dir, "results.json")))
    trials, best, metric, mode = results["trials"], results["best"], results["metric"], results["mode"]
    runs = {}
    for trial in trials:
        try:
            runs[trial["name"]] = read_run(trial_folder(sweep_dir, trial))
        except RaylmError as err:
            log(f"{trial['name']}: no curves ({err})")
    title = f"Sweep report: {storage.parent_and_name(sweep_dir)[1]}"
    blocks: list[Block] = [Heading(1, title), Text(_generated()),
                           Heading(2, "Summary"), sweep_summary(sweep_dir, results),
                           Heading(2, "Trials"), trials_table(results),
                           Heading(2, "Plots")]
    if runs:
        best_params = next((_params_text(t["params"]) for t in trials if t["name"] == best), "")
        curves = plots.sweep_curves_plot([(name, run.records) for name, run in runs.items()], best,
                                         f"{best} (best): {best_params}", metric)
        blocks.append(Plot("sweep-curves.png", curves, f"{metric} and train loss of every trial; the best in red"))
    if any(t["metric"] is not None for t in trials):
        finals = plots.sweep_final_plot(trials, best, metric, mode)
        blocks.append(Plot("sweep-final.png", finals, f"Final {metric} per trial"))
    if best in runs:
        blocks += [Heading(2, f"Best trial: {best}"), summary_table(runs[best])]
        if sample_tokens:
            blocks += [Heading(3, "Sample"), *sample_blocks(runs[best], sample_tokens, log)]
    return title, blocks


# ---------------------------------------------------------------------------- prepared data

EXAMPLES_PER_REASON = 3
SAMPLE_DOCUMENTS = 2000  # kept documents whose lengths the histograms show, from the first train shards


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.2f}"


def kept_document_lengths(folder: str, manifest: dict) -> tuple[list[int], list[int]]:
    """Tokens and UTF-8 bytes of up to SAMPLE_DOCUMENTS kept training documents: a shard's windows
    are one stream that starts at a document (one shard per batch), so its documents are the runs
    between end-of-text tokens, less the last, which the shard cuts off."""
    from raylm.data.pack import windows_array
    from raylm.data.tokenizer import TokenizerFiles

    codec = TokenizerFiles.read(folder).codec
    eos = manifest["tokenizer"]["eos_id"]
    tokens, nbytes = [], []
    for shard in manifest["splits"]["train"]["shards"]:
        if len(tokens) >= SAMPLE_DOCUMENTS or shard.endswith("tail.parquet"):
            continue
        fs, inner = storage.filesystem(storage.join(folder, shard))
        stream = windows_array(pq.read_table(inner, filesystem=fs).column("tokens")).ravel()
        ends = np.flatnonzero(stream == eos)
        for start, end in zip(np.concatenate([[0], ends[:-1] + 1]), ends):
            if end > start and len(tokens) < SAMPLE_DOCUMENTS:
                tokens.append(int(end - start))
                nbytes.append(len(codec.decode(stream[start:end].tolist()).encode()))
    return tokens, nbytes


def dropped_examples(folder: str, limit: int = EXAMPLES_PER_REASON) -> dict[str, list[dict]]:
    """The first few dropped documents of each reason, from the rejected/ ledger."""
    examples: dict[str, list[dict]] = {}
    fs, inner = storage.filesystem(storage.join(folder, "rejected"))
    files = sorted(e.path for e in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
                   if e.path.endswith(".parquet"))
    for path in files:
        for row in pq.read_table(path, filesystem=fs).to_pylist():
            if len(examples.setdefault(row["reason"], [])) < limit:
                examples[row["reason"]].append(row)
    return examples


def prepared_report(folder: str) -> tuple[str, list[Block]]:
    """What `raylm prepare` read, kept and dropped, and how long each stage took."""
    manifest = read_manifest(folder)
    documents, splits, tokenizer = manifest["documents"], manifest["splits"], manifest["tokenizer"]
    title = f"Data report: {storage.parent_and_name(folder)[1]}"
    summary = Table([
        ["files", f"{manifest['files']['read']:,} read ({_megabytes(manifest['files']['bytes'])} MB)"
                  + (f", skipped {manifest['files']['skipped']}" if manifest["files"]["skipped"] else "")],
        ["documents", f"{documents['read']:,} read, {documents['kept']:,} kept, "
                      f"{sum(documents['dropped'].values()):,} dropped"],
        ["dedup", f"{manifest['dedup']['exact']:,} exact and {manifest['dedup']['near']:,} near duplicates removed"],
        ["lines removed", f"{manifest['lines_removed']:,} ({_megabytes(manifest['lines_removed_bytes'])} MB) by the "
                          "C4 line rules"],
        ["tokenizer", f"{tokenizer['vocab_size']:,} tokens, {'trained on this data' if tokenizer['trained'] else 'given'}, "
                      f"end of text {tokenizer.get('eos_token', '<|endoftext|>')}"],
        ["windows", f"{manifest['seq_len'] + 1} tokens (seq_len {manifest['seq_len']}), {manifest['dtype']}"],
        ["prepared", f"{manifest['created']}, in {manifest.get('wall_seconds', 0):.1f} s"],
    ])
    split_rows = [[name, f"{s['documents']:,}", _megabytes(s["bytes"]), f"{s['tokens']:,}", f"{s['sequences']:,}",
                   f"{len(s['shards'])}"] for name, s in splits.items()]
    blocks: list[Block] = [Heading(1, title), Text(_generated()), Heading(2, "Summary"), summary,
                           Heading(2, "Splits"),
                           Table(split_rows, ["split", "documents", "MB", "tokens", "windows", "shards"])]
    dropped = documents["dropped"]
    blocks.append(Heading(2, "What was dropped"))
    if dropped:
        blocks.append(Plot("drop-reasons.png", plots.drop_reasons_plot(dropped, documents["dropped_bytes"]),
                           "Documents dropped per reason (and their megabytes)"))
        for reason, rows in dropped_examples(folder).items():
            blocks += [Heading(3, f"{reason} ({dropped.get(reason, 0):,} documents)"),
                       Table([[row["file"], f"{row['index']:,}", (row.get("head") or "").strip()[:200] or "(no text)"]
                              for row in rows], ["file", "index", "first characters"])]
    else:
        blocks.append(Text("Nothing: every document read was kept."))
    tokens, nbytes = kept_document_lengths(folder, manifest)
    if tokens:
        blocks += [Heading(2, "What was kept"),
                   Plot("document-lengths.png", plots.document_lengths_plot(tokens, nbytes),
                        f"Lengths of {len(tokens):,} kept training documents (from the first train shards)")]
    stage_rows = [[stage, f"{s['busy_seconds']:.2f}", f"{s['documents']:,}", _megabytes(s["bytes"]),
                   f"{s['mb_per_busy_second'] or 0:.1f}"] for stage, s in manifest.get("stages", {}).items()]
    blocks += [Heading(2, "Stages"),
               Table(stage_rows, ["stage", "busy seconds (all workers)", "documents", "MB", "MB per busy second"]),
               Table([[phase, f"{seconds:.2f}"] for phase, seconds in manifest.get("phases_seconds", {}).items()],
                     ["phase", "wall seconds"])]
    return title, blocks


# --------------------------------------------------------------------------------- rendering


def _generated() -> str:
    return f"Generated by raylm report on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC."


def _markdown_cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        match block:
            case Heading(level, text):
                parts.append(f"{'#' * level} {text}")
            case Text(text):
                parts.append(text)
            case Table(rows, header):
                lines = [header or ["", ""], ["---"] * len(header or ["", ""]), *rows]
                parts.append("\n".join("| " + " | ".join(map(_markdown_cell, line)) + " |" for line in lines))
            case Plot(filename, _, caption):
                parts.append(f"![{caption}]({filename})")
            case Code(text):
                # A fence longer than any run of backticks in the text, so none can close it early.
                fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", text)), default=0))
                parts.append(f"{fence}text\n{text}\n{fence}")
    return "\n\n".join(parts) + "\n"


CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1000px; margin: 2rem auto; padding: 0 1rem; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #d0d7de; padding: .35rem .7rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
figure { margin: 1.5rem 0; }
img { max-width: 100%; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 13px; }
pre { background: #f6f8fa; padding: 1rem; white-space: pre-wrap; border-radius: 6px; }
"""


def _html_row(cells: list[str], tags: list[str]) -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(cell)}</{tag}>" for tag, cell in zip(tags, cells)) + "</tr>"


def _html_table(table: Table) -> str:
    if table.header:
        lines = [_html_row(table.header, ["th"] * len(table.header)),
                 *(_html_row(row, ["td"] * len(row)) for row in table.rows)]
    else:  # key/value: the key heads its row
        lines = [_html_row(row, ["th", "td"]) for row in table.rows]
    return "<table>" + "".join(lines) + "</table>"


def render_html(title: str, blocks: list[Block]) -> str:
    body = []
    for block in blocks:
        match block:
            case Heading(level, text):
                body.append(f"<h{level}>{html.escape(text)}</h{level}>")
            case Text(text):
                body.append(f"<p>{html.escape(text)}</p>")
            case Table():
                body.append(_html_table(block))
            case Plot(_, png, caption):
                data = base64.b64encode(png).decode()
                body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            case Code(text):
                body.append(f"<pre>{html.escape(text)}</pre>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------- entry point


def write_report(folder: str, output: str | None = None, sample_tokens: int = 120, log=print) -> dict:
    """Write report.md, report.html and the plots of a run or sweep folder into `output` (default
    `<folder>/report`); returns their paths. `sample_tokens=0` skips the generated sample."""
    folder = storage.absolute(folder).rstrip("/")
    output = storage.absolute(output) if output else storage.join(folder, "report")
    if storage.exists(storage.join(folder, "results.json")):
        title, blocks = sweep_report(folder, sample_tokens, log)
    elif storage.exists(storage.join(folder, METRICS)):
        title, blocks = run_report(folder, sample_tokens, log)
    elif has_manifest(folder):
        title, blocks = prepared_report(folder)
    else:
        raise RaylmError(f"{folder} is no run folder (no metrics.jsonl), sweep folder (no results.json) or prepared "
                         "folder (no manifest.json): pass <train.storage>/<train.name> of a run that has logged a step, "
                         "<train.storage>/<tune.name>, or a data.output")
    written_plots = []
    for block in blocks:
        if isinstance(block, Plot):
            written_plots.append(storage.join(output, block.filename))
            storage.write_bytes(written_plots[-1], block.png)
    markdown, page = storage.join(output, "report.md"), storage.join(output, "report.html")
    storage.write_bytes(markdown, render_markdown(blocks).encode())
    storage.write_bytes(page, render_html(title, blocks).encode())
    return {"markdown": markdown, "html": page, "plots": written_plots}
