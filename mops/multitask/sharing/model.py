"""The multitask model: one stack of encoder pieces per task, built from a SharingPlan.

Each piece (embeddings, every encoder layer, the pooler) exists in as many copies as the
plan gives it groups; a task runs through the copies of its groups, then its own head. Pooling
without weights (`mean`, `cls`) takes the pooler piece's place, so the plan's pooler letter
changes nothing then.
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

from mops.minbert import Batch, BertModel
from mops.multitask.data.tasks import Task
from mops.multitask.sharing.bitfit import bitfit_copies
from mops.multitask.sharing.lora import LoRAConfig, lora_copies
from mops.multitask.sharing.plan import SharingPlan
from mops.multitask.sharing.pooling import POOLINGS, weightless_pooling

PAIR_ENCODINGS = ("joint", "siamese")


@dataclass(frozen=True)
class PrefixOutput:
    """The frozen prefix's output for one batch: computed, or assembled from the cache."""

    hidden: torch.Tensor  # (B, W, H) at the top of the prefix; (B, H) pooled when the whole encoder is frozen
    attention_mask: torch.Tensor | None  # (B, W), 1 = real token; None for pooled vectors


@dataclass(frozen=True)
class HeadConfig:
    pair_encoding: str = "joint"  # "joint": [CLS] a [SEP] b [SEP]; "siamese": a and b encoded alone
    dropout: float = 0.1  # dropout on the pooled vector before each linear head
    pooling: str = "pooler"  # how the last hidden states become one vector: mean, cls or pooler (BERT's)
    cosine_tasks: tuple[str, ...] = ()  # pair tasks scored by a cosine head, their sentences encoded alone
    scale_regression: bool = False  # regression losses on targets scaled to [0, 1], not on the raw scores
    symmetric_pairs: bool = False  # pairs trained in a random order and predicted as the mean over both orders

    def __post_init__(self) -> None:
        for name, valid in (("pair_encoding", PAIR_ENCODINGS), ("pooling", POOLINGS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}; got {getattr(self, name)!r}")
        object.__setattr__(self, "cosine_tasks", tuple(self.cosine_tasks))

    def siamese(self, task: Task) -> bool:
        """Whether `task`'s pairs are encoded one sentence at a time: under siamese encoding, or for a
        cosine head, which compares the two sentences' vectors."""
        return task.pair and (self.pair_encoding == "siamese" or task.name in self.cosine_tasks)

    def symmetric(self, task: Task) -> bool:
        """Whether `task`'s pairs are read in both orders: pairs under `symmetric_pairs`, except those a
        cosine head scores (cosine(u, v) is cosine(v, u) already)."""
        return task.pair and self.symmetric_pairs and task.name not in self.cosine_tasks


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
        self.siamese = config.siamese(task)
        self.dropout = nn.Dropout(config.dropout)
        self.linear = nn.Linear(hidden_size * (4 if self.siamese else 1), task.num_labels)

    def forward(self, pooled: torch.Tensor, pooled_b: torch.Tensor | None = None) -> torch.Tensor:
        if self.siamese != (pooled_b is not None):
            raise ValueError("a siamese pair head needs the second sentences' batch, and only a siamese head takes one")
        if self.siamese:
            pooled = torch.cat([pooled, pooled_b, (pooled - pooled_b).abs(), pooled * pooled_b], dim=-1)
        return self.linear(self.dropout(pooled))  # (B, num_labels)


class CosineHead(nn.Module):
    """The cosine similarity of two separately pooled sentences, the way sentence encoders are
    trained to compare them, mapped to the task's output by a learned scale and shift.

    Regression: starts as the identity on the scaled target (cos ~ similarity / 5) or as the label
    range's map of cos when targets are not scaled. Two-class pairs: the logit of class 1 over
    class 0 starts as 10 * (cos - 0.5), a boundary at cos 0.5 with the sharpness of a contrastive
    temperature of 0.1, so learning starts from a sensible classifier at fine-tuning rates.
    """

    siamese = True

    def __init__(self, task: Task, config: HeadConfig) -> None:
        super().__init__()
        if not task.pair or task.num_labels > 2:
            raise ValueError(f"a cosine head scores sentence pairs with one output or two classes; "
                             f"task {task.name} has {'pairs' if task.pair else 'single sentences'} "
                             f"and {task.num_labels} outputs")
        self.regression = task.kind == "regression"
        if self.regression:
            low, high = (0.0, 1.0) if config.scale_regression else task.label_range
            scale, shift = high - low, low
        else:
            scale, shift = 10.0, -5.0
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.shift = nn.Parameter(torch.tensor(float(shift)))

    def forward(self, pooled: torch.Tensor, pooled_b: torch.Tensor | None = None) -> torch.Tensor:
        if pooled_b is None:
            raise ValueError("a cosine head needs the second sentences' batch")
        cos = F.cosine_similarity(pooled.float(), pooled_b.float(), dim=-1)  # (B,)
        score = self.scale * cos + self.shift  # (B,)
        if self.regression:
            return score.unsqueeze(-1)  # (B, 1)
        return torch.stack([torch.zeros_like(score), score], dim=-1)  # (B, 2): logits of classes 0 and 1


def make_head(hidden_size: int, task: Task, config: HeadConfig) -> nn.Module:
    """The head of `task`: cosine where `config.cosine_tasks` names it, linear otherwise."""
    if task.name in config.cosine_tasks:
        return CosineHead(task, config)
    return TaskHead(hidden_size, task, config)


def task_loss(task: Task, outputs: torch.Tensor, labels: torch.Tensor, scale_regression: bool) -> torch.Tensor:
    """The task's loss in fp32, whatever precision the head ran in: MSE for regression (on targets
    scaled to [0, 1] when `scale_regression`, so its size does not depend on the label range),
    cross-entropy for classes."""
    if task.kind == "regression":
        targets = labels.float()
        if scale_regression:
            low, high = task.label_range
            targets = (targets - low) / (high - low)
        return F.mse_loss(outputs.squeeze(-1).float(), targets)
    return F.cross_entropy(outputs.float(), labels)


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
        self.pooling = self.head_config.pooling
        if self.pooling != "pooler" and plan.pooler != plan.layers[-1]:
            raise ValueError(
                f"plan {str(plan)!r} sets the pooler (pooler={plan.pooler.token}) but pooling "
                f"{self.pooling!r} reads no pooler; drop the override or use pooling 'pooler'"
            )
        sources = {"embeddings": pretrained.embeddings, "pooler": pretrained.pooler}
        sources.update({f"layer.{i}": layer for i, layer in enumerate(pretrained.encoder.layer)})
        self.pieces = nn.ModuleDict()
        for piece, assignment in plan.pieces():
            if piece == "pooler" and self.pooling != "pooler":  # no weights: one module serves every copy
                pooling = weightless_pooling(self.pooling)
                copies = nn.ModuleDict({key: pooling for key in assignment.keys})
            elif assignment.letter == "L":
                copies = lora_copies(sources[piece], assignment.keys, _piece_kind(piece), self.lora_config)
            elif assignment.letter == "B":
                copies = bitfit_copies(sources[piece], assignment.keys)
            else:
                copies = nn.ModuleDict({key: copy.deepcopy(sources[piece]) for key in assignment.keys})
            if assignment.frozen:
                copies.requires_grad_(False)
            self.pieces[_module_key(piece)] = copies
        self.heads = nn.ModuleDict({task.name: make_head(self.config.hidden_size, task, self.head_config)
                                    for task in tasks})
        self._frozen_prefix = plan.frozen_prefix_length()
        self.train()

    def train(self, mode: bool = True) -> MultitaskBert:
        super().train(mode)
        for (_, assignment), copies in zip(self.plan.pieces(), self.pieces.values()):
            if assignment.frozen:
                copies.eval()
        return self

    def stack(self, task: str) -> list[nn.Module]:
        """The modules `task` runs through, bottom to top: embeddings, layers, pooler (or pooling)."""
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
                return PrefixOutput(self._pool(pooler, hidden, batch.attention_mask), None)  # (B, H)
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
        return self._pool(pooler, hidden, mask)

    def _pool(self, pooler: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, H)
        return pooler(hidden) if self.pooling == "pooler" else pooler(hidden, mask)

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
        return task_loss(self.tasks[task], outputs, labels, self.head_config.scale_regression)

    def mean_over_orders(self, task: str, outputs: torch.Tensor, swapped: torch.Tensor) -> torch.Tensor:
        """One prediction from a pair read as (a, b) and as (b, a): the mean score of a regression head,
        the mean class probabilities of a classifier (what `predict` reads its argmax from)."""
        if self.tasks[task].kind == "regression":
            return (outputs.float() + swapped.float()) / 2
        return (outputs.float().softmax(dim=-1) + swapped.float().softmax(dim=-1)) / 2

    def predict(self, task: str, outputs: torch.Tensor) -> torch.Tensor:
        """Class indices, or regression scores on the label scale (e.g. STS 0-5)."""
        record = self.tasks[task]
        if record.kind == "regression":
            scores = outputs.squeeze(-1).float()
            if self.head_config.scale_regression:
                low, high = record.label_range
                scores = scores * (high - low) + low
            return scores
        return outputs.argmax(dim=-1)

    def parameters_of(self, task: str) -> list[nn.Parameter]:
        """The parameters `task` reads: its copies of every piece (with the shared base of L and B
        pieces) and its head."""
        params = [p for module in self.stack(task) for p in module.parameters()]
        return params + list(self.heads[task].parameters())
