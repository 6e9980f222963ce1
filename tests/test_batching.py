"""mops.multitask.data.batching: bucketed sampling covers every example once, deterministically, with little padding."""

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mops.minbert.tokenizer import BertTokenizer
from mops.multitask.data.batching import BucketBatchSampler, Collator, LabeledBatch, restore_order, token_lengths
from mops.multitask.data.examples import Example
from mops.multitask.data.synthetic import make_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer.from_pretrained()


def mixed_lengths(n=3000, seed=0):
    rng = random.Random(seed)
    return [rng.choice([rng.randint(5, 20), rng.randint(20, 80), rng.randint(80, 300)]) for _ in range(n)]


def padding_waste(batches, lengths):
    """Fraction of the padded (rows x width) cells that hold padding."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


@pytest.mark.parametrize("n, batch_size", [(1000, 32), (37, 8), (5, 16), (0, 4)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_exactly_once(n, batch_size, shuffle):
    sampler = BucketBatchSampler(mixed_lengths(n), batch_size, shuffle=shuffle, seed=3, bucket_batches=4)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert len(batches) == len(sampler)
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert sum(len(b) < batch_size for b in batches) <= 1


def test_drop_last_drops_only_the_short_batch():
    sampler = BucketBatchSampler(mixed_lengths(100), 32, seed=0, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 and all(len(b) == 32 for b in batches)


def test_deterministic_per_seed_and_epoch():
    lengths = mixed_lengths(500)
    a = BucketBatchSampler(lengths, 16, seed=7)
    b = BucketBatchSampler(lengths, 16, seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(BucketBatchSampler(lengths, 16, seed=8)) != list(BucketBatchSampler(lengths, 16, seed=7))


def test_bucketing_cuts_padding_waste():
    lengths = mixed_lengths()
    bucketed = padding_waste(list(BucketBatchSampler(lengths, 32, seed=0)), lengths)
    perm = np.random.default_rng(0).permutation(len(lengths)).tolist()
    random_batches = [perm[i : i + 32] for i in range(0, len(perm), 32)]
    unbucketed = padding_waste(random_batches, lengths)
    assert unbucketed > 0.5  # the corpus really is mixed
    assert bucketed < 0.1 * unbucketed, (bucketed, unbucketed)


def test_eval_mode_sorted_fixed_and_restorable():
    lengths = mixed_lengths(103)
    sampler = BucketBatchSampler(lengths, 10, shuffle=False)
    batches = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == batches
    flat = [i for b in batches for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths)
    outputs = [[lengths[i] * 10 for i in b] for b in batches]  # a stand-in for per-example predictions
    assert restore_order(batches, outputs) == [x * 10 for x in lengths]
    with pytest.raises(ValueError, match="came back with"):
        restore_order(batches, [o[:-1] for o in outputs])


def test_token_lengths_match_the_collated_mask(tokenizer):
    corpus = make_corpus(0, {"train": 40})
    for task, siamese in [("sst", False), ("para", False), ("sts", True)]:
        examples = corpus[task]["train"]
        lengths = token_lengths(examples, tokenizer, max_length=24, siamese=siamese, chunk=16)
        batch = Collator(tokenizer, max_length=24, siamese=siamese, regression=task == "sts")(examples)
        expected = batch.inputs.attention_mask.sum(1)
        if siamese:
            expected = torch.maximum(expected, batch.inputs_b.attention_mask.sum(1))
        assert lengths == expected.tolist()
        assert max(lengths) <= 24


def test_single_sentence_batch_long_labels(tokenizer):
    examples = [Example("a", "a fine film .", None, 3), Example("b", "dull .", None, 0)]
    batch = Collator(tokenizer, max_length=16)(examples)
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [3, 0]
    assert batch.uids == ["a", "b"] and batch.inputs_b is None
    ids, mask = batch.inputs.input_ids, batch.inputs.attention_mask
    assert ids.shape == (2, 6)  # [CLS] a fine film . [SEP] is the longest: padded to it, no further
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert ids[0, 0] == tokenizer.cls_id and ids[0, 5] == tokenizer.sep_id and ids[1, 4] == tokenizer.pad_id
    assert batch.inputs.token_type_ids.sum() == 0


def test_pair_batch_joint_and_float_labels(tokenizer):
    examples = [Example("a", "a man eats", "a man is eating", 4.5), Example("b", "dogs run", "cats", 1.0)]
    batch = Collator(tokenizer, max_length=32, regression=True)(examples)
    assert batch.labels.dtype == torch.float32 and batch.labels.tolist() == [4.5, 1.0]
    ids, types = batch.inputs.input_ids, batch.inputs.token_type_ids
    n_a, n_b = len(tokenizer.tokenize("a man eats")), len(tokenizer.tokenize("a man is eating"))
    assert ids.shape == (2, n_a + n_b + 3)
    assert types[0].tolist() == [0] * (n_a + 2) + [1] * (n_b + 1)
    assert (ids[0] == tokenizer.sep_id).sum() == 2


def test_siamese_batch_two_encodings(tokenizer):
    examples = [Example("a", "how do i cook rice ?", "rice ?", 1), Example("b", "why ?", "why is it so ?", 0)]
    batch = Collator(tokenizer, max_length=32, siamese=True)(examples)
    assert batch.inputs.input_ids.shape == (2, 8) and batch.inputs_b.input_ids.shape == (2, 7)
    assert batch.inputs.attention_mask.sum(1).tolist() == [8, 4]
    assert batch.inputs.token_type_ids.sum() == 0 and batch.inputs_b.token_type_ids.sum() == 0
    assert batch.inputs_b.attention_mask.sum(1).tolist() == [4, 7]
    assert batch.labels.dtype == torch.long
    moved = batch.to("cpu")
    assert isinstance(moved, LabeledBatch) and moved.inputs_b is not None


def test_max_length_truncates(tokenizer):
    batch = Collator(tokenizer, max_length=8)([Example("a", "word " * 50, "other " * 50, 1)])
    assert batch.inputs.input_ids.shape == (1, 8)


def test_unlabelled_and_bad_batches(tokenizer):
    collate = Collator(tokenizer)
    assert collate([Example("t", "test row", None, None)]).labels is None
    with pytest.raises(ValueError, match="1 of 2 examples in the batch have no label"):
        collate([Example("t", "x", None, None), Example("u", "y", None, 1)])
    with pytest.raises(ValueError, match="mixes single sentences and sentence pairs"):
        collate([Example("t", "x", None, 1), Example("u", "y", "z", 1)])
    with pytest.raises(ValueError, match="siamese encoding needs sentence pairs"):
        Collator(tokenizer, siamese=True)([Example("t", "x", None, 1)])
    with pytest.raises(ValueError, match="set regression=True"):
        collate([Example("t", "x", None, 2.5)])


def test_works_as_a_dataloader(tokenizer):
    examples = make_corpus(1, {"train": 64})["cfimdb"]["train"]
    sampler = BucketBatchSampler(token_lengths(examples, tokenizer, max_length=64), 8, seed=0)
    loader = DataLoader(examples, batch_sampler=sampler, collate_fn=Collator(tokenizer, max_length=64))
    uids = [uid for batch in loader for uid in batch.uids]
    assert sorted(uids) == sorted(e.uid for e in examples)
