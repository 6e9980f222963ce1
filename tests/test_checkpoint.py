"""Checkpoint loading: every way a folder can be wrong gets an error that names the problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mops.minbert import BertConfig, BertModel, CheckpointError, save_pretrained
from mops.minbert.checkpoint import normalise_keys, resolve_checkpoint_dir

SMALL = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=48, max_position_embeddings=32)


@pytest.fixture
def small_checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_pretrained(BertModel(SMALL), tmp_path / "small")


def test_wrong_path_says_where_to_put_files(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder") as err:
        BertModel.from_pretrained(str(tmp_path / "nowhere"))
    assert "config.json" in str(err.value) and "minilm" in str(err.value)


def test_unknown_hub_name_not_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="bert-base-uncased") as err:
        BertModel.from_pretrained("bert-base-uncased")
    assert str(tmp_path) in str(err.value)


def test_hub_name_resolves_from_local_cache(tmp_path, monkeypatch, small_checkpoint):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--org--tiny-bert" / "snapshots" / "abc123"
    shutil.copytree(small_checkpoint, snapshot)
    (tmp_path / "hub" / "models--org--tiny-bert" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny-bert" / "refs" / "main").write_text("abc123")
    assert resolve_checkpoint_dir("org/tiny-bert") == snapshot
    model = BertModel.from_pretrained("org/tiny-bert")
    assert model.config.hidden_size == 32


def test_file_instead_of_folder(small_checkpoint):
    with pytest.raises(CheckpointError, match="is a file"):
        BertModel.from_pretrained(str(small_checkpoint / "config.json"))


def test_folder_without_config_or_weights(small_checkpoint):
    (small_checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no weights"):
        BertModel.from_pretrained(str(small_checkpoint))
    (small_checkpoint / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        BertModel.from_pretrained(str(small_checkpoint))


def test_missing_key_is_named(small_checkpoint):
    state = load_file(small_checkpoint / "model.safetensors")
    del state["encoder.layer.1.output.dense.bias"]
    save_file(state, small_checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.layer\.1\.output\.dense\.bias"):
        BertModel.from_pretrained(str(small_checkpoint))


def test_unexpected_key_is_named(small_checkpoint):
    state = load_file(small_checkpoint / "model.safetensors")
    state["encoder.layer.7.surprise.weight"] = torch.zeros(3)
    save_file(state, small_checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder\.layer\.7\.surprise\.weight"):
        BertModel.from_pretrained(str(small_checkpoint))


def test_shape_mismatch_names_key_and_both_shapes(small_checkpoint):
    config = json.loads((small_checkpoint / "config.json").read_text())
    config["intermediate_size"] = 40
    (small_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        BertModel.from_pretrained(str(small_checkpoint))
    message = str(err.value)
    assert "encoder.layer.0.intermediate.dense.weight (checkpoint (48, 32), model (40, 32))" in message
    assert "config.json" in message


def test_pytorch_bin_with_bert_prefix_and_heads_loads(small_checkpoint):
    """Pre-training checkpoints prefix the encoder with `bert.` and carry `cls.` heads."""
    state = load_file(small_checkpoint / "model.safetensors")
    prefixed = {f"bert.{k}": v for k, v in state.items()}
    prefixed["cls.predictions.bias"] = torch.zeros(64)
    prefixed["bert.embeddings.position_ids"] = torch.arange(32)[None]
    (small_checkpoint / "model.safetensors").unlink()
    torch.save(prefixed, small_checkpoint / "pytorch_model.bin")
    model = BertModel.from_pretrained(str(small_checkpoint))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_tf_era_layer_norm_names_are_mapped():
    state = {"embeddings.LayerNorm.gamma": torch.ones(2), "embeddings.LayerNorm.beta": torch.zeros(2)}
    renamed, dropped = normalise_keys(state)
    assert set(renamed) == {"embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"} and not dropped


@pytest.mark.parametrize(
    "change, words",
    [
        ({"hidden_size": 30}, "multiple of num_attention_heads"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"model_type": "roberta"}, "not a BERT checkpoint"),
    ],
)
def test_config_errors(small_checkpoint, change, words):
    config = json.loads((small_checkpoint / "config.json").read_text())
    config.update(change)
    (small_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=words):
        BertModel.from_pretrained(str(small_checkpoint))


def test_invalid_json_config(small_checkpoint):
    (small_checkpoint / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BertModel.from_pretrained(str(small_checkpoint))


def test_save_leaves_no_temporary_files(small_checkpoint):
    assert sorted(p.name for p in small_checkpoint.iterdir()) == ["config.json", "model.safetensors"]
