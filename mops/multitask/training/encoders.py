"""The encoder a run starts from: a pretrained checkpoint, or a random one of a given shape."""

from __future__ import annotations

import torch

from mops.minbert import BertConfig, BertModel
from mops.minbert.checkpoint import embedded_checkpoint_dir
from mops.multitask.training.config import TrainConfig


def build_encoder(config: TrainConfig) -> BertModel:
    """The pretrained encoder `config.checkpoint` names, or for 'random' an untrained one with the
    embedded checkpoint's vocabulary at `config.hidden_size` x `config.num_layers`."""
    if config.checkpoint == "random":
        base = BertConfig.from_json(embedded_checkpoint_dir() / "config.json")
        torch.manual_seed(config.seed)
        model = BertModel(BertConfig.scaled(base, config.hidden_size, config.num_layers), backend=config.backend)
    else:
        model = BertModel.from_pretrained(config.checkpoint, backend=config.backend)
        for name, wanted in (("hidden_size", config.hidden_size), ("num_hidden_layers", config.num_layers)):
            if wanted is not None and getattr(model.config, name) != wanted:
                raise ValueError(
                    f"checkpoint {config.checkpoint!r} has {name}={getattr(model.config, name)}, not {wanted}; "
                    "use checkpoint='random' for a shape without pretrained weights"
                )
    return model if config.dropout is None else model.set_dropout(config.dropout)
