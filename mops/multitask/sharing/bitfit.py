"""BitFit (Ben Zaken et al. 2021): per-copy biases and layer-norm weights on frozen weight matrices.

A piece under `B` keeps one frozen copy of its weight matrices and embedding tables (tensors of
two or more dimensions), shared by every copy and counted once; each copy holds its own biases
and layer-norm scales and shifts (one-dimensional tensors), which train. Untrained copies start
from the base's values, so they compute exactly what the base computes.
"""

from __future__ import annotations

import copy

import torch.nn as nn

from mops.multitask.sharing.lora import shared_copy


def bitfit_copies(source: nn.Module, keys: tuple[str, ...]) -> nn.ModuleDict:
    """One copy of `source` per key: matrices shared with one frozen base, the rest per copy."""
    base = copy.deepcopy(source).requires_grad_(True)
    matrices = [p for p in base.parameters() if p.dim() >= 2]  # biases and norms have one dimension
    for matrix in matrices:
        matrix.requires_grad_(False)
    return nn.ModuleDict({key: shared_copy(base, matrices) for key in keys})
