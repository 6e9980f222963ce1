"""Tables and plots of the memory-accuracy trade-off, made from results files only.

A row of the table is one configuration on one machine with its seeds pooled (mean ± sample
std over the seeds that finished). The Pareto front is taken over those rows: lower measured
peak memory and higher overall score are better. Failed and OOM runs stay in the table with their status, so a
plan that does not fit is visible rather than missing. Nothing here touches a model or a GPU.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from mops.bench.records import Paths, expand_paths, read_records
from mops.common.files import atomic_open
from mops.multitask.training.config import settings_with_role

MiB = 2**20
KNOWN_METRICS = ("sst_acc", "para_acc", "sts_r", "cfimdb_acc")  # shown first, in this order
ROW_KEYS = ("plan", "hidden_size")  # always shown; other config keys only where rows differ
# Config keys that never tell experiments apart: seeds are pooled (repeats of one measurement),
# the place settings are where and how a run was launched. The machine a run measured on does
# count; it joins the row as "machine".
POOLED_KEYS = frozenset({*settings_with_role("place"), "seed"})


# -- small pure helpers ----------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (memory, score) points no other point dominates, in input order.

    A point dominates another if its memory is lower-or-equal and its score higher-or-equal,
    with at least one strict; so equal points do not dominate each other and are all kept.
    """

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def human_count(n: float) -> str:
    """22713216 -> '22.7M': parameter counts readable at a glance."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale * 0.9995:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _get(record: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def _mean_std(values: list[float], spec: str, scale: float = 1.0) -> str:
    """'0.612' for one value, '0.612 ± 0.004' for several (sample std), '' for none."""
    if not values:
        return ""
    values = [v / scale for v in values]
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.fmean(values), spec)} ± {format(statistics.stdev(values), spec)}"


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


# -- grouping runs into rows -----------------------------------------------------------------


@dataclass
class _Row:
    """One configuration (config minus POOLED_KEYS, plus the machine) and all its runs."""

    config: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r.get("status") == "ok"]

    @property
    def basis(self) -> list[dict[str, Any]]:
        """Runs the figures come from: the finished ones, or all when none finished."""
        return self.ok or self.runs

    def values(self, *keys: str, runs: list[dict[str, Any]] | None = None) -> list[float]:
        found = (_number(_get(r, *keys)) for r in (self.basis if runs is None else runs))
        return [v for v in found if v is not None]

    def mean(self, *keys: str) -> float | None:
        values = self.values(*keys, runs=self.ok)
        return statistics.fmean(values) if values else None

    def status(self) -> str:
        counts = Counter(r.get("status", "?") for r in self.runs)
        if len(counts) == 1:  # every seed ended the same way
            return next(iter(counts))
        return ", ".join(f"{s} {n}/{len(self.runs)}" for s, n in sorted(counts.items(), key=lambda kv: kv[0] != "ok"))

    def sources(self) -> str:
        return ",".join(sorted({s for r in self.basis if (s := _get(r, "memory", "source"))}))

    def label(self, varying: list[str]) -> str:
        extra = " ".join(f"{k}={_show(self.config.get(k))}" for k in varying)
        return f"{self.config.get('plan', '?')} w{self.config.get('hidden_size', '?')}" + (f" {extra}" if extra else "")


def _row_config(record: dict[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in (record.get("config") or {}).items() if k not in POOLED_KEYS and v is not None}
    if record.get("device") is not None:
        config["machine"] = record["device"]
    return config


def _agrees(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def _group(records: Iterable[dict[str, Any]]) -> list[_Row]:
    """Rows of runs whose configs agree on every key both have (None counts as absent).

    A key missing on one side matches anything, so a failure record written with fewer config
    keys than a finished run still joins its seeds' row, provided exactly one row fits it when
    it is read; otherwise it gets a row of its own.
    """
    rows: list[_Row] = []
    for record in records:
        config = _row_config(record)
        fits = [row for row in rows if _agrees(row.config, config)]
        if len(fits) == 1:
            fits[0].config.update(config)
            fits[0].runs.append(record)
        else:
            rows.append(_Row(config, [record]))
    return rows


def _varying_keys(rows: list[_Row]) -> list[str]:
    """Config keys besides plan and width whose known values differ between rows."""
    keys = sorted({k for row in rows for k in row.config} - set(ROW_KEYS))
    values = {k: {json.dumps(row.config[k], sort_keys=True, default=str) for row in rows if k in row.config} for k in keys}
    return [k for k in keys if len(values[k]) > 1]


def _metric_names(records: list[dict[str, Any]]) -> list[str]:
    names = {k for r in records for k in (_get(r, "metrics") or {}) if k != "overall"}
    return [m for m in KNOWN_METRICS if m in names] + sorted(names - set(KNOWN_METRICS))


def _front_rows(rows: list[_Row]) -> set[int]:
    """Rows on the memory-accuracy front: those with a finished run, a peak and a finite score."""
    candidates = []
    for i, row in enumerate(rows):
        memory, score = row.mean("memory", "peak_bytes"), row.mean("metrics", "overall")
        if memory is not None and score is not None and math.isfinite(memory) and math.isfinite(score):
            candidates.append((i, (memory, score)))
    return {candidates[j][0] for j in pareto_front([point for _, point in candidates])}


def _sorted_rows(records: list[dict[str, Any]]) -> tuple[list[_Row], list[str]]:
    rows = _group(records)
    varying = _varying_keys(rows)

    def order(row: _Row) -> tuple:
        width = _number(row.config.get("hidden_size"))
        peak = row.mean("memory", "peak_bytes")
        return (
            math.inf if width is None else width,
            [_show(row.config.get(k)) for k in varying],
            math.inf if peak is None else peak,
            str(row.config.get("plan", "")),
        )

    return sorted(rows, key=order), varying


# -- the table -------------------------------------------------------------------------------


def seconds_per_epoch(record: dict[str, Any]) -> float | None:
    """The mean of a run's epochs after the first, where it has them: the first fills the
    frozen-prefix cache and says little about the epochs that follow. Else the run's mean."""
    epochs = _get(record, "timing", "epoch_seconds") or []
    if len(epochs) >= 2:
        return statistics.fmean(epochs[1:])
    return _number(_get(record, "timing", "seconds_per_epoch"))


def build_table(records: list[dict[str, Any]], fmt: str = "github") -> str:
    """One row per configuration and machine, seeds pooled; `fmt` is any tabulate table format.

    Columns: front (* on the memory-accuracy Pareto front), plan, width, any other config key
    that differs between rows, runs (finished/total), unique and trainable parameters,
    predicted peak (MiB: a step's estimated peak where the records have one, else weights + gradients +
    AdamW state), measured peak memory (MiB), their ratio, the measurement's source,
    seconds per epoch (epochs after the first, where a run has them), each task's dev metric, the overall score, and the status.
    """
    if not records:
        return "no runs"
    rows, varying = _sorted_rows(records)
    metrics = _metric_names(records)
    front = _front_rows(rows)
    headers = ["front", "plan", "width", *varying, "runs", "unique", "trainable", "pred MiB", "peak MiB",
               "peak/pred", "source", "s/epoch", *metrics, "overall", "status"]
    table = []
    for i, row in enumerate(rows):
        unique, trainable = row.values("accounting", "unique_params"), row.values("accounting", "trainable_params")
        # the predicted peak of a step where the record has one, else weights + gradients + AdamW state
        predicted = row.values("prediction", "peak_bytes") or row.values("accounting", "total_bytes")
        peaks = row.values("memory", "peak_bytes")
        table.append([
            "*" if i in front else "",
            _show(row.config.get("plan")),
            _show(row.config.get("hidden_size")),
            *[_show(row.config.get(k)) for k in varying],
            f"{len(row.ok)}/{len(row.runs)}",
            human_count(unique[0]) if unique else "",
            human_count(trainable[0]) if trainable else "",
            f"{predicted[0] / MiB:.1f}" if predicted else "",  # deterministic: one value per config
            _mean_std(peaks, ".1f", MiB),
            f"{statistics.fmean(peaks) / predicted[0]:.2f}" if peaks and predicted else "",
            row.sources(),
            _mean_std([seconds_per_epoch(r) for r in row.ok if seconds_per_epoch(r) is not None], ".1f"),
            *[_mean_std(row.values("metrics", m, runs=row.ok), ".3f") for m in metrics],
            _mean_std(row.values("metrics", "overall", runs=row.ok), ".3f"),
            row.status(),
        ])
    return tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True)


def failure_notes(records: list[dict[str, Any]], width: int = 100) -> str:
    """One line per run that did not finish: which run, its status, the first line of its error."""
    lines = []
    for record in records:
        if record.get("status") == "ok":
            continue
        config = record.get("config") or {}
        error = (record.get("error") or "").strip().splitlines()
        message = error[-1] if error else "no error recorded"  # a traceback's last line says what broke
        if len(message) > width:
            message = message[: width - 3] + "..."
        label = f"{config.get('plan', '?')} w{config.get('hidden_size', '?')} seed {config.get('seed', '?')}"
        lines.append(f"- {label}: {record.get('status', '?')}: {message}")
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------


def _figure() -> tuple[Figure, Any]:
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(figure)  # Agg, without touching pyplot's global backend
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    """PNG written beside `path` and renamed into place, so no reader sees half a file."""
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    return path


def plot_pareto(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Measured peak memory (MiB) against overall score, one point per configuration labelled
    with its plan (and the settings that vary between configurations), coloured by width, error bars over seeds, and the front drawn as a step line."""
    figure, axes = _figure()
    rows, varying = _sorted_rows(records)
    front = _front_rows(rows)
    points = {}
    for i, row in enumerate(rows):
        memory, score = row.mean("memory", "peak_bytes"), row.mean("metrics", "overall")
        if memory is not None and score is not None and math.isfinite(memory) and math.isfinite(score):
            points[i] = (memory / MiB, score)
    if not points:
        axes.text(0.5, 0.5, "no finished runs with a measured peak and an overall score", ha="center",
                  transform=axes.transAxes)
        return _save(figure, path)
    widths = sorted({_show(rows[i].config.get("hidden_size")) for i in points}, key=lambda w: (len(w), w))
    markers = "osD^vP*X"
    for n, width in enumerate(widths):
        mine = [i for i in points if _show(rows[i].config.get("hidden_size")) == width]
        xerr = [_spread(rows[i].values("memory", "peak_bytes", runs=rows[i].ok), MiB) for i in mine]
        yerr = [_spread(rows[i].values("metrics", "overall", runs=rows[i].ok)) for i in mine]
        axes.errorbar([points[i][0] for i in mine], [points[i][1] for i in mine], xerr=xerr, yerr=yerr,
                      fmt=markers[n % len(markers)], color=f"C{n}", capsize=2, label=f"width {width}")
        for i in mine:  # the plan, and the settings that differ between rows (lr=0.001), as in the table
            extra = " ".join(f"{k}={_show(rows[i].config.get(k))}" for k in varying)
            axes.annotate(f"{rows[i].config.get('plan', '?')} {extra}".strip(), points[i], textcoords="offset points",
                          xytext=(4, 4), fontsize=8)
    on_front = sorted(points[i] for i in front if i in points)
    axes.step([p[0] for p in on_front], [p[1] for p in on_front], where="post", color="0.4", linestyle="--",
              linewidth=1, label="Pareto front")
    sources = sorted({s for i in points for s in rows[i].sources().split(",") if s})
    axes.set_xlabel(f"measured peak memory (MiB; {', '.join(sources) or 'unknown source'})")
    axes.set_ylabel("overall dev score")
    axes.set_title("memory against accuracy per sharing plan")
    axes.margins(x=0.1, y=0.1)  # room for the plan labels beside the outermost points
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def _spread(values: list[float], scale: float = 1.0) -> float:
    return statistics.stdev(values) / scale if len(values) > 1 else 0.0


def plot_curves(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Overall dev score against training seconds, one line per finished run, labelled by plan."""
    figure, axes = _figure()
    rows, varying = _sorted_rows(records)
    several_seeds = any(len(row.ok) > 1 for row in rows)
    drawn = 0
    for n, row in enumerate(rows):
        for run in row.ok:
            steps = [p for p in run.get("curve") or [] if _number(_get(p, "metrics", "overall")) is not None]
            if not steps:
                continue
            seconds = [float(p.get("seconds", math.nan)) for p in steps]
            scores = [float(p["metrics"]["overall"]) for p in steps]
            label = row.label(varying) + (f" seed {_get(run, 'config', 'seed')}" if several_seeds else "")
            axes.plot(seconds, scores, marker=".", color=f"C{n % 10}", linestyle=("-", "--", ":", "-.")[n // 10 % 4],
                      label=label)
            drawn += 1
    if drawn:
        axes.legend(fontsize=7, ncol=1 + drawn // 16)
    else:
        axes.text(0.5, 0.5, "no finished runs with a curve", ha="center", transform=axes.transAxes)
    axes.set_xlabel("training time (s)")
    axes.set_ylabel("overall dev score")
    axes.set_title("accuracy over training time")
    axes.grid(alpha=0.3)
    return _save(figure, path)


# -- pytest-benchmark results ------------------------------------------------------------------


def _duration(seconds: float) -> tuple[float, str]:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return scale, unit
    return 1e-9, "ns"


def _extra(key: str, value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if "bytes" in key.lower() and _number(value) is not None:
        return f"{value / MiB:.1f} MiB"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def benchmark_table(path: str | os.PathLike, fmt: str = "github") -> str:
    """A pytest-benchmark JSON as a table: name, group, median, mean ± std, rounds, and the
    scalar extra_info figures each benchmark recorded (GB/s, TFLOP/s, peak bytes, device...)."""
    with open(path) as source:
        data = json.load(source)
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list):
        raise ValueError(f"{path}: not a pytest-benchmark JSON file (no top-level 'benchmarks' list)")
    extra_keys: list[str] = []
    for bench in benchmarks:
        for key, value in (bench.get("extra_info") or {}).items():
            if isinstance(value, (int, float, str)) and key not in extra_keys:
                extra_keys.append(key)  # nested values (versions) are left out of the table
    if "device" in extra_keys:
        extra_keys.append(extra_keys.pop(extra_keys.index("device")))
    table = []
    for bench in sorted(benchmarks, key=lambda b: (str(b.get("group") or ""), str(b.get("name", "")))):
        stats, extra = bench.get("stats") or {}, bench.get("extra_info") or {}
        median, mean, std = (_number(stats.get(k)) for k in ("median", "mean", "stddev"))
        cells = [bench.get("name", "?"), bench.get("group") or ""]
        if median is not None:
            scale, unit = _duration(median)
            cells.append(f"{median / scale:.3g} {unit}")
        else:
            cells.append("")
        if mean is not None:
            scale, unit = _duration(mean)
            spread = f" ± {std / scale:.2g}" if std is not None else ""
            cells.append(f"{mean / scale:.3g}{spread} {unit}")
        else:
            cells.append("")
        cells.append(_show(stats.get("rounds")))
        cells.extend(_extra(k, extra[k]) if k in extra else "" for k in extra_keys)
        table.append(cells)
    headers = ["name", "group", "median", "mean ± std", "rounds", *extra_keys]
    return tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True)


# -- the whole report ------------------------------------------------------------------------


def report(paths: Paths, plot_dir: str | os.PathLike | None = None, fmt: str = "github") -> str:
    """The text of `mops report`: the sweep table of the JSONL files (shards merged) with notes on
    runs that did not finish, and a benchmark table per pytest-benchmark ``.json`` file. With
    `plot_dir`, also writes pareto.png and curves.png there and says so."""
    files = expand_paths(paths)
    results = [f for f in files if f.suffix != ".json"]
    benchmarks = [f for f in files if f.suffix == ".json"]
    parts = []
    if results:
        records = read_records(results)
        parts.append(build_table(records, fmt))
        notes = failure_notes(records)
        if notes:
            parts.append("runs that did not finish:\n" + notes)
        if plot_dir is not None and records:
            pareto = plot_pareto(records, Path(plot_dir) / "pareto.png")
            curves = plot_curves(records, Path(plot_dir) / "curves.png")
            parts.append(f"plots: {pareto}, {curves}")
    for path in benchmarks:
        parts.append(f"{path}:\n" + benchmark_table(path, fmt))
    return "\n\n".join(parts)


__all__ = [
    "benchmark_table",
    "build_table",
    "failure_notes",
    "human_count",
    "pareto_front",
    "plot_curves",
    "plot_pareto",
    "report",
]
