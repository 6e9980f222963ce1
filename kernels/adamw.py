"""One AdamW step over many tensors: the math of minbert.optim.AdamW, fused on CUDA."""

from __future__ import annotations

import torch

from . import reference
from .backend import resolve_backend


def adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    correct_bias: bool,
    backend: str = "auto",
) -> None:
    if not params:
        return
    hyper = dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
    if resolve_backend(backend, *params, op="adamw_step") == "torch":
        return reference.adamw_step(params, grads, exp_avgs, exp_avg_sqs, **hyper)
    raise NotImplementedError("adamw_step: the Triton kernel is not written yet")
