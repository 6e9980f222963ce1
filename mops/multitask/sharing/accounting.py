"""What a built multitask model holds in memory: parameters, gradients and optimizer state.

Counted from the model's actual tensors (a parameter shared by several tasks counts once),
so the figures follow whatever the sharing plan built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

ADAM_STATES = 2  # AdamW keeps two moments per trainable parameter (and a 4-byte step count per tensor, not counted)


@dataclass
class Accounting:
    unique_params: int  # every distinct parameter tensor's elements, counted once
    trainable_params: int  # elements of parameters with requires_grad
    weight_bytes: int
    grad_bytes: int  # one gradient per trainable parameter
    optimizer_bytes: int  # AdamW's two moments per trainable parameter
    total_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """Two lines for the command line: parameters, and the memory they take before activations."""
        return (f"parameters: {self.unique_params:,} unique, {self.trainable_params:,} trainable\n"
                f"memory for weights {mib(self.weight_bytes)}, gradients {mib(self.grad_bytes)}, "
                f"AdamW state {mib(self.optimizer_bytes)}: {mib(self.total_bytes)} before activations")


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def account(params: Iterable[torch.nn.Parameter]) -> Accounting:
    unique = {id(p): p for p in params}.values()
    weights = sum(p.numel() * p.element_size() for p in unique)
    trainable = [p for p in unique if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = ADAM_STATES * grads
    return Accounting(
        unique_params=sum(p.numel() for p in unique),
        trainable_params=sum(p.numel() for p in trainable),
        weight_bytes=weights,
        grad_bytes=grads,
        optimizer_bytes=optimizer,
        total_bytes=weights + grads + optimizer,
    )


def account_model(model) -> dict:
    """Overall and per-task accounting of a MultitaskBert, as stored in a run's results."""
    overall = account(model.parameters()).as_dict()
    overall["per_task"] = {task: account(model.parameters_of(task)).as_dict() for task in model.tasks}
    return overall
