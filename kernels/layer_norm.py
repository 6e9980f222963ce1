"""LayerNorm over the last dimension of x + residual (BERT's add & norm), fp32 statistics."""

from __future__ import annotations

import torch

from . import reference
from .backend import resolve_backend


def layer_norm(
    x: torch.Tensor,  # (..., N)
    weight: torch.Tensor,  # (N,)
    bias: torch.Tensor,  # (N,)
    eps: float,
    residual: torch.Tensor | None = None,  # (..., N)
    backend: str = "auto",
) -> torch.Tensor:
    if resolve_backend(backend, x, op="layer_norm") == "torch":
        return reference.layer_norm(x, weight, bias, eps, residual)
    raise NotImplementedError("layer_norm: the Triton kernel is not written yet")
