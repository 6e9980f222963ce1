"""One place that turns a run's settings into its parts: encoder -> plan -> tasks -> head
settings -> LoRA settings -> model.

The trainer, `mops plan`, `mops advise` and `mops export` all assemble here, so a setting means
the same to each of them: the advice predicts plans at the LoRA rank its probes train with, and
an export merges LoRA updates at the scaling the run trained with.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from mops.minbert import BertConfig, BertModel
from mops.minbert.checkpoint import embedded_checkpoint_dir, resolve_checkpoint_dir
from mops.multitask.data.tasks import Task, make_tasks
from mops.multitask.sharing.lora import LoRAConfig
from mops.multitask.sharing.model import HeadConfig, MultitaskBert
from mops.multitask.sharing.plan import SharingPlan, parse_plan
from mops.multitask.training.config import TrainConfig, head_config


@dataclass
class RunParts:
    """Everything a run's model is built from, each part made from the run's settings."""

    config: TrainConfig
    encoder: BertModel  # the pretrained (or random) encoder every copy starts from
    plan: SharingPlan  # `config.plan`, or every layer shared
    tasks: list[Task]
    head: HeadConfig  # pooling, pair encodings, heads
    lora: LoRAConfig  # the updates of the plan's L pieces

    @property
    def depth(self) -> int:
        return self.encoder.config.num_hidden_layers

    def parse(self, plan: str) -> SharingPlan:
        """Another plan for this run's tasks and encoder (errors name the layer)."""
        return parse_plan(plan, self.config.tasks, self.depth)

    def model(self, plan: SharingPlan | str | None = None) -> MultitaskBert:
        """The multitask model of `plan` (default: the run's own), on the encoder's device."""
        plan = self.plan if plan is None else self.parse(plan) if isinstance(plan, str) else plan
        return MultitaskBert(self.encoder, plan, self.tasks, self.head, self.lora)

    def on_meta(self) -> RunParts:
        """The same parts over a weightless copy of the encoder: models built from it cost neither
        memory nor time, and carry every shape a prediction reads."""
        return dataclasses.replace(self, encoder=copy.deepcopy(self.encoder).to("meta"))


def assemble(config: TrainConfig, encoder: BertModel | None = None, data: str | None = None) -> RunParts:
    """The run `config` describes. `encoder` stands in for the one `config` names (a weightless
    skeleton, say); `data` for its corpus (the demo corpus has every task's shape and loads at once)."""
    tasks = make_tasks(config.tasks, config.data if data is None else data)
    encoder = build_encoder(config) if encoder is None else encoder
    positions = encoder.config.max_position_embeddings
    if config.max_length > positions:
        raise ValueError(f"max_length {config.max_length} is longer than the {positions} positions the encoder "
                         f"({config.checkpoint}) has embeddings for; use --max-length {positions} or less")
    depth = encoder.config.num_hidden_layers
    plan = parse_plan(config.plan or "S" * depth, config.tasks, depth)
    return RunParts(config, encoder, plan, tasks, head_config(config), config.lora())


def encoder_shape(config: TrainConfig) -> tuple[BertConfig, Path]:
    """The run's encoder configuration (its dropout included) and the folder of its tokenizer,
    without reading any weights."""
    if config.checkpoint == "random":
        folder = embedded_checkpoint_dir()
        shape = BertConfig.scaled(BertConfig.from_json(folder / "config.json"), config.hidden_size, config.num_layers)
    else:
        folder = resolve_checkpoint_dir(config.checkpoint)
        shape = BertConfig.from_json(folder / "config.json")
    if config.dropout is not None:
        shape.hidden_dropout_prob = shape.attention_probs_dropout_prob = config.dropout
    return shape, folder


def build_encoder(config: TrainConfig) -> BertModel:
    """The pretrained encoder `config.checkpoint` names, or for 'random' an untrained one with the
    embedded checkpoint's vocabulary at `config.hidden_size` x `config.num_layers`."""
    if config.checkpoint == "random":
        shape, _ = encoder_shape(dataclasses.replace(config, dropout=None))
        torch.manual_seed(config.seed)
        model = BertModel(shape, backend=config.backend)
    else:
        model = BertModel.from_pretrained(config.checkpoint, backend=config.backend)
        for name, wanted in (("hidden_size", config.hidden_size), ("num_hidden_layers", config.num_layers)):
            if wanted is not None and getattr(model.config, name) != wanted:
                raise ValueError(
                    f"checkpoint {config.checkpoint!r} has {name}={getattr(model.config, name)}, not {wanted}; "
                    "use checkpoint='random' for a shape without pretrained weights"
                )
    return model if config.dropout is None else model.set_dropout(config.dropout)
