"""CUDA graphs of the training and evaluation steps: one graph per (task, input shapes).

A MiniLM step at batch 32 is bound by kernel launches on an H100, not by arithmetic: replaying a
captured graph launches the whole step at once. The trainer's step functions are capture-safe
(no host synchronisation, no branch on a device value, dropout seeds and AdamW counts drawn and
advanced on the device), so a graph of one needs only:

- static inputs: each graph owns buffers of its shapes, allocated before capture, that every call
  fills by copy (padded lengths are multiples of 16 on a GPU, so a run sees few shapes);
- a warm-up: the first `warmup` calls of a shape run eagerly (they are real steps), so state built
  on first use (AdamW moments, kernel tables, library workspaces) exists before the capture;
- one memory pool for every graph. What a replay reads either lives outside the pool (weights,
  optimizer state, static inputs) or is written earlier in the same replay, so graphs may replay
  in any order.

A capture that fails leaves that shape eager, with one message. `cuda_graphs="auto"` turns graphs
on only for a GPU whose committed measurement (`graphs_table.json`, rows written from benchmark
results like `mops/kernels/dispatch_table.json`) shows replay giving the eager results, faster.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TABLE_PATH = Path(__file__).with_name("graphs_table.json")
CUDA_GRAPHS = ("auto", "on", "off")  # the settings of TrainConfig.cuda_graphs


# ----------------------------------------------------------------------------- when graphs run


@dataclass(frozen=True)
class GraphsDecision:
    enabled: bool
    reason: str  # why, in words: the run record keeps it, and `on` prints it when graphs stay off


def load_table(path: str | Path = TABLE_PATH) -> dict[str, dict]:
    """GPU name -> its measurement row ({"device", "speedup", "same_results", "source"})."""
    path = Path(path)
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    for i, row in enumerate(rows):
        if not isinstance(row.get("speedup"), (int, float)) or not isinstance(row.get("same_results"), bool):
            raise ValueError(f"{path}: row {i} needs a number 'speedup' (eager time / replay time) and a "
                             f"boolean 'same_results'; got {row!r}")
    return {row["device"]: row for row in rows}


def resolve_graphs(setting: str, device: torch.device, *, device_name: str | None = None,
                   precision: str = "fp32", distributed: bool = False,
                   table: dict[str, dict] | None = None) -> GraphsDecision:
    """Whether this run replays its steps as CUDA graphs (`setting` is TrainConfig.cuda_graphs)."""
    if setting not in CUDA_GRAPHS:
        raise ValueError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPHS)}; got {setting!r}")
    if setting == "off":
        return GraphsDecision(False, "off")
    if device.type != "cuda":
        if setting == "on":
            raise ValueError(f"cuda_graphs 'on' needs a CUDA GPU, but this run trains on {device}; "
                             "use --cuda-graphs auto or off")
        return GraphsDecision(False, f"no CUDA graphs on {device.type}")
    if distributed:
        return GraphsDecision(False, "DistributedDataParallel's gradient reduction is not captured: eager steps")
    if precision == "fp16":
        return GraphsDecision(False, "fp16 loss scaling reads the device at every optimizer step: eager steps "
                                     "(bf16 or fp32 can be captured)")
    if setting == "on":
        return GraphsDecision(True, "on")
    row = (load_table() if table is None else table).get(device_name or "")
    if row is None:
        return GraphsDecision(False, f"auto: no committed measurement for {device_name}: eager steps")
    if row["same_results"] and row["speedup"] > 1.0:
        return GraphsDecision(True, f"auto: replay measured {row['speedup']:.2f}x eager ({row['source']})")
    return GraphsDecision(False, f"auto: replay measured {row['speedup']:.2f}x eager, same results "
                                 f"{row['same_results']} ({row['source']}): eager steps")


# ----------------------------------------------------------------------------- inputs as flat tensors


def flatten(value: Any, path: str = "") -> list[tuple[str, torch.Tensor | None]]:
    """(path, tensor or None) of every leaf of nested dicts, tuples, lists and dataclasses."""
    if isinstance(value, torch.Tensor) or value is None:
        return [(path, value)]
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in flatten(item, f"{path}.{key}")]
    if isinstance(value, (tuple, list)):
        return [leaf for i, item in enumerate(value) for leaf in flatten(item, f"{path}[{i}]")]
    if dataclasses.is_dataclass(value):
        return [leaf for field in dataclasses.fields(value)
                for leaf in flatten(getattr(value, field.name), f"{path}.{field.name}")]
    raise TypeError(f"a graphed step takes tensors, None, and dicts, sequences or dataclasses of them; "
                    f"{path or 'an argument'} is a {type(value).__name__}")


def rebuild(value: Any, make: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`value` with every tensor replaced by `make(tensor)`, the structure kept."""
    if isinstance(value, torch.Tensor):
        return make(value)
    if isinstance(value, dict):
        return {key: rebuild(item, make) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(rebuild(item, make) for item in value)
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: rebuild(getattr(value, f.name), make)
                                             for f in dataclasses.fields(value)})
    return value


Leaves = list[tuple[str, torch.Tensor | None]]


def shape_key(task: str, *args: Any) -> tuple:
    """What one graph serves: the task, and the shape and dtype of every input tensor (None kept)."""
    return _key(task, flatten(args))


def _key(task: str, leaves: Leaves) -> tuple:
    return (task, tuple((path, None if t is None else (tuple(t.shape), t.dtype)) for path, t in leaves))


# ----------------------------------------------------------------------------- capture and replay


# fn -> (replay, fn's outputs). A capture only records fn: the caller replays to run it.
Capture = Callable[[Callable[[], Any]], tuple[Callable[[], None], Any]]


class CudaCapture:
    """Captures a function into a CUDA graph; every graph it makes shares one memory pool."""

    def __init__(self) -> None:
        self.pool = None

    def __call__(self, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = fn()
        if self.pool is None:
            self.pool = graph.pool()
        return graph.replay, outputs


@dataclass
class _Graph:
    replay: Callable[[], None]
    inputs: list[torch.Tensor | None]  # the static input buffers the capture read, as `flatten` orders them
    outputs: Any  # what the capture returned: rewritten by every replay


_EAGER = object()  # this shape's capture failed: it runs eagerly


class GraphedSteps:
    """`step(task, *args)` replayed as one graph per `shape_key(task, *args)`, after `warmup` eager calls.

    `args` are tensors (or nested containers of them, None allowed); the result is the step's
    output, which the next call of the same shape overwrites. `on_failure` runs after a capture
    fails (it must drop anything the failed capture left half built).
    """

    def __init__(self, step: Callable[..., Any], name: str, capture: Capture, *, warmup: int = 2,
                 report: Callable[[str], None] = print, on_failure: Callable[[], None] = lambda: None) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 eager call per shape (state is built on first use), "
                             f"got {warmup}")
        self.step, self.name, self.capture, self.warmup = step, name, capture, warmup
        self.report, self.on_failure = report, on_failure
        self.graphs: dict[tuple, _Graph | object] = {}
        self.calls: Counter[tuple] = Counter()

    def stats(self) -> dict[str, int]:
        return {"graphs": sum(isinstance(g, _Graph) for g in self.graphs.values()),
                "eager_shapes": sum(g is _EAGER for g in self.graphs.values())}

    def __call__(self, task: str, *args: Any) -> Any:
        leaves = flatten(args)  # once per call: the key and the copies both read it
        key = _key(task, leaves)
        graph = self.graphs.get(key)
        if graph is _EAGER:
            return self.step(task, *args)
        if graph is None:
            self.calls[key] += 1
            if self.calls[key] <= self.warmup:
                return self.step(task, *args)
            return self._capture(key, task, args, leaves)
        _fill(graph.inputs, leaves)
        graph.replay()
        return graph.outputs

    def _capture(self, key: tuple, task: str, args: tuple, leaves: Leaves) -> Any:
        """Capture this shape's graph and run this call through it (eagerly if the capture fails)."""
        static = rebuild(args, lambda t: torch.empty_like(t))  # allocated outside the graph's pool
        buffers = [buffer for _, buffer in flatten(static)]
        _fill(buffers, leaves)
        try:
            replay, outputs = self.capture(lambda: self.step(task, *static))
        except Exception as error:  # noqa: BLE001 - any failure leaves this shape eager, said once
            self.graphs[key] = _EAGER
            self.on_failure()
            shapes = ", ".join(map(str, sorted({tuple(t.shape) for _, t in leaves if t is not None})))
            self.report(f"cuda graphs: capturing the {self.name} step of {task} at input shapes {shapes} failed "
                        f"with {type(error).__name__}: {error}; this shape runs eagerly from now on")
            return self.step(task, *args)
        self.graphs[key] = _Graph(replay, buffers, outputs)
        replay()  # the capture recorded the step; this call's results come from running the graph
        return outputs


def _fill(buffers: list[torch.Tensor | None], leaves: Leaves) -> None:
    """Copy every input tensor into its static buffer (both in `flatten`'s order, same shapes)."""
    for buffer, (_, tensor) in zip(buffers, leaves):
        if buffer is not None:
            buffer.copy_(tensor, non_blocking=True)
