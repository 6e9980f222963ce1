"""Pooling: how the last hidden states become the one vector each head reads (mean, cls, pooler),
inside the multitask model, through the frozen-prefix cache, and across a resumed run."""

from __future__ import annotations

import pytest
import torch

from mops.minbert import Batch, BertConfig, BertModel
from mops.multitask.data.tasks import Task
from mops.multitask.sharing.model import HeadConfig, MultitaskBert
from mops.multitask.sharing.plan import parse_plan
from mops.multitask.sharing.pooling import ClsPooling, MeanPooling, weightless_pooling
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.trainer import Trainer

CONFIG = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64)
TASKS = [Task("a", "classification", 3, "accuracy", False, lambda split: [])]


def encoder(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(CONFIG, backend="torch").eval()


def build(plan: str, pooling: str) -> MultitaskBert:
    return MultitaskBert(encoder(), parse_plan(plan, ("a",), 2), TASKS, HeadConfig(pooling=pooling)).eval()


def batch_of(rows: list[list[int]], length: int) -> Batch:
    """Rows of token ids padded with 0 to `length`."""
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return Batch(ids, mask, torch.zeros_like(ids))


SHORT, LONG = [2, 17, 33, 9], [2, 40, 41, 42, 43, 44, 45, 3]


def test_mean_pooling_averages_real_tokens_only():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # (B, L, H)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = MeanPooling()(hidden, mask)
    torch.testing.assert_close(pooled, torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]), rtol=0, atol=0)


def test_cls_pooling_is_the_first_tokens_state():
    hidden = torch.randn(3, 5, 4)
    assert torch.equal(ClsPooling()(hidden, torch.ones(3, 5)), hidden[:, 0])


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_a_padded_batch_and_an_unpadded_one_give_the_same_vector(pooling):
    model = build("SS", pooling)
    with torch.no_grad():
        alone = model.encode("a", batch_of([SHORT], len(SHORT)))  # no padding at all
        padded = model.encode("a", batch_of([SHORT, LONG], len(LONG)))[0]  # padded with 4 tokens
    torch.testing.assert_close(padded, alone[0], rtol=0, atol=1e-5)


def test_each_pooling_reads_the_encoders_last_hidden_state_as_named():
    reference = encoder()
    batch = batch_of([SHORT, LONG], len(LONG))
    with torch.no_grad():
        out = reference(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        hidden, mask = out["last_hidden_state"], batch.attention_mask.unsqueeze(-1).float()
        expected = {"mean": (hidden * mask).sum(1) / mask.sum(1), "cls": hidden[:, 0], "pooler": out["pooler_output"]}
        for pooling, vectors in expected.items():
            torch.testing.assert_close(build("SS", pooling).encode("a", batch), vectors, rtol=0, atol=1e-5)


def test_weightless_pooling_replaces_the_pooler_piece_and_gets_gradients_through():
    model = build("SS", "mean").train()
    assert not any(name.startswith("pieces.pooler.") for name in model.state_dict())
    batch = batch_of([SHORT, LONG], len(LONG))
    model.loss("a", model("a", batch), torch.tensor([0, 2])).backward()
    top = model.stack("a")[-2]  # layer.1, right under the pooling
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())


def test_a_plan_that_sets_the_pooler_is_refused_when_pooling_reads_none():
    with pytest.raises(ValueError, match=r"sets the pooler \(pooler=I\) but pooling 'mean' reads no pooler"):
        MultitaskBert(encoder(), parse_plan("SS,pooler=I", ("a",), 2), TASKS, HeadConfig(pooling="mean"))
    with pytest.raises(ValueError, match="pooling must be one of mean, cls, pooler; got 'max'"):
        HeadConfig(pooling="max")
    with pytest.raises(ValueError, match="weightless ones are mean and cls"):
        weightless_pooling("pooler")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_whole_frozen_encoder_hands_the_cache_pooled_vectors(pooling):
    model = build("FF", pooling)
    assert model.prefix_is_whole_encoder
    batch = batch_of([SHORT, LONG], len(LONG))
    with torch.no_grad():
        prefix = model.prefix_output("a", batch)
        assert prefix.attention_mask is None and prefix.hidden.shape == (2, CONFIG.hidden_size)
        torch.testing.assert_close(model.encode("a", None, prefix), build("SS", pooling).encode("a", batch),
                                   rtol=0, atol=1e-5)


def tiny(tmp_path, name: str, steps: int, **overrides) -> TrainConfig:
    settings = dict(tasks=["sst", "para", "sts"], plan="FS", checkpoint="random", hidden_size=32, num_layers=2,
                    data="demo", steps=steps, batch_size=8, max_length=32, eval_every=3, max_eval_examples=24,
                    lr=1e-3, schedule="constant", out_dir=str(tmp_path / name), progress=False, backend="torch",
                    device="cpu")
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.parametrize("options", [
    dict(pooling="mean"),
    dict(pooling="cls", scale_regression=True),
    dict(pooling="mean", pair_encoding="siamese", cosine_tasks=["sts"]),
    dict(pooling="mean", symmetric_pairs=True),
], ids=["mean", "cls-scaled-targets", "mean-siamese-cosine", "mean-symmetric-pairs"])
def test_a_resumed_run_with_each_option_continues_exactly_and_records_it(tmp_path, options):
    straight = Trainer(tiny(tmp_path, "straight", 6, **options))
    straight.train()
    Trainer(tiny(tmp_path, "split", 3, **options)).train()
    second = Trainer(tiny(tmp_path, "split", 6, **options))
    record = second.train()
    assert record["resumed"] is True
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert {key: record["config"][key] for key in options} == options


def test_cosine_tasks_must_be_pair_tasks_the_run_trains(tmp_path):
    with pytest.raises(ValueError, match="cosine_tasks names sts, which the run does not train"):
        tiny(tmp_path, "x", 1, tasks=["sst", "para"], cosine_tasks=["sts"])
    with pytest.raises(ValueError, match="unknown cosine_task"):
        tiny(tmp_path, "x", 1, cosine_tasks=["sst"])  # single sentences: nothing to compare
