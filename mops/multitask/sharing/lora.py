"""LoRA (Hu et al. 2021): a per-copy low-rank update on a frozen base shared by every task.

A piece under `L` keeps one frozen base (its parameter tensors shared by every copy, counted and
stored once in memory) and gives each copy a trainable update `scaling * B @ A` on the linear
layers its targets name. A (rank x in) starts Kaiming-uniform as `nn.Linear` does, B (out x rank)
starts at zero, so an untrained copy computes exactly what its base computes. The extra matmuls
run in PyTorch whatever the encoder's backend; the fused kernels (attention, add & norm,
bias + GELU) still run on the base's path.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from mops import kernels

# Target name -> the linear layer's path inside an encoder layer.
LORA_TARGETS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
POOLER_TARGET = "dense"  # the pooler's one linear layer, adapted whenever the pooler takes L


@dataclass
class LoRAConfig:
    rank: int = 8  # inner width r of every update
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the update's input only
    targets: tuple[str, ...] = field(default_factory=lambda: tuple(LORA_TARGETS))  # linear layers of a layer

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora rank must be a positive integer, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"unknown lora target(s) {', '.join(unknown) or '(none)'}; "
                             f"choose from {', '.join(LORA_TARGETS)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """A frozen linear layer (its `weight` and `bias` are the base's own tensors) plus a low-rank update.

    State names: `weight`, `bias` (the base), `lora_A` (rank, in), `lora_B` (out, rank).
    """

    def __init__(self, base: nn.Linear, config: LoRAConfig) -> None:
        super().__init__()
        self.weight = base.weight  # (out, in), shared and frozen
        self.bias = base.bias  # (out,), shared and frozen
        out_features, in_features = base.weight.shape
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(config.rank, in_features, **like))  # down-projection
        self.lora_B = nn.Parameter(torch.zeros(out_features, config.rank, **like))  # up-projection
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()  # p=0 still copies

    def delta(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        # the scaling goes on B (out x rank), not on the (..., out) product: one full-size pass fewer
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B * self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.weight, self.bias) + self.delta(x)

    def merged_weight(self) -> torch.Tensor:  # (out, in)
        """The base weight with the update folded in: what a plain nn.Linear would hold."""
        return merge(self.weight, self.lora_A, self.lora_B, self.scaling)


def merge(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """weight + scaling * B @ A, computed in fp32: (out, in)."""
    return (weight.float() + scaling * (lora_b.float() @ lora_a.float())).to(weight.dtype)


class LoRAIntermediate(nn.Module):
    """The feed-forward up-projection with a LoRA update, the bias still fused into the GELU kernel
    (minBERT's BertIntermediate reads its weight directly, so its linear layer cannot be swapped alone)."""

    def __init__(self, base: nn.Module, config: LoRAConfig) -> None:
        super().__init__()
        self.dense = LoRALinear(base.dense, config)
        self.backend = base.backend

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, L, I)
        projected = F.linear(hidden, self.dense.weight) + self.dense.delta(hidden)
        return kernels.bias_gelu(projected, self.dense.bias, backend=self.backend)


def shared_copy(base: nn.Module, share: list[nn.Parameter] | None = None) -> nn.Module:
    """A deep copy of `base` whose parameters in `share` (default: all) are the base's own tensors."""
    share = list(base.parameters()) if share is None else share
    return copy.deepcopy(base, memo={id(p): p for p in share})


def lora_copies(source: nn.Module, keys: tuple[str, ...], kind: str, config: LoRAConfig) -> nn.ModuleDict:
    """One copy of `source` per key, all sharing one frozen base; each adds its own LoRA updates.

    `kind` is the piece's kind: 'embeddings' (no update: the copies are the frozen base),
    'layer' (updates on `config.targets`) or 'pooler' (an update on its dense layer).
    """
    base = copy.deepcopy(source).requires_grad_(False)
    copies = nn.ModuleDict()
    for key in keys:
        piece = shared_copy(base)
        if kind == "layer":
            for target in config.targets:
                if target == "intermediate":
                    piece.intermediate = LoRAIntermediate(piece.intermediate, config)
                else:
                    parent, _, name = LORA_TARGETS[target].rpartition(".")
                    holder = piece.get_submodule(parent)
                    setattr(holder, name, LoRALinear(getattr(holder, name), config))
        elif kind == "pooler":
            piece.dense = LoRALinear(piece.dense, config)
        elif kind != "embeddings":
            raise ValueError(f"unknown piece kind {kind!r}; expected embeddings, layer or pooler")
        copies[key] = piece
    return copies
