"""Symmetric pairs (`--symmetric-pairs`): a pair task whose label does not depend on the order of its
two sentences trains each batch in a random order and predicts the mean over both orders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from collations import record_examples

from mops.multitask.data.examples import Example
from mops.multitask.data.tasks import make_tasks, score
from mops.multitask.sharing.model import HeadConfig
from mops.multitask.training.config import TrainConfig, head_config
from mops.multitask.training.task_data import swap_pair
from mops.multitask.training.trainer import Trainer

SST, PARA, STS = make_tasks(["sst", "para", "sts"], "demo")


def tiny(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    """A 2-layer random encoder on 48 demo examples a task: 18 steps an epoch."""
    settings = dict(
        tasks=["sst", "para", "sts"], plan="SS", checkpoint="random", hidden_size=32, num_layers=2, data="demo",
        epochs=2, batch_size=8, max_length=32, max_train_examples=48, max_eval_examples=24, lr=1e-3,
        sampling="round_robin", symmetric_pairs=True, out_dir=str(tmp_path / name), progress=False,
        backend="torch", device="cpu",
    )
    return TrainConfig(**{**settings, **overrides})


def test_swapping_a_pair_exchanges_its_sentences_and_keeps_its_label_and_id():
    pair = Example("q7", "a cat sat", "the cat was sitting", 4.2)
    assert swap_pair(pair) == Example("q7", "the cat was sitting", "a cat sat", 4.2)
    assert swap_pair(swap_pair(pair)) == pair


def test_pair_tasks_are_read_in_both_orders_except_under_a_cosine_head():
    head = HeadConfig(symmetric_pairs=True, cosine_tasks=("sts",))
    assert [head.symmetric(task) for task in (SST, PARA, STS)] == [False, True, False]
    assert not any(HeadConfig().symmetric(task) for task in (SST, PARA, STS))  # off by default
    assert head_config(TrainConfig(symmetric_pairs=True)).symmetric(STS)


def test_each_training_batch_draws_its_order_from_its_position_alone(tmp_path):
    data = {d.task.name: d for d in Trainer(tiny(tmp_path)).data}
    positions = [[epoch, index] for epoch in range(4) for index in range(1, 51)]  # after 200 batches
    draws = [data["sts"].swapped_at(p) for p in positions]
    assert draws == [data["sts"].swapped_at(list(p)) for p in positions]  # a resumed run draws the same
    assert 70 < sum(draws) < 130  # a fair coin: 100 expected, 5 standard deviations either way
    assert draws != [data["para"].swapped_at(p) for p in positions]  # each task its own coin
    assert not any(data["sst"].swapped_at(p) for p in positions)  # single sentences have no order


def _order(handed: Example, original: Example) -> str | None:
    """"ab" or "ba": the order the collator was handed a pair in (None for a single sentence, or a
    pair of two equal sentences)."""
    if original.text_b is None or original.text_a == original.text_b:
        return None
    if (handed.text_a, handed.text_b) == (original.text_a, original.text_b):
        return "ab"
    assert (handed.text_a, handed.text_b) == (original.text_b, original.text_a), original.uid
    return "ba"


@pytest.mark.parametrize("pair_encoding", ["joint", "siamese"])
def test_training_reads_pairs_in_both_orders_and_single_sentences_as_they_are(tmp_path, pair_encoding):
    trainer = Trainer(tiny(tmp_path, pair_encoding=pair_encoding))
    handed = record_examples(trainer)
    trainer.train()
    examples = {e.uid: (d.task.name, e) for d in trainer.data for e in d.train}
    orders = {"sst": set(), "para": set(), "sts": set()}
    for batch in (b for b in handed if b[0].uid in examples):  # the training batches
        rows = {_order(e, examples[e.uid][1]) for e in batch}
        assert len(rows - {None}) <= 1  # a batch is read in one order
        orders[examples[batch[0].uid][0]] |= rows
    assert orders["sst"] == {None}
    assert orders["para"] - {None} == {"ab", "ba"} and orders["sts"] - {None} == {"ab", "ba"}


def _data(trainer: Trainer, task: str):
    return next(d for d in trainer.data if d.task.name == task)


def _dev_labels(trainer: Trainer, task: str) -> torch.Tensor:
    data = _data(trainer, task)
    return data.collate.labels(data.dev)


def _dev_predictions(trainer: Trainer, task: str, swapped: bool) -> torch.Tensor:
    """The model's raw outputs on a task's dev set, every pair read in one order, in file order."""
    data = _data(trainer, task)
    trainer.model.eval()
    with torch.no_grad():
        batch = data.collate(data.examples("dev", list(range(len(data.dev))), swapped))
        return trainer.model(task, batch.inputs, batch.inputs_b)


@pytest.mark.parametrize("pair_encoding", ["joint", "siamese"])
def test_a_dev_score_is_that_of_the_mean_over_both_orders(tmp_path, pair_encoding):
    trainer = Trainer(tiny(tmp_path, pair_encoding=pair_encoding, epochs=1))
    trainer.train()
    metrics = trainer.evaluate()
    model = trainer.model
    for name, key in (("sts", "sts_r"), ("para", "para_acc")):
        task = model.tasks[name]
        ab, ba = (_dev_predictions(trainer, name, swapped) for swapped in (False, True))
        assert not torch.allclose(ab, ba)  # the orders disagree, so their mean is a third prediction
        if task.kind == "regression":
            mean = (ab.squeeze(-1) + ba.squeeze(-1)) / 2
        else:
            mean = ((ab.softmax(-1) + ba.softmax(-1)) / 2).argmax(-1)
        assert metrics[key] == pytest.approx(score(task, mean, _dev_labels(trainer, name)), abs=1e-6), key


def test_a_dev_score_does_not_depend_on_the_order_the_file_gives_each_pair(tmp_path):
    trainer = Trainer(tiny(tmp_path, epochs=1))
    trainer.train()
    as_given = trainer.evaluate()
    for data in trainer.data:
        if data.task.pair:
            data.dev = [swap_pair(e) for e in data.dev]
    assert trainer.evaluate() == pytest.approx(as_given, abs=1e-6)


def test_without_the_option_the_order_of_a_pair_matters(tmp_path):
    trainer = Trainer(tiny(tmp_path, epochs=1, symmetric_pairs=False))
    trainer.train()
    ab, ba = (_dev_predictions(trainer, "sts", swapped) for swapped in (False, True))
    assert not torch.allclose(ab, ba)
    assert trainer.evaluate()["sts_r"] == pytest.approx(score(STS, ab.squeeze(-1), _dev_labels(trainer, "sts")),
                                                        abs=1e-6)


@pytest.mark.parametrize(("pair_encoding", "sides"), [("joint", {"a", "ba"}), ("siamese", {"a", "b"})])
def test_the_frozen_prefix_cache_keeps_each_encoding_a_pair_is_read_in(tmp_path, pair_encoding, sides):
    trainer = Trainer(tiny(tmp_path, plan="FS", pair_encoding=pair_encoding, epochs=1))
    record = trainer.train()
    for task in ("para", "sts"):
        dev = len(_data(trainer, task).dev)
        kept = {side: len(trainer.cache._store[(task, "dev", side)]) for side in sides}
        assert kept == {side: dev for side in sides}  # every dev pair, in both orders
    assert 0 < record["prefix_cache"]["bytes"] <= record["prefix_cache"]["predicted_bytes"]


def test_results_record_the_option(tmp_path):
    record = Trainer(tiny(tmp_path, steps=2, epochs=None)).train()
    assert record["config"]["symmetric_pairs"] is True
