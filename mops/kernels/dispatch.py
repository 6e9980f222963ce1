"""Which implementation of each op runs: its Triton kernel or its PyTorch twin, in one place.

`auto`   -> on a GPU, the implementation measured faster for that op on that kind of GPU, PyTorch
            where nothing was measured; PyTorch on the CPU, and wherever Triton is not installed.
`torch`  -> always the PyTorch twin.
`triton` -> the Triton kernel; on the CPU only under TRITON_INTERPRET=1; a clear error where
            Triton is not installed.

The measurements are data, committed beside this file: `dispatch_table.json`, one row per GPU
name (as `torch.cuda.get_device_name` reports it) and op, written by
`tools.kernel_table.write_table` from `pytest --benchmark` results, never edited by hand:

    {"device": "NVIDIA H100 80GB HBM3", "op": "adamw", "backend": "triton", "ratio": 1.045,
     "source": "h100-2026-11-26-bench.json", "group": "adamw step fp32 bert-base"}

`ratio` is the Triton kernel's speed over the fastest PyTorch path's (> 1: Triton is faster);
a row says "triton" only when Triton won every benchmark group measured for the op. An op
without a row for this GPU runs PyTorch (a kernel nobody has timed there may be slower).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mops.common.machine import device_name

OPS = ("attention", "layer_norm", "bias_gelu", "adamw")
# Names the ops go by elsewhere (function names, error messages) -> their table name.
ALIASES = {"adamw_step": "adamw"}
TABLE_PATH = Path(__file__).with_name("dispatch_table.json")
BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class Choice:
    """What `auto` runs for one op on one kind of GPU, and the measurement behind it."""

    backend: str  # "torch" or "triton"
    ratio: float | None  # Triton speed / best PyTorch speed; None when not measured
    source: str | None  # the benchmark file the ratio came from
    measured: bool  # False: no row for this GPU and op, so PyTorch by default
    group: str | None = None  # the benchmark group (op and shape) the ratio came from


def table_op(op: str) -> str:
    name = ALIASES.get(op, op)
    if name not in OPS:
        raise ValueError(f"dispatch: op must be one of {OPS}, got {op!r}")
    return name


@functools.lru_cache(maxsize=None)
def load_table(path: str | Path = TABLE_PATH) -> dict[tuple[str, str], Choice]:
    """(device name, op) -> Choice, read once per path. A row with an unknown op or backend is an error
    that names the file: the table is generated, so a bad row means a bad generator or a hand edit."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    table = {}
    for i, row in enumerate(data["rows"]):
        if row.get("op") not in OPS or row.get("backend") not in ("torch", "triton"):
            raise ValueError(f"{path}: row {i} has op {row.get('op')!r} and backend {row.get('backend')!r}; "
                             f"expected an op in {OPS} and backend 'torch' or 'triton'")
        table[(row["device"], row["op"])] = Choice(row["backend"], float(row["ratio"]), row["source"], True, row.get("group"))
    return table


def choose(op: str, device_name: str, table: dict[tuple[str, str], Choice] | None = None) -> Choice:
    """What `auto` runs for `op` on the GPU called `device_name` (PyTorch when nothing was measured)."""
    table = load_table() if table is None else table
    return table.get((device_name, table_op(op)), Choice("torch", None, None, False))


def device_rows(gpu: str | None, path: str | os.PathLike = TABLE_PATH) -> list[dict]:
    """`mops kernels [--device-name NAME]`: per op, what `auto` runs on that GPU (None: the CPU) and why:
    {op, backend, ratio, source, group, note}."""
    table = load_table(Path(path))
    rows = []
    for op in OPS:
        if gpu is None:
            rows.append({"op": op, "backend": "torch", "ratio": None, "source": None, "group": None,
                         "note": "CPU: auto always runs PyTorch"})
            continue
        choice = choose(op, gpu, table)
        note = "" if choice.measured else "no measurement for this GPU: auto runs PyTorch"
        rows.append({"op": op, "backend": choice.backend, "ratio": choice.ratio, "source": choice.source,
                     "group": choice.group, "note": note})
    return rows


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter (must be set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    """Whether Triton can be imported here (not on macOS or Windows, for one)."""
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, *tensors: torch.Tensor, op: str = "op") -> str:
    """Return "torch" or "triton" for `op` on `tensors`, or raise a ValueError/RuntimeError that says why."""
    device = next((t.device for t in tensors if t.is_cuda), torch.device("cpu"))
    return resolve_for_device(backend, device, op)


def resolve_for_device(backend: str, device: torch.device, op: str) -> str:
    """Return "torch" or "triton" for `op` with this backend setting on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = device.type == "cuda"
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if not on_cuda or not triton_available():
            return "torch"
        return choose(op, device_name(device)).backend
    # backend == "triton"
    if not triton_available():
        raise RuntimeError(f"{op}: backend='triton' needs the `triton` package, which is not installed")
    if not on_cuda and not interpreter_enabled():
        raise RuntimeError(
            f"{op}: backend='triton' on CPU tensors needs Triton's interpreter; "
            "set TRITON_INTERPRET=1 in the environment before importing mops, or use backend='torch'"
        )
    return "triton"


def resolved_backends(backend: str, device: torch.device | str) -> dict[str, str]:
    """op -> "torch" or "triton": what each op of `OPS` runs with this backend setting on
    `device` (what a results file records). Raises as the ops would when the setting cannot run."""
    device = torch.device(device)
    return {op: resolve_for_device(backend, device, op) for op in OPS}
