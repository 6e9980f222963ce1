"""Fused masked attention: (B, H, L, D) queries, keys and values, a (B, L) padding mask."""

from __future__ import annotations

import torch

from . import reference
from .backend import resolve_backend


def attention(
    q: torch.Tensor,  # (B, H, L, D)
    k: torch.Tensor,  # (B, H, L, D)
    v: torch.Tensor,  # (B, H, L, D)
    attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token, 0 = padding
    sm_scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:  # (B, H, L, D)
    if resolve_backend(backend, q, op="attention") == "torch":
        return reference.attention(q, k, v, attention_mask, sm_scale, dropout_p)
    raise NotImplementedError("attention: the Triton kernel is not written yet")
