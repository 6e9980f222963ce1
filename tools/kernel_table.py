"""The per-device dispatch table that `backend="auto"` reads, made from `pytest --benchmark` results.

    rows = measured_rows(["results/nvidia-h100-80gb-hbm3-....json"])
    write_table(rows)                       # mops/kernels/dispatch_table.json, merged, atomically
    device_rows("NVIDIA H100 80GB HBM3")    # what auto runs there, and why

A benchmark group of the kernel suite (benchmarks/test_bench_*.py) times one op at one shape
with several implementations, tagged in `extra_info`: `impl` is "triton", a PyTorch path
("torch", "torch-fused", "sdpa") or "copy" (a bandwidth reference, never a candidate), and
`device` is the GPU's name. For each device and group, the ratio is

    ratio = (fastest PyTorch median) / (Triton median)        > 1: Triton is faster

For AdamW the fastest PyTorch path is `torch.optim.AdamW(fused=True)` ("torch-fused"), not the
foreach twin that backend "torch" runs: the bar is the best PyTorch can do, so "triton" is
chosen only where no PyTorch option would be faster. An op's row takes its worst group: it
says "triton" only when the ratio is > 1 in every group measured for it on that device.
When several files measure the same device and group, the later file in the list wins.
Group names start with the op ("attention fwd+bwd ...", "adamw step ..."); other groups
(training steps, sweeps) are not ops and are ignored.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path

from mops.common.files import atomic_write_json
from mops.kernels import dispatch

TORCH_IMPLS = ("torch", "torch-fused", "sdpa")
RESULTS = Path(__file__).resolve().parents[1] / "results"  # where recorded benchmark files live
ABOUT = (
    "What backend='auto' runs per GPU and op: written by tools.kernel_table.write_table from "
    "pytest --benchmark results; ratio = Triton speed / fastest PyTorch speed, worst benchmark group."
)


def op_of_group(group: str | None) -> str | None:
    """The op a benchmark group times ("layer_norm fwd+bwd bf16 ..." -> "layer_norm"), or None."""
    if not group:
        return None
    first = group.split()[0]
    return first if first in dispatch.OPS else None


def source_name(path: Path) -> str:
    """How a table row names its file: the path under results/ (a GPU check's folder holds a
    `benchmarks.json` whose name alone says nothing), else the file's name."""
    try:
        return path.resolve().relative_to(RESULTS).as_posix()
    except ValueError:
        return path.name


def group_ratios(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """One entry per (device, group) that has a Triton and a PyTorch median:
    {device, op, group, ratio, triton_median, torch_median, torch_impl, source}."""
    medians: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}  # (device, group) -> impl -> (median, file)
    for path in paths:
        path = Path(path)
        try:
            benchmarks = json.loads(path.read_text(encoding="utf-8"))["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a pytest-benchmark JSON file ({type(error).__name__}: {error})") from error
        for bench in benchmarks:
            info = bench.get("extra_info") or {}
            group, impl, device = bench.get("group"), info.get("impl"), info.get("device")
            median = (bench.get("stats") or {}).get("median")
            if op_of_group(group) is None or impl is None or device is None or median is None:
                continue
            medians.setdefault((device, group), {})[impl] = (float(median), source_name(path))
    out = []
    for (device, group), impls in sorted(medians.items()):
        torch_impls = [(impls[i][0], i) for i in TORCH_IMPLS if i in impls]
        if "triton" not in impls or not torch_impls:
            continue
        torch_median, torch_impl = min(torch_impls)
        triton_median, source = impls["triton"]
        out.append({
            "device": device, "op": op_of_group(group), "group": group,
            "ratio": torch_median / triton_median, "triton_median": triton_median,
            "torch_median": torch_median, "torch_impl": torch_impl, "source": source,
        })
    return out


def measured_rows(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """The dispatch table's rows for every device and op measured in `paths` (pytest-benchmark JSON):
    {device, op, backend, ratio, source, group}, the ratio and group of the op's worst group."""
    worst: dict[tuple[str, str], dict] = {}
    wins: dict[tuple[str, str], bool] = {}
    for entry in group_ratios(paths):
        key = (entry["device"], entry["op"])
        wins[key] = wins.get(key, True) and entry["ratio"] > 1.0
        if key not in worst or entry["ratio"] < worst[key]["ratio"]:
            worst[key] = entry
    rows = []
    for key, entry in worst.items():
        rows.append({
            "device": entry["device"], "op": entry["op"], "backend": "triton" if wins[key] else "torch",
            "ratio": round(entry["ratio"], 3), "source": entry["source"], "group": entry["group"],
        })
    return _sorted(rows)


def _sorted(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["device"], dispatch.OPS.index(r["op"])))


def write_table(rows: list[dict], path: str | os.PathLike = dispatch.TABLE_PATH) -> Path:
    """Merge `rows` into the table at `path`: a new row replaces the old row of its device and op,
    every other row stays. Written atomically; returns the path."""
    path = Path(path)
    kept = {}
    if path.exists():
        kept = {(r["device"], r["op"]): r for r in json.loads(path.read_text(encoding="utf-8"))["rows"]}
    for row in rows:
        if row["op"] not in dispatch.OPS or row["backend"] not in ("torch", "triton"):
            raise ValueError(f"write_table: bad row {row}: op must be one of {dispatch.OPS}, backend torch or triton")
        kept[(row["device"], row["op"])] = row
    atomic_write_json(path, {"about": ABOUT, "rows": _sorted(list(kept.values()))})
    dispatch.load_table.cache_clear()
    return path


def update_table(paths: Iterable[str | os.PathLike], path: str | os.PathLike = dispatch.TABLE_PATH) -> list[dict]:
    """`python -m tools.kernel_table FILE...`: measure the files, merge into the table; returns the new rows."""
    rows = measured_rows(paths)
    write_table(rows, path)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kernel_table",
                                     description="merge `pytest --benchmark` results into the dispatch table")
    parser.add_argument("files", nargs="+", type=Path, metavar="JSON", help="pytest-benchmark result files")
    args = parser.parse_args(argv)
    rows = update_table(args.files)
    print(f"dispatch table updated from {', '.join(map(str, args.files))}: "
          f"{len(rows)} rows for {', '.join(sorted({r['device'] for r in rows})) or 'no device'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
