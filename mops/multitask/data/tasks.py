"""Task records: everything the trainer knows about a task (name, kind, labels, metric, loader)."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mops.multitask.data.examples import TASK_KINDS, DataError, Example, load_split
from mops.multitask.data.synthetic import make_corpus

TASK_NAMES = tuple(TASK_KINDS)
DEMO = "demo"  # the data source name of the synthetic demo corpus


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "classification" or "regression"
    num_labels: int  # width of the head's output: classes, or 1 for regression
    metric: str  # "accuracy" or "pearson"
    pair: bool  # True when an example is a sentence pair
    loader: Callable[[str], list[Example]]  # split name -> examples
    label_range: tuple[float, float] = (0.0, 1.0)  # inclusive bounds of a label (regression: its scale)

    @property
    def metric_key(self) -> str:
        """The name of the dev metric in results: sst_acc, para_acc, sts_r, cfimdb_acc."""
        return f"{self.name}_{'acc' if self.metric == 'accuracy' else 'r'}"


def _cs224n_loader(task: str, data_dir: str | os.PathLike) -> Callable[[str], list[Example]]:
    return lambda split: load_split(task, split, data_dir).examples


@functools.lru_cache(maxsize=4)
def _demo_corpus(seed: int) -> dict[str, dict[str, list[Example]]]:
    return make_corpus(seed)


def _demo_loader(task: str, seed: int) -> Callable[[str], list[Example]]:
    def load(split: str) -> list[Example]:
        corpus = _demo_corpus(seed)
        if split not in corpus[task]:
            raise DataError(f"the demo corpus has no {split!r} split for {task}; it has {', '.join(corpus[task])}")
        return corpus[task][split]

    return load


def make_tasks(names: Sequence[str], data: str | os.PathLike, demo_seed: int = 0) -> list[Task]:
    """Task records for `names`, reading the CS224N files in folder `data`, or the demo corpus for 'demo'."""
    if not names:
        raise DataError(f"no tasks given; choose from {', '.join(TASK_NAMES)}")
    unknown = [n for n in names if n not in TASK_KINDS]
    if unknown:
        raise DataError(f"unknown task(s) {', '.join(unknown)}; valid tasks: {', '.join(TASK_NAMES)}")
    if len(set(names)) != len(names):
        raise DataError(f"task list {', '.join(names)} names a task twice")
    tasks = []
    for name in names:
        kind = TASK_KINDS[name]
        loader = _demo_loader(name, demo_seed) if str(data) == DEMO else _cs224n_loader(name, data)
        tasks.append(
            Task(
                name=name,
                kind="regression" if kind.is_regression else "classification",
                num_labels=1 if kind.is_regression else kind.num_classes,
                metric="pearson" if kind.is_regression else "accuracy",
                pair=kind.is_pair,
                loader=loader,
                label_range=(float(kind.label_range[0]), float(kind.label_range[1])),
            )
        )
    return tasks


def score(task: Task, predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of class predictions, or Pearson's r of regression outputs."""
    if task.metric == "accuracy":
        return (predictions == labels).float().mean().item()
    x, y = predictions.double(), labels.double()
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt((x * x).sum().item() * (y * y).sum().item())
    return (x * y).sum().item() / denominator if denominator > 0 else 0.0


def overall_score(metrics: dict[str, float]) -> float:
    """The multitask score: the mean of accuracies and (r + 1) / 2 over the tasks present.

    With sst, para and sts this is (sst_acc + para_acc + (sts_r + 1) / 2) / 3.
    """
    parts = [(value + 1) / 2 if key.endswith("_r") else value for key, value in metrics.items() if key != "overall"]
    if not parts:
        raise ValueError("no metrics to combine")
    return sum(parts) / len(parts)
