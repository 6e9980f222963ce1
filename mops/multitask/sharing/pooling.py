"""Sentence vectors from an encoder's last hidden states: what every task head reads.

    mean     the mean of the real tokens' states (padding ignored): how sentence encoders such as
             all-MiniLM-L6-v2 were trained, so their vectors mean something before fine-tuning
    cls      the raw state of the first token, [CLS]
    pooler   BERT's tanh-dense layer over [CLS] (a plan piece with weights of its own)

`mean` and `cls` have no weights; under a sharing plan they take the pooler piece's place, so the
plan's pooler letter changes nothing for them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

POOLINGS = ("mean", "cls", "pooler")


class MeanPooling(nn.Module):
    """The mean of the hidden states of real tokens, in fp32 whatever the autocast dtype."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, L, H), (B, L)
        weights = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, L, 1)
        total = (hidden.float() * weights).sum(dim=1)  # (B, H)
        return (total / weights.sum(dim=1).clamp_min(1.0)).to(hidden.dtype)  # (B, H)


class ClsPooling(nn.Module):
    """The hidden state of the first token."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, L, H)
        return hidden[:, 0]  # (B, H)


def weightless_pooling(kind: str) -> nn.Module:
    """The module of a pooling without weights ('mean' or 'cls')."""
    if kind == "mean":
        return MeanPooling()
    if kind == "cls":
        return ClsPooling()
    raise ValueError(f"pooling {kind!r} has weights or does not exist; the weightless ones are mean and cls")
