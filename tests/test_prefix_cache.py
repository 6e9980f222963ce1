"""mops.multitask.training.prefix_cache and the trainer's use of it: the frozen prefix's outputs are stored on
an example's first pass and replayed later; metrics equal the uncached run's, the stored states
equal recomputed ones, and a cache that would not fit is left off with one warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from collations import record_collations

from mops.multitask.training import prefix_cache
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.prefix_cache import FrozenPrefixCache, choose_location, predict_bytes
from mops.multitask.training.trainer import Trainer

CPU = torch.device("cpu")


def tiny(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    """A 2-layer random encoder, 48 training examples per task: 18 steps an epoch."""
    settings = dict(
        tasks=["sst", "para", "sts"], plan="FS", checkpoint="random", hidden_size=32, num_layers=2, data="demo",
        epochs=2, batch_size=8, max_length=32, max_train_examples=48, max_eval_examples=24, lr=1e-3,
        sampling="round_robin", out_dir=str(tmp_path / name), progress=False, backend="torch", device="cpu",
    )
    return TrainConfig(**{**settings, **overrides})


# ---- the store itself -------------------------------------------------------------------------


def test_states_come_back_re_padded_with_their_mask():
    cache = FrozenPrefixCache(CPU, torch.float32, pooled=False, pad_multiple=4)
    hidden = torch.randn(3, 6, 2)  # (B, L, H)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    cache.store("sst", "train", "a", [7, 8, 9], hidden, mask)
    assert cache.bytes == (3 + 5 + 1) * 2 * 4  # real tokens only, fp32
    assert cache.lookup("sst", "train", "a", [7, 10]) is None  # one example not stored: nothing
    states = cache.lookup("sst", "train", "a", [9, 7])
    batch = cache.assemble(states, CPU)
    assert batch.hidden.shape == (2, 4, 2)  # longest row 3, rounded up to a multiple of 4
    assert batch.attention_mask.tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]
    assert torch.equal(batch.hidden[1, :3], hidden[0, :3]) and torch.equal(batch.hidden[0, 0], hidden[2, 0])
    assert not batch.hidden[1, 3:].any()
    assert (cache.hits, cache.misses) == (2, 3)


def test_pooled_vectors_are_stacked_in_the_cache_dtype():
    cache = FrozenPrefixCache(CPU, torch.bfloat16, pooled=True)
    pooled = torch.randn(2, 5)
    cache.store("sts", "dev", "b", [0, 1], pooled, None)
    batch = cache.assemble(cache.lookup("sts", "dev", "b", [1, 0]), CPU)
    assert batch.attention_mask is None and batch.hidden.dtype is torch.bfloat16
    assert torch.equal(batch.hidden, pooled[[1, 0]].to(torch.bfloat16))
    assert cache.lookup("sts", "dev", "a", [0]) is None  # the other side is kept apart


def test_size_prediction_and_where_it_goes(monkeypatch):
    assert predict_bytes(1000, 10, 384, torch.bfloat16, pooled=False) == 1000 * 384 * 2
    assert predict_bytes(1000, 10, 384, torch.float32, pooled=True) == 10 * 384 * 4
    monkeypatch.setattr(prefix_cache, "available_host_bytes", lambda: 10 * 2**30)
    assert choose_location(2**30, CPU)[0] == CPU
    where, why = choose_location(6 * 2**30, CPU)
    assert where is None and "more than 50% of the 10,240 MiB of host memory available" in why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    assert choose_location(2**30, torch.device("cuda", 0))[0] == torch.device("cuda", 0)  # 1 of 8 GiB free
    assert choose_location(3 * 2**30, torch.device("cuda", 0))[0] == CPU  # over a quarter of the free GPU memory


# ---- training with it -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "overrides"),
    [
        ("FF", {}),  # the whole encoder frozen: only the heads train, pooled vectors are cached
        ("FS", {}),  # a frozen prefix under a shared layer
        ("F[sst+para|sts]", {}),  # task groups above a frozen prefix
        ("FS", {"pair_encoding": "siamese"}),  # both sentences of a pair, each cached
        ("FS", {"symmetric_pairs": True}),  # both orders of a joint pair, each cached
        ("FL", {}),  # LoRA updates above the prefix train; the prefix stays below them
        ("FB", {}),
    ],
    ids=["all-frozen", "frozen-under-shared", "groups-above", "siamese", "symmetric-pairs", "lora-above",
         "bitfit-above"],
)
def test_the_cache_changes_nothing_in_fp32(tmp_path, plan, overrides):
    """In fp32 the cache keeps the prefix's states as computed, so a cached run is the uncached run, bit
    for bit, in its metrics and weights. Every batch is padded to the one width max_length allows: in
    fp32 an example's states differ in the last bits with the width of the batch they were computed
    in, and later epochs batch the examples differently from the first."""
    records, weights = {}, {}
    for cached in (True, False):
        trainer = Trainer(tiny(tmp_path, f"cache-{cached}", plan=plan, cache_frozen=cached, pad_multiple=32,
                               **overrides))
        records[cached] = trainer.train()
        weights[cached] = trainer.model.state_dict()
    assert records[True]["prefix_cache"]["enabled"] and not records[False]["prefix_cache"]["enabled"]
    assert records[True]["prefix_cache"]["hits"] > 0 and records[True]["prefix_cache"]["dtype"] == "float32"
    assert records[True]["metrics"] == records[False]["metrics"]
    assert weights[True].keys() == weights[False].keys()
    for name, value in weights[False].items():
        assert torch.equal(weights[True][name], value), name


def test_the_cache_under_bf16_keeps_the_accuracies(tmp_path):
    """Under bf16 the cache keeps states rounded to bf16, where the uncached run hands the next layer
    the prefix's unrounded output: the runs differ in the last bits, so this is the one comparison
    with a tolerance. This untrained model's STS predictions spread by ~1e-4, which Pearson's r would
    magnify, so the run has no STS; the accuracies must agree (1e-3 is under one of 24 examples)."""
    records = {}
    for cached in (True, False):
        trainer = Trainer(tiny(tmp_path, f"cache-{cached}", plan="FS", cache_frozen=cached, precision="bf16",
                               tasks=["sst", "para"]))
        records[cached] = trainer.train()
    assert records[True]["prefix_cache"]["dtype"] == "bfloat16" and records[True]["prefix_cache"]["hits"] > 0
    assert records[True]["metrics"].keys() == records[False]["metrics"].keys()
    for key, value in records[False]["metrics"].items():
        assert records[True]["metrics"][key] == pytest.approx(value, abs=1e-3), key


def test_later_epochs_replay_every_batch_without_tokenizing(tmp_path):
    trainer = Trainer(tiny(tmp_path, plan="FF", epochs=3))
    collated = record_collations(trainer)
    record = trainer.train()
    train_examples = sum(len(d.train) for d in trainer.data)
    dev_examples = sum(len(d.dev) for d in trainer.data)
    # every example went through the prefix (and the tokenizer) once, in the first epoch or evaluation
    assert sum(len(batch.uids) for batch in collated) == train_examples + dev_examples
    stats = record["prefix_cache"]
    assert stats["misses"] == train_examples + dev_examples
    assert stats["hits"] == 2 * train_examples + 2 * dev_examples  # epochs 2 and 3; two more evaluations
    assert stats["bytes"] == stats["predicted_bytes"]  # pooled vectors: one per example, exactly as predicted
    assert len(record["timing"]["epoch_seconds"]) == 3 and stats["fill_seconds"] > 0


def test_cached_states_equal_recomputed_ones(tmp_path):
    trainer = Trainer(tiny(tmp_path, plan="FFS", num_layers=3, epochs=1, precision="bf16"))
    trainer.train()
    data = trainer.data[1]  # para: joint pairs
    indices = data.dev_batches[0]
    batch = data.collate([data.dev[i] for i in indices])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = trainer.model.prefix_output("para", batch.inputs)
    replayed = trainer.cache.assemble(trainer.cache.lookup("para", "dev", "a", indices), CPU)
    assert replayed.hidden.dtype is torch.bfloat16
    assert torch.equal(replayed.attention_mask, batch.inputs.attention_mask)
    real = batch.inputs.attention_mask.bool()
    torch.testing.assert_close(replayed.hidden[real], fresh.hidden[real].to(torch.bfloat16), rtol=0, atol=0)
    assert trainer.cache.bytes == trainer.cache_plan["predicted_bytes"]  # real tokens x width x 2 bytes


@pytest.mark.parametrize("plan", ["FFLS", "FFBS"])
def test_the_cache_holds_states_from_below_the_first_l_or_b_piece_only(tmp_path, plan):
    # embeddings, layer.0 and layer.1 are frozen; layer.2's base is frozen too, but its updates train
    trainer = Trainer(tiny(tmp_path, plan=plan, num_layers=4, epochs=1))
    assert trainer.model.frozen_prefix == 3
    trainer.train()
    data = trainer.data[0]
    indices = data.dev_batches[0]
    batch = data.collate([data.dev[i] for i in indices]).inputs
    embeddings, layer0, layer1, *_ = trainer.model.stack("sst")
    with torch.no_grad():
        below = layer1(layer0(embeddings(batch.input_ids, batch.token_type_ids), batch.attention_mask),
                       batch.attention_mask)  # (B, L, H) at the top of layer.1, untouched by training
    replayed = trainer.cache.assemble(trainer.cache.lookup("sst", "dev", "a", indices), CPU)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(replayed.hidden[real], below[real], rtol=0, atol=0)


def test_resume_rebuilds_the_cache_instead_of_saving_it(tmp_path):
    """A resumed run fills the cache again, and then trains as the run that never stopped, bit for bit
    (one padded width, as in the fp32 comparison above: the refill computes its states in other batches)."""
    # constant: the budget grows on resumption, and a linear schedule would change shape
    constant = dict(schedule="constant", pad_multiple=32)
    Trainer(tiny(tmp_path, epochs=1, **constant)).train()
    assert not any("cache" in key for key in torch.load(tmp_path / "run" / "last.pt", weights_only=False))
    resumed = Trainer(tiny(tmp_path, epochs=2, **constant))
    record = resumed.train()
    assert record["resumed"] and record["prefix_cache"]["misses"] > 0  # filled again after the restart
    straight = Trainer(tiny(tmp_path, "straight", epochs=2, **constant))
    assert straight.train()["metrics"] == record["metrics"]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_a_cache_that_would_not_fit_is_left_off_once_with_the_reason(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(prefix_cache, "available_host_bytes", lambda: 1000)
    with caplog.at_level(logging.WARNING):
        record = Trainer(tiny(tmp_path, epochs=1)).train()
    warnings = [r.getMessage() for r in caplog.records if "frozen-prefix cache off" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on without it" in warnings[0]
    assert record["prefix_cache"]["enabled"] is False and "host memory" in record["prefix_cache"]["reason"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["prefix_cache"]["predicted_bytes"] > 1000


def test_plans_without_a_frozen_prefix_have_no_cache(tmp_path):
    trainer = Trainer(tiny(tmp_path, plan="SF", epochs=1))  # frozen, but above a trainable layer
    assert trainer.cache is None and trainer.cache_plan == {"enabled": False, "reason": "the plan has no frozen prefix"}
