"""`mops`: train one plan, describe a plan, fetch data, sweep plans, report results.

The command line is the composition root: it is the one place that reaches both the trainer
(multitask) and the harness (bench), which it imports only inside the commands that need it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .tasks import TASK_NAMES

DEMO_PLANS = ["FFFFFF", "FFFSSS", "F2S2I2", "F2S2[sst+para|sts]2", "SSSSSS", "IIIIII"]
# The demo's training settings: sized so the six-plan sweep finishes in minutes on two CPU cores.
DEMO_TRAIN = dict(data="demo", steps=120, batch_size=16, lr=1e-4, max_length=48, sampling="round_robin",
                  eval_every=40)


def _task_list(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(TASK_NAMES)}")
    return tasks


def _add_training_options(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    group = parser.add_argument_group("training")
    if not sweep:
        group.add_argument("--tasks", type=_task_list, default=["sst", "para", "sts"],
                           help="comma-separated tasks from: " + ", ".join(TASK_NAMES) + " (default sst,para,sts)")
        group.add_argument("--plan", default=None, help="sharing plan, e.g. FFSSII, F2S2I2, F2S2[sst+para|sts]2 "
                           "(default: all shared); see `mops plan --help`")
        group.add_argument("--checkpoint", default="minilm", help="checkpoint folder or name (default: embedded minilm); "
                           "'random' for a randomly initialised encoder")
        group.add_argument("--hidden-size", type=int, default=None, help="width of a random encoder")
        group.add_argument("--num-layers", type=int, default=None, help="depth of a random encoder")
        group.add_argument("--seed", type=int, default=0)
    if sweep:
        group.add_argument("--num-layers", type=int, default=None, help="depth of the random encoders of --widths")
    group.add_argument("--data", default=None, help="folder with the CS224N files, or 'demo' (default: demo)")
    group.add_argument("--epochs", type=float, default=None, help="budget in passes over all training batches")
    group.add_argument("--steps", type=int, default=None, help="budget in optimizer steps")
    group.add_argument("--seconds", type=float, default=None, help="budget in seconds of training")
    group.add_argument("--batch-size", type=int, default=None)
    group.add_argument("--lr", type=float, default=None)
    group.add_argument("--schedule", choices=["constant", "linear"], default=None,
                       help="learning-rate schedule: constant, or linear warm-up then decay (default constant)")
    group.add_argument("--warmup", type=float, default=None, help="fraction of training spent warming up (linear)")
    group.add_argument("--weight-decay", type=float, default=None)
    group.add_argument("--max-length", type=int, default=None, help="tokens per example after truncation")
    group.add_argument("--sampling", choices=["round_robin", "proportional", "annealed"], default=None)
    group.add_argument("--dropout", type=float, default=None, help="encoder dropout (default: the checkpoint's)")
    group.add_argument("--head-dropout", type=float, default=None, help="dropout before each task head (default 0.1)")
    group.add_argument("--pair-encoding", choices=["joint", "siamese"], default=None)
    group.add_argument("--eval-every", type=int, default=None, help="steps between dev evaluations (default: an epoch)")
    group.add_argument("--max-eval-examples", type=int, default=None, help="cap each dev set (quick looks)")
    group.add_argument("--backend", choices=["auto", "torch", "triton"], default=None)
    group.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")


TRAIN_FIELDS = ("num_layers", "data", "epochs", "steps", "seconds", "batch_size", "lr", "schedule", "warmup",
                "weight_decay", "max_length", "sampling", "dropout", "head_dropout", "pair_encoding", "eval_every", "max_eval_examples", "backend", "device")


def _training_settings(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in TRAIN_FIELDS if getattr(args, name) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from bench.memory import MemorySampler

    from .trainer import TrainConfig, Trainer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    settings = _training_settings(args)
    config = TrainConfig(
        tasks=args.tasks, plan=args.plan, checkpoint=args.checkpoint, hidden_size=args.hidden_size,
        seed=args.seed, out_dir=args.out, progress=not args.quiet, **settings,
    )
    try:
        record = Trainer(config, memory_sampler=MemorySampler).train(fresh=args.fresh)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if record and not args.quiet and (not dist.is_initialized()):
        metrics = "  ".join(f"{k} {v:.3f}" for k, v in record["metrics"].items())
        print(f"dev: {metrics}")
        print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from minbert import BertModel

    from .accounting import account_model
    from .model import MultitaskBert
    from .sharing import parse_plan
    from .tasks import make_tasks

    pretrained = BertModel.from_pretrained(args.checkpoint)
    plan = parse_plan(args.plan, args.tasks, pretrained.config.num_hidden_layers)
    print(plan.describe())
    accounting = account_model(MultitaskBert(pretrained, plan, make_tasks(args.tasks, "demo")))
    mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
    print(f"\nparameters: {accounting['unique_params']:,} unique, {accounting['trainable_params']:,} trainable")
    print(f"memory for weights {mib(accounting['weight_bytes'])}, gradients {mib(accounting['grad_bytes'])}, "
          f"AdamW state {mib(accounting['optimizer_bytes'])}: {mib(accounting['total_bytes'])} before activations")
    return 0


def _sweep_config(args: argparse.Namespace, demo: bool):
    from bench.sweep import SweepConfig, sweep_from_args

    base = SweepConfig.from_file(args.config) if getattr(args, "config", None) else None
    train = _training_settings(args)
    if demo:
        return sweep_from_args(plans=args.plans or DEMO_PLANS, train={**DEMO_TRAIN, **train}, results=args.results)
    split = lambda text, cast=str: [cast(x) for x in text.split(",") if x]  # noqa: E731
    return sweep_from_args(
        plans=split(args.plans) if isinstance(args.plans, str) else args.plans,
        checkpoints=split(args.checkpoints) if args.checkpoints else None,
        widths=split(args.widths, int) if args.widths else None,
        task_sets=[_task_list(s) for s in args.task_sets.split(";")] if args.task_sets else None,
        seeds=split(args.seeds, int) if args.seeds else None,
        train=train, results=args.results, base=base,
    )


def cmd_sweep(args: argparse.Namespace, demo: bool = False) -> int:
    from bench.report import report
    from bench.sweep import run_sweep, shard_results_path

    sweep = _sweep_config(args, demo)
    results = run_sweep(sweep, shard=args.shard, progress=not args.quiet)
    plot_dir = args.plot_dir or str(Path(sweep.results).parent)
    files = [str(results)] if args.shard else [str(shard_results_path(sweep.results, (0, 1)))]
    print(report(files, plot_dir=plot_dir))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import report

    print(report(args.files, plot_dir=args.plot_dir, fmt=args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mops", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (checkpoint loading, skipped rows)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the main job on the embedded default: a six-plan sweep on the demo corpus")
    demo.add_argument("--plans", type=lambda s: s.split(","), default=None, help="comma-separated plans")
    demo.add_argument("--results", default="results/demo.jsonl")
    demo.add_argument("--plot-dir", default=None, help="where pareto.png and curves.png go (default: beside results)")
    demo.add_argument("--shard", default=None, help=argparse.SUPPRESS)
    demo.add_argument("--quiet", action="store_true")
    _add_training_options(demo, sweep=True)
    demo.set_defaults(handler=lambda a: cmd_sweep(a, demo=True))

    train = commands.add_parser("train", help="train one sharing plan on one or more tasks")
    train.add_argument("--out", default="runs/latest", help="run folder: last.pt, best.pt, results.json")
    train.add_argument("--fresh", action="store_true", help="start over even if the run folder has a checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_training_options(train)
    train.set_defaults(handler=cmd_train)

    plan = commands.add_parser("plan", help="show what a sharing plan builds and what it costs in memory")
    plan.add_argument("plan")
    plan.add_argument("--tasks", type=_task_list, default=["sst", "para", "sts"])
    plan.add_argument("--checkpoint", default="minilm")
    plan.set_defaults(handler=cmd_plan)

    sweep = commands.add_parser("sweep", help="train a grid of plans x widths x task sets x seeds, one process each")
    sweep.add_argument("--config", help="TOML file with sweep settings; command-line values override it")
    sweep.add_argument("--plans", default=None, help="comma-separated plans, e.g. FFFFFF,F2S2I2,SSSSSS")
    sweep.add_argument("--checkpoints", default=None, help="comma-separated checkpoint folders or names")
    sweep.add_argument("--widths", default=None, help="comma-separated hidden sizes of random encoders")
    sweep.add_argument("--task-sets", default=None, help="task sets separated by ';', e.g. 'sst,para,sts;sst'")
    sweep.add_argument("--seeds", default=None, help="comma-separated seeds")
    sweep.add_argument("--results", default=None, help="JSONL file the runs are appended to")
    sweep.add_argument("--shard", default=None, help="i/n: run every n-th run of the grid starting at i")
    sweep.add_argument("--plot-dir", default=None)
    sweep.add_argument("--quiet", action="store_true")
    _add_training_options(sweep, sweep=True)
    sweep.set_defaults(handler=cmd_sweep)

    report = commands.add_parser("report", help="tables and plots from sweep JSONL files or pytest-benchmark JSON")
    report.add_argument("files", nargs="+", help="JSONL results (shards are merged) and/or benchmark .json files")
    report.add_argument("--plot-dir", default=None, help="write pareto.png and curves.png here")
    report.add_argument("--format", default="github", help="tabulate format: github, plain, latex, ...")
    report.set_defaults(handler=cmd_report)

    data = commands.add_parser("data", help="fetch and convert the public corpora")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    download = data_commands.add_parser("download", help="download SST, STS-B and QQP into DIR in the CS224N format")
    from .download import add_arguments, run

    add_arguments(download)
    download.set_defaults(handler=run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        code = args.handler(args)
    except (ValueError, RuntimeError, FileNotFoundError, argparse.ArgumentTypeError) as err:
        # Bad input (data, checkpoints, plans: ValueError; task names parsed inside a command:
        # ArgumentTypeError) and runs that cannot go on (RuntimeError) get one clear line;
        # --verbose shows the traceback.
        if args.verbose:
            raise
        print(f"mops: error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("mops: interrupted; a `mops train` run resumes from its last checkpoint when started again",
              file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
