"""The multitask model: one stack of encoder pieces per task, built from a SharingPlan.

Each piece (embeddings, every encoder layer, the pooler) exists in as many copies as the
plan gives it groups; a task runs through the copies of its groups, then its own head.
Copies start from the same pretrained weights. Frozen pieces never train, run in eval mode
(no dropout: they are fixed feature extractors), and a frozen bottom run of pieces executes
without autograd so its activations are not kept for the backward. LoRA (`L`) and BitFit (`B`)
pieces hold one frozen base whose tensors every copy shares, plus each copy's trainable update;
they run in train mode and with autograd, like any trainable piece.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minbert import Batch, BertModel

from .bitfit import bitfit_copies
from .lora import LoRAConfig, lora_copies
from .prefix_cache import PrefixOutput
from .sharing import SharingPlan
from .tasks import Task

PAIR_ENCODINGS = ("joint", "siamese")


@dataclass
class HeadConfig:
    pair_encoding: str = "joint"  # "joint": [CLS] a [SEP] b [SEP]; "siamese": a and b encoded alone
    dropout: float = 0.1  # dropout on the pooled vector before each head

    def __post_init__(self) -> None:
        if self.pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"pair_encoding must be one of {PAIR_ENCODINGS}, got {self.pair_encoding!r}")


def _module_key(piece: str) -> str:
    return piece.replace(".", "_")  # ModuleDict keys may not contain dots


def state_prefix(piece: str, key: str) -> str:
    """Where copy `key` of `piece` sits in the model's state dict, e.g. 'pieces.layer_3.sst.'."""
    return f"pieces.{_module_key(piece)}.{key}."


def _piece_kind(piece: str) -> str:
    """'embeddings', 'layer' or 'pooler': what a piece's name says it is."""
    return "layer" if piece.startswith("layer.") else piece


class TaskHead(nn.Module):
    """Dropout and a linear layer on the pooled vector (or on [u, v, |u-v|, u*v] for siamese pairs)."""

    def __init__(self, hidden_size: int, task: Task, config: HeadConfig) -> None:
        super().__init__()
        self.siamese = task.pair and config.pair_encoding == "siamese"
        self.dropout = nn.Dropout(config.dropout)
        self.linear = nn.Linear(hidden_size * (4 if self.siamese else 1), task.num_labels)

    def forward(self, pooled: torch.Tensor, pooled_b: torch.Tensor | None = None) -> torch.Tensor:
        if self.siamese != (pooled_b is not None):
            raise ValueError("a siamese pair head needs the second sentences' batch, and only a siamese head takes one")
        if self.siamese:
            pooled = torch.cat([pooled, pooled_b, (pooled - pooled_b).abs(), pooled * pooled_b], dim=-1)
        return self.linear(self.dropout(pooled))  # (B, num_labels)


class MultitaskBert(nn.Module):
    def __init__(
        self,
        pretrained: BertModel,
        plan: SharingPlan,
        tasks: Sequence[Task],
        head: HeadConfig | None = None,
        lora: LoRAConfig | None = None,
    ) -> None:
        super().__init__()
        names = tuple(task.name for task in tasks)
        if tuple(plan.tasks) != names:
            raise ValueError(f"the plan is for tasks {plan.tasks} but the model is built for {names}")
        if plan.num_layers != pretrained.config.num_hidden_layers:
            raise ValueError(
                f"plan {str(plan)!r} covers {plan.num_layers} layers but the model has "
                f"{pretrained.config.num_hidden_layers}"
            )
        self.plan = plan
        self.config = pretrained.config
        self.head_config = head or HeadConfig()
        self.lora_config = lora or LoRAConfig()
        self.tasks = {task.name: task for task in tasks}
        sources = {"embeddings": pretrained.embeddings, "pooler": pretrained.pooler}
        sources.update({f"layer.{i}": layer for i, layer in enumerate(pretrained.encoder.layer)})
        self.pieces = nn.ModuleDict()
        for piece, assignment in plan.pieces():
            if assignment.letter == "L":
                copies = lora_copies(sources[piece], assignment.keys, _piece_kind(piece), self.lora_config)
            elif assignment.letter == "B":
                copies = bitfit_copies(sources[piece], assignment.keys)
            else:
                copies = nn.ModuleDict({key: copy.deepcopy(sources[piece]) for key in assignment.keys})
            if assignment.frozen:
                copies.requires_grad_(False)
            self.pieces[_module_key(piece)] = copies
        self.heads = nn.ModuleDict({task.name: TaskHead(self.config.hidden_size, task, self.head_config) for task in tasks})
        self._frozen_prefix = plan.frozen_prefix_length()
        self.train()

    def train(self, mode: bool = True) -> MultitaskBert:
        super().train(mode)
        for (_, assignment), copies in zip(self.plan.pieces(), self.pieces.values()):
            if assignment.frozen:
                copies.eval()
        return self

    def stack(self, task: str) -> list[nn.Module]:
        """The modules `task` runs through, bottom to top: embeddings, layers, pooler."""
        return [self.pieces[_module_key(piece)][a.key_of(task)] for piece, a in self.plan.pieces()]

    @property
    def frozen_prefix(self) -> int:
        """How many pieces from the bottom (embeddings = 1) run frozen, without autograd."""
        return self._frozen_prefix

    @property
    def prefix_is_whole_encoder(self) -> bool:
        """True when even the pooler is frozen: only the heads train."""
        return self._frozen_prefix == self.plan.num_layers + 2

    def prefix_output(self, task: str, batch: Batch) -> PrefixOutput:
        """The frozen prefix's output for a batch, computed without autograd: hidden states at its
        top with their attention mask, or pooled vectors when the prefix is the whole encoder."""
        if self._frozen_prefix == 0:
            raise ValueError(f"plan {str(self.plan)!r} has no frozen prefix")
        embeddings, *layers, pooler = self.stack(task)
        with torch.no_grad():
            hidden = embeddings(batch.input_ids, batch.token_type_ids)  # (B, L, H)
            for layer in layers[: self._frozen_prefix - 1]:
                hidden = layer(hidden, batch.attention_mask)
            if self.prefix_is_whole_encoder:
                return PrefixOutput(pooler(hidden), None)  # (B, H)
        return PrefixOutput(hidden, batch.attention_mask)

    def encode(self, task: str, batch: Batch | None, prefix: PrefixOutput | None = None) -> torch.Tensor:  # (B, H)
        """Pooled vectors of a batch; a given `prefix` (e.g. from the frozen-prefix cache) replaces
        the frozen prefix's work, and then `batch` is not needed."""
        embeddings, *layers, pooler = self.stack(task)
        if self._frozen_prefix == 0:
            hidden, mask = embeddings(batch.input_ids, batch.token_type_ids), batch.attention_mask
        else:
            prefix = prefix if prefix is not None else self.prefix_output(task, batch)
            if self.prefix_is_whole_encoder:
                return prefix.hidden
            hidden, mask = prefix.hidden, prefix.attention_mask
        for layer in layers[max(self._frozen_prefix - 1, 0):]:
            hidden = layer(hidden, mask)
        return pooler(hidden)

    def forward(self, task: str, batch: Batch | None, batch_b: Batch | None = None,
                prefix: PrefixOutput | None = None, prefix_b: PrefixOutput | None = None) -> torch.Tensor:
        """Head outputs (B, num_labels) of `task`; `batch_b` (or `prefix_b`) holds second sentences
        for siamese pairs."""
        pooled = self.encode(task, batch, prefix)
        second = batch_b is not None or prefix_b is not None
        pooled_b = self.encode(task, batch_b, prefix_b) if second else None
        return self.heads[task](pooled, pooled_b)

    def loss(self, task: str, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's loss in fp32, whatever precision the head ran in (autocast or not)."""
        if self.tasks[task].kind == "regression":
            return F.mse_loss(outputs.squeeze(-1).float(), labels.float())
        return F.cross_entropy(outputs.float(), labels)

    def predict(self, task: str, outputs: torch.Tensor) -> torch.Tensor:
        if self.tasks[task].kind == "regression":
            return outputs.squeeze(-1).float()
        return outputs.argmax(dim=-1)

    def parameters_of(self, task: str) -> list[nn.Parameter]:
        """The parameters `task` reads: its copies of every piece (with the shared base of L and B
        pieces) and its head."""
        params = [p for module in self.stack(task) for p in module.parameters()]
        return params + list(self.heads[task].parameters())
