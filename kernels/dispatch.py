"""What `backend="auto"` runs on a GPU: the implementation measured faster there, per op.

The measurements are data, committed beside this file: `dispatch_table.json`, one row per GPU
name (as `torch.cuda.get_device_name` reports it) and op, written by
`bench.kernel_table.write_table` from `pytest --benchmark` results, never edited by hand:

    {"device": "NVIDIA H100 80GB HBM3", "op": "adamw", "backend": "triton", "ratio": 1.045,
     "source": "h100-2026-11-26-bench.json", "group": "adamw step fp32 bert-base"}

`ratio` is the Triton kernel's speed over the fastest PyTorch path's (> 1: Triton is faster);
a row says "triton" only when Triton won every benchmark group measured for the op. An op
without a row for this GPU runs PyTorch (a kernel nobody has timed there may be slower), and so
does every op on the CPU.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

OPS = ("attention", "layer_norm", "bias_gelu", "adamw")
# Names the ops go by elsewhere (function names, error messages) -> their table name.
ALIASES = {"adamw_step": "adamw"}
TABLE_PATH = Path(__file__).with_name("dispatch_table.json")


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


@functools.lru_cache(maxsize=None)
def cuda_device_name(index: int) -> str:
    """torch.cuda.get_device_name, once per device (tests replace this to fake a GPU)."""
    return torch.cuda.get_device_name(index)


def device_name(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return cuda_device_name(index)

