"""`mops`: train one plan, describe a plan, fetch data, sweep plans, report results.

The command line is the composition root: it reaches the trainer (multitask) and the harness
(bench); nothing imports it. Training options come from TrainConfig's fields (mops.options).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tabulate import tabulate

from mops.bench.advise import advise, parse_budget
from mops.bench.demo import DEMO_PLANS, DEMO_RESULTS, DEMO_TRAIN
from mops.bench.memory import MemorySampler
from mops.bench.report import report
from mops.bench.sweep import GRID_FIELDS, SET_BY_SWEEP, SweepConfig, run_sweep, shard_results_path, sweep_from_args
from mops.common.machine import device_name
from mops.kernels.dispatch import device_rows
from mops.multitask.data.download import SOURCES, DownloadError, download
from mops.multitask.data.examples import DataError
from mops.multitask.data.tasks import TASK_NAMES
from mops.multitask.sharing.accounting import account
from mops.multitask.training.assembly import assemble
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.devices import init_distributed_from_env, resolve_device
from mops.multitask.training.export import export_task
from mops.multitask.training.precision import resolve_precision
from mops.multitask.training.prediction import predict
from mops.multitask.training.prefix_cache import describe_cache
from mops.multitask.training.trainer import Trainer
from mops.options import add_config_options, comma_list, config_settings, flag_of, positive

# ---- commands ---------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    config = TrainConfig(**config_settings(args))
    init_distributed_from_env(config.device)
    try:
        trainer = Trainer(config, memory_sampler=MemorySampler)
        record = trainer.train(fresh=args.fresh)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.already_finished:
        print(f"{config.out_dir} already holds this run, its budget spent: nothing trained, its record kept "
              "(--fresh trains it again)")
    if record and config.progress and not dist.is_initialized():
        metrics = "  ".join(f"{k} {v:.3f}" for k, v in record["metrics"].items())
        print(f"dev: {metrics}")
        print(f"results: {Path(config.out_dir) / 'results.json'}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    config = TrainConfig(**config_settings(args))
    run = assemble(config, data="demo")  # the demo corpus has every task's shape and loads at once
    plan = run.parse(args.plan)
    model = run.model(plan)
    precision = resolve_precision(config.precision, resolve_device(config.device))
    length = args.length or config.max_length
    prediction = predict(model, config.batch_size, length, precision, config.backend, args.examples)
    if args.json:
        print(json.dumps({"plan": str(plan), "tasks": config.tasks, **prediction.as_dict()}, indent=2))
        return 0
    print(plan.describe())
    if config.pooling != "pooler":
        print(f"pooling: {config.pooling} (no weights), in place of the pooler row above")
    print("\n" + account(model.parameters()).describe())
    print(describe_cache(plan, run.encoder.config.hidden_size, args.examples, args.mean_length))
    print("\n" + prediction.describe(precision.device_type))
    return 0


def _sweep_config(args: argparse.Namespace, demo: bool) -> SweepConfig:
    train = config_settings(args)
    if demo:
        return sweep_from_args(plans=args.plans or DEMO_PLANS, train={**DEMO_TRAIN, **train}, results=args.results)
    base = SweepConfig.from_file(args.config) if args.config else None
    split = lambda text, cast=str: [cast(x) for x in text.split(",") if x]  # noqa: E731
    task_list = comma_list("tasks", TASK_NAMES)
    return sweep_from_args(
        plans=split(args.plans) if args.plans else None,
        checkpoints=split(args.checkpoints) if args.checkpoints else None,
        widths=split(args.widths, int) if args.widths else None,
        task_sets=[task_list(s) for s in args.task_sets.split(";")] if args.task_sets else None,
        seeds=split(args.seeds, int) if args.seeds else None,
        train=train, results=args.results, base=base,
    )


def cmd_sweep(args: argparse.Namespace, demo: bool = False) -> int:
    sweep = _sweep_config(args, demo)
    results = run_sweep(sweep, shard=args.shard, progress=not args.quiet)
    plot_dir = args.plot_dir or str(Path(sweep.results).parent)
    files = [str(results)] if args.shard else [str(shard_results_path(sweep.results, (0, 1)))]
    print(report(files, plot_dir=plot_dir))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(report(args.files, plot_dir=args.plot_dir, fmt=args.format))
    return 0


def _task_values(values: list[str] | None, flag: str) -> dict[str, str]:
    """`--flag TASK=VALUE` options as {task: value}."""
    out = {}
    for value in values or []:
        task, sep, rest = value.partition("=")
        if not sep or task not in SOURCES or not rest:
            raise DownloadError(f"{flag} wants TASK=VALUE with TASK one of {', '.join(SOURCES)}, not {value!r}")
        out[task] = rest
    return out


def cmd_data_download(args: argparse.Namespace) -> int:
    """Prints what was written; a failed download is one line on stderr and exit status 1."""
    try:
        manifest = download(
            args.dir,
            tasks=args.tasks,
            base_urls=_task_values(args.base_url, "--base-url"),
            progress=not args.no_progress,
            expected_sha256=_task_values(args.sha256, "--sha256"),
        )
    except (DownloadError, DataError) as err:
        print(f"mops data download: {err}", file=sys.stderr)
        return 1
    for name, record in sorted(manifest.files.items()):
        rows = f"{record.rows:,} rows" if record.rows is not None else record.source
        skipped = f", {record.skipped:,} malformed source lines skipped" if record.skipped else ""
        print(f"{args.dir / name}: {rows}{skipped}")
    for note in manifest.notes:
        print(f"note: {note}")
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    """What `backend="auto"` runs per op on a GPU, and the measurement behind each choice."""
    name = args.device_name or (device_name() if torch.cuda.is_available() else None)
    rows = device_rows(name)
    print(f"backend='auto' on {name or 'the CPU'}:")
    table = [[r["op"], r["backend"], "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
              r["group"] or "-", r["source"] or "-"] for r in rows]
    print(tabulate(table, headers=["op", "runs", "Triton / PyTorch speed", "measured on", "from"], tablefmt="github"))
    notes = sorted({r["note"] for r in rows if r["note"]})
    for note in notes:
        print(f"note: {note}")
    return 0


ADVISE_SETS = ("plan", "hidden_size", "num_layers", "stop_at", "eval_every", "out_dir", "progress")


def cmd_advise(args: argparse.Namespace) -> int:
    """Predict, shortlist and probe plans for a memory budget; print the ranking and the command to run."""
    advice = advise(config_settings(args), parse_budget(args.budget), args.candidates, args.groups, args.results,
                    args.probe_steps)
    print(advice.table)
    command = ["mops", "train", "--plan", advice.best, *[part for name, value in advice.settings.items()
                                                          for part in _flag_and_value(name, value)]]
    print(f"\nrecommended: {advice.best}\n  {' '.join(command)}")
    if advice.alike:
        print(f"not probed, alike in predicted peak and capacity (the split of tasks can still move the score): "
              f"{', '.join(advice.alike)}")
    return 0


def _flag_and_value(name: str, value) -> list[str]:
    flag = flag_of(name)
    if isinstance(value, bool):
        return [flag] if name == "progress" and not value else ([f"--{'' if value else 'no-'}{flag[2:]}"])
    return [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]


def cmd_export(args: argparse.Namespace) -> int:
    """One task's encoder of a run as a standard BERT folder, and its head beside it."""
    exported = export_task(args.run_dir, args.task, args.out_dir)
    print(f"{exported.out_dir}: {args.task}'s encoder from {exported.source} (step {exported.step}): "
          f"{', '.join(exported.files)}")
    return 0


# ---- the parser -------------------------------------------------------------------------------


def _training_group(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    group = parser.add_argument_group("training", "TrainConfig settings; each one left out keeps its default")
    add_config_options(group, exclude=(*GRID_FIELDS, *SET_BY_SWEEP) if sweep else ())


def _add_sweep_output(parser: argparse.ArgumentParser, results_default: str | None) -> None:
    parser.add_argument("--results", default=results_default, help="JSONL file the runs are appended to")
    parser.add_argument("--shard", default=None, help="i/n: run every n-th run of the grid starting at i")
    parser.add_argument("--plot-dir", default=None, help="where pareto.png and curves.png go (default: beside results)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mops", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (checkpoint loading, skipped rows)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the main job on the embedded default: a six-plan sweep on the demo corpus")
    demo.add_argument("--plans", type=lambda s: s.split(","), default=None, help="comma-separated plans")
    _add_sweep_output(demo, DEMO_RESULTS)
    _training_group(demo, sweep=True)
    demo.set_defaults(handler=lambda a: cmd_sweep(a, demo=True))

    train = commands.add_parser("train", help="train one sharing plan on one or more tasks")
    train.add_argument("--fresh", action="store_true", help="start over even if the run folder has a checkpoint")
    _training_group(train)
    train.set_defaults(handler=cmd_train)

    plan = commands.add_parser("plan", help="show what a sharing plan builds and what it costs in memory")
    plan.add_argument("plan", help="e.g. FFSSII, F2S2I2, F2S2[sst+para|sts]2")
    add_config_options(plan, only=("tasks", "checkpoint"))
    plan.add_argument("--examples", type=positive(int), default=None,
                      help="training + dev examples, to size the frozen-prefix cache (a siamese pair counts twice)")
    plan.add_argument("--mean-length", type=positive(float), default=32.0, help="mean tokens per example (default: 32)")
    add_config_options(plan, only=("batch_size", "precision", "backend", "pair_encoding", "pooling", "cosine_tasks",
                                   "device", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets"))
    plan.add_argument("--length", type=positive(int), default=None,
                      help="padded tokens per example (a joint pair's; default: --max-length's default, 128)")
    plan.add_argument("--json", action="store_true", help="print the prediction as one JSON object")
    plan.set_defaults(handler=cmd_plan)

    sweep = commands.add_parser("sweep", help="train a grid of plans x widths x task sets x seeds, one process each")
    sweep.add_argument("--config", help="TOML file with sweep settings; command-line values override it")
    sweep.add_argument("--plans", default=None, help="comma-separated plans, e.g. FFFFFF,F2S2I2,SSSSSS")
    sweep.add_argument("--checkpoints", default=None, help="comma-separated checkpoint folders or names")
    sweep.add_argument("--widths", default=None, help="comma-separated hidden sizes of random encoders")
    sweep.add_argument("--task-sets", default=None, help="task sets separated by ';', e.g. 'sst,para,sts;sst'")
    sweep.add_argument("--seeds", default=None, help="comma-separated seeds")
    _add_sweep_output(sweep, None)
    _training_group(sweep, sweep=True)
    sweep.set_defaults(handler=cmd_sweep)

    reporting = commands.add_parser("report", help="tables and plots from sweep JSONL files or pytest-benchmark JSON")
    reporting.add_argument("files", nargs="+", help="JSONL results (shards are merged) and/or benchmark .json files")
    reporting.add_argument("--plot-dir", default=None, help="write pareto.png and curves.png here")
    reporting.add_argument("--format", default="github", help="tabulate format: github, plain, latex, ...")
    reporting.set_defaults(handler=cmd_report)

    kernels = commands.add_parser("kernels", help="what backend='auto' runs per op on a GPU, and the measurement behind it")
    kernels.add_argument("--device-name", default=None,
                         help="a GPU name as torch reports it, e.g. 'NVIDIA H100 80GB HBM3' (default: this machine's)")
    kernels.set_defaults(handler=cmd_kernels)

    advise = commands.add_parser("advise", help="the best plan for a memory budget: predict, shortlist, probe")
    advise.add_argument("--budget", required=True, help="memory for training: 4GiB, 4096MiB, 4GB or bytes")
    advise.add_argument("--probe-steps", type=int, default=None,
                        help="steps of the first probing round, doubled each round up to the full run "
                             "(default: the rounds stop at fractions of the run's own budget, --steps, --epochs "
                             "or --seconds, 1 epoch when none is given: 1/4, 1/2 and the end for 8 plans)")
    advise.add_argument("--candidates", type=positive(int), default=8, help="plans to probe (default 8)")
    advise.add_argument("--groups", action="store_true",
                        help="also enumerate plans with task groups (one split of the tasks per plan)")
    advise.add_argument("--results", default="runs/advise.jsonl",
                        help="JSONL file of the probe runs; an interrupted advice resumes from it")
    add_config_options(advise, exclude=ADVISE_SETS)
    advise.set_defaults(handler=cmd_advise)


    export = commands.add_parser(
        "export", help="write one task's trained encoder as a standard BERT folder (LoRA merged, BitFit in place)",
        description="Writes config.json, model.safetensors, vocab.txt and the tokenizer files of TASK's encoder, "
                    "loadable by transformers.BertModel.from_pretrained and minbert.BertModel.from_pretrained, "
                    "plus head.safetensors and head.json for its head. The weights are those of RUN_DIR/best.pt "
                    "(the best overall dev score); OUT_DIR must not exist or be empty, and nothing is written "
                    "when anything is wrong.")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder written by `mops train --out`")
    export.add_argument("--task", required=True, help="the task whose encoder to export, e.g. sst")
    export.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the folder to create")
    export.set_defaults(handler=cmd_export)

    data = commands.add_parser("data", help="fetch and convert the public corpora")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("download", help="download SST, STS-B and QQP into DIR in the CS224N format")
    fetch.add_argument("dir", type=Path, help="folder to write the CS224N-format files (and archives/) into")
    fetch.add_argument("--tasks", nargs="+", choices=[*SOURCES, "cfimdb"], help="default: sst sts para")
    fetch.add_argument("--base-url", action="append", metavar="TASK=URL",
                       help="fetch TASK's archive from this folder URL (a mirror)")
    fetch.add_argument("--sha256", action="append", metavar="TASK=DIGEST", help="require this SHA-256 for TASK's archive")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    fetch.set_defaults(handler=cmd_data_download)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        code = args.handler(args)
    except (ValueError, RuntimeError, argparse.ArgumentTypeError, OverflowError) as err:
        # Bad input (data, checkpoints, plans, settings: ValueError; task names parsed inside a
        # command: ArgumentTypeError; numbers too large to use: OverflowError) and runs that cannot
        # go on (RuntimeError) get one clear line; --verbose shows the traceback.
        if args.verbose:
            raise
        print(f"mops: error: {err}", file=sys.stderr)
        code = 2
    except OSError as err:  # a missing file, a read-only or full disk, a file where a folder goes
        if args.verbose:
            raise
        if err.errno is None:  # raised by MOPS itself, the message says it all
            print(f"mops: error: {err}", file=sys.stderr)
        else:
            where = f": {err.filename}" if err.filename and str(err.filename) not in str(err) else ""
            print(f"mops: error: {err}{where} (check the path, its permissions and the free space; "
                  "-v shows where it happened)", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("mops: interrupted; a `mops train` run resumes from its last checkpoint when started again",
              file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
