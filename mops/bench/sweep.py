"""Sweeps: a grid of (checkpoint or width) x plan x task set x seed, one process per run.

Each run executes in a child process (`python -m mops.bench.worker`), so its memory peak is its
own and a crash or an out-of-memory ends that run, not the sweep: the parent appends the
child's record, or a failed/oom record in its place, one JSON line per run. Rerunning a
sweep skips the runs already in the file; `shard="i/n"` runs every n-th run of the grid.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from mops.bench.records import append_record, completed_ids, run_id
from mops.common.machine import device_name
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.devices import resolve_device
from mops.multitask.training.record import failure_record
from mops.multitask.training.run_files import exclusive

# Training settings each run takes from the sweep's grid, and the place settings (see
# TrainConfig's roles) the sweep sets for every run: its own folder, no progress bars.
GRID_FIELDS = ("tasks", "plan", "checkpoint", "hidden_size", "seed")
SET_BY_SWEEP = ("out_dir", "progress")


@dataclass
class SweepConfig:
    checkpoints: list[str] = field(default_factory=lambda: ["minilm"])  # names/folders, or widths below
    widths: list[int] = field(default_factory=list)  # hidden sizes of randomly initialised encoders
    plans: list[str] = field(default_factory=lambda: ["FFFFFF", "SSSSSS", "IIIIII"])
    task_sets: list[list[str]] = field(default_factory=lambda: [["sst", "para", "sts"]])
    seeds: list[int] = field(default_factory=lambda: [0])
    train: dict = field(default_factory=dict)  # any other TrainConfig field, shared by every run
    results: str = "runs/sweep.jsonl"
    runs_dir: str | None = None  # each run's checkpoints and results.json; default: beside `results`
    timeout_s: float | None = None  # per run; a run past it is stopped and recorded as failed

    def __post_init__(self) -> None:
        for name in ("checkpoints", "widths", "plans", "task_sets", "seeds"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise ValueError(f"{name} must be a list, got {getattr(self, name)!r}")
        if any(isinstance(tasks, str) for tasks in self.task_sets):
            raise ValueError(f"task_sets must be a list of task lists, e.g. [['sst', 'para', 'sts']], got {self.task_sets!r}")
        if not self.plans:
            raise ValueError("a sweep needs at least one plan")
        if not self.checkpoints and not self.widths:
            raise ValueError("a sweep needs a checkpoint or a width")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        grid = set(GRID_FIELDS)
        unknown = set(self.train) - known
        if unknown:
            raise ValueError(f"unknown training settings {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known - grid))}")
        clash = set(self.train) & grid
        if clash:
            raise ValueError(f"{', '.join(sorted(clash))} are set by the sweep's grid, not by its training settings")

    @property
    def run_folder(self) -> Path:
        """Where the runs' folders go: runs/x.jsonl -> runs/x.runs/ unless `runs_dir` says,
        so sweeps writing different results files never share (and resume) each other's runs."""
        return Path(self.runs_dir) if self.runs_dir else Path(self.results).with_suffix(".runs")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SweepConfig:
        """A TOML file with the fields of SweepConfig; training settings under [train]."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML ({err})") from err
        if not raw:
            raise ValueError(f"{path}: names no setting; an empty file would run the default sweep (give at least "
                             "`plans = [...]`)")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"{path}: unknown keys {', '.join(sorted(unknown))}; valid: {', '.join(sorted(names))}")
        try:
            sweep = cls(**raw)
            grid(sweep)  # every run's settings checked now (types, ranges), not when its turn comes
        except (ValueError, TypeError) as err:  # a bad [train] table or an empty grid: say which file
            raise ValueError(f"{path}: {err}") from None
        return sweep


def grid(sweep: SweepConfig) -> list[TrainConfig]:
    """Every run of the sweep, in a fixed order (shards slice this list)."""
    encoders = [(c, None) for c in sweep.checkpoints] + [("random", w) for w in sweep.widths]
    runs = []
    for (checkpoint, width), plan, tasks, seed in itertools.product(encoders, sweep.plans, sweep.task_sets, sweep.seeds):
        settings = {**sweep.train, "checkpoint": checkpoint, "hidden_size": width, "plan": plan,
                    "tasks": list(tasks), "seed": seed, "progress": False}
        runs.append(TrainConfig(**settings))
    return runs


def config_id(config: TrainConfig) -> str:
    return run_id(config.measured())


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= i < n")
    return index, count


def shard_results_path(results: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """Each shard appends to its own file; `mops report` merges them."""
    path = Path(results)
    index, count = shard
    return path if count == 1 else path.with_name(f"{path.stem}.shard-{index}-of-{count}{path.suffix}")


def _failure_record(config: TrainConfig, rid: str, status: str, error: str, seconds: float) -> dict:
    record = failure_record(config, status, error, device_name(resolve_device(config.device)), wall_seconds=seconds)
    return {"run_id": rid, **record}


def _classify_failure(returncode: int, stderr: str) -> tuple[str, str]:
    tail = stderr.strip().splitlines()[-15:]
    text = "\n".join(tail)
    if returncode == -signal.SIGKILL or returncode == 137:
        return "oom", f"killed by SIGKILL (the usual sign of the system running out of memory)\n{text}"
    if "out of memory" in stderr.lower() or "OutOfMemoryError" in stderr:
        return "oom", text
    return "failed", f"exit code {returncode}\n{text}"


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to end the run if the sweep process dies, so a
    killed sweep leaves no orphan training in the run folder its rerun will use."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_one(config: TrainConfig, rid: str, timeout_s: float | None = None) -> dict:
    """Train `config` in a child process and return its record (or a failure record)."""
    with tempfile.TemporaryDirectory(prefix="mops-run-") as scratch:
        spec, out = Path(scratch) / "config.json", Path(scratch) / "record.json"
        spec.write_text(json.dumps(dataclasses.asdict(config)))
        started = time.perf_counter()
        try:
            child = subprocess.run(
                [sys.executable, "-m", "mops.bench.worker", str(spec), str(out)],
                capture_output=True, text=True, timeout=timeout_s, preexec_fn=_die_with_parent,
            )
        except subprocess.TimeoutExpired:
            return _failure_record(config, rid, "failed", f"stopped after the {timeout_s} s per-run limit",
                                   time.perf_counter() - started)
        seconds = time.perf_counter() - started
        if out.is_file():  # the worker wrote a record: a finished run, or one it caught failing (e.g. CUDA OOM)
            record = json.loads(out.read_text())
        else:
            status, error = _classify_failure(child.returncode, child.stderr)
            record = _failure_record(config, rid, status, error, seconds)
    record["run_id"] = rid
    record.setdefault("timing", {})["wall_seconds"] = round(seconds, 3)
    return record


def run_sweep(sweep: SweepConfig, shard: str | None = None, progress: bool = True) -> Path:
    """Run this shard's unfinished runs, appending one record per run; returns the results file."""
    index, count = parse_shard(shard)
    results = shard_results_path(sweep.results, (index, count))
    with exclusive(results.with_name(results.name + ".lock"), str(results),
                   "wait for that sweep to end, or give this one another --results file"):
        return _run_shard(sweep, results, grid(sweep)[index::count], progress)


def _run_shard(sweep: SweepConfig, results: Path, runs: list[TrainConfig], progress: bool) -> Path:
    done = completed_ids(results) if results.exists() else set()
    todo = [(config, config_id(config)) for config in runs]
    todo = [(config, rid) for config, rid in todo if rid not in done]
    skipped = len(runs) - len(todo)
    if skipped and progress:
        tqdm.write(f"{results}: {skipped} of {len(runs)} runs already done, skipping them")
    for config, rid in tqdm(todo, desc="sweep", unit="run", disable=not progress):
        config.out_dir = str(sweep.run_folder / rid)
        record = run_one(config, rid, sweep.timeout_s)
        append_record(results, record)
        if progress:
            overall = record.get("metrics", {}).get("overall")
            shown = f"overall {overall:.3f}" if overall is not None else record["status"]
            tqdm.write(f"  {config.plan:<12} {config.checkpoint:<8} seed {config.seed}: {shown}")
    return results


def sweep_from_args(
    plans: Sequence[str] | None = None,
    checkpoints: Sequence[str] | None = None,
    widths: Sequence[int] | None = None,
    task_sets: Sequence[Sequence[str]] | None = None,
    seeds: Sequence[int] | None = None,
    train: dict | None = None,
    results: str | None = None,
    base: SweepConfig | None = None,
) -> SweepConfig:
    """A SweepConfig from a config file's values overridden by command-line values."""
    values = dataclasses.asdict(base or SweepConfig())
    for key, value in dict(plans=plans, checkpoints=checkpoints, widths=widths, task_sets=task_sets,
                           seeds=seeds, results=results).items():
        if value is not None:
            values[key] = list(value) if not isinstance(value, str) else value
    if widths is not None and checkpoints is None:
        values["checkpoints"] = []  # widths alone: only random encoders
    values["train"] = {**values["train"], **(train or {})}
    return SweepConfig(**values)
