"""Length-bucketed batches, padded only to the longest row of each batch.

Random batches of mixed-length sentences pad most rows to someone else's length; the work on
padding is wasted. `BucketBatchSampler` shuffles, then sorts within chunks of a few dozen
batches, so a batch holds sentences of similar length while batch order stays random.
`Collator` turns a batch of `Example`s into token ids and a label tensor.

With a torch DataLoader over a list of examples:

    lengths = token_lengths(examples, tokenizer, max_length=128)
    sampler = BucketBatchSampler(lengths, batch_size=32, seed=0)
    loader = DataLoader(examples, batch_sampler=sampler, collate_fn=Collator(tokenizer, 128))
    for epoch in range(n): sampler.set_epoch(epoch); ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Sampler

from mops.minbert.tokenizer import Batch, BertTokenizer
from mops.multitask.data.examples import Example

T = TypeVar("T")


def _pair_kind(examples: Sequence[Example]) -> bool:
    """True when every example is a pair, False when none is; mixing the two is an error."""
    pairs = {e.text_b is not None for e in examples}
    if len(pairs) > 1:
        raise ValueError("a batch mixes single sentences and sentence pairs; keep each task's examples apart")
    return pairs == {True}


def token_lengths(
    examples: Sequence[Example],
    tokenizer: BertTokenizer,
    max_length: int = 512,
    siamese: bool = False,
    chunk: int = 1024,
) -> list[int]:
    """Tokens per example as `Collator` will encode it (specials and truncation included).

    Pairs count `[CLS] a [SEP] b [SEP]`; siamese pairs count the longer of the two encodings,
    which is what sets the padded width. Computed once, up front, for the sampler.
    """
    is_pair = _pair_kind(examples) if examples else False
    if siamese and not is_pair:
        raise ValueError("siamese encoding needs sentence pairs; these examples are single sentences")
    lengths: list[int] = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        first = [e.text_a for e in part]
        if siamese:
            a = tokenizer(first, max_length=max_length).attention_mask.sum(1)
            b = tokenizer([e.text_b for e in part], max_length=max_length).attention_mask.sum(1)
            lengths += torch.maximum(a, b).tolist()
        else:
            second = [e.text_b for e in part] if is_pair else None
            lengths += tokenizer(first, second, max_length=max_length).attention_mask.sum(1).tolist()
    return lengths


class BucketBatchSampler(Sampler[list[int]]):
    """Yields lists of example indices, each list one batch of similar token lengths.

    Training (`shuffle=True`): per epoch, a permutation seeded by (seed, epoch) is cut into chunks
    of `bucket_batches * batch_size`; each chunk is sorted by length and cut into batches; the
    batches of all chunks are shuffled. Every index appears exactly once per epoch (the last
    batch may be short unless `drop_last`). Call `set_epoch` before each epoch.

    Evaluation (`shuffle=False`): all indices sorted by length (ties keep their order), cut into
    batches in that order, the same every time. Put predictions back with `restore_order`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        bucket_batches: int = 50,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if bucket_batches < 1:
            raise ValueError(f"bucket_batches must be at least 1, not {bucket_batches}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's batches (what iterating yields), as a list."""
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            out = [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            perm = rng.permutation(n)
            span = self.batch_size * self.bucket_batches
            out = []
            for start in range(0, n, span):
                chunk = perm[start : start + span]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                out += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
            out = [out[i] for i in rng.permutation(len(out))]
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        n = len(self.lengths)
        if self.drop_last:
            return n // self.batch_size
        # Only the last chunk can end in a short batch when a chunk is a whole number of batches.
        return (n + self.batch_size - 1) // self.batch_size


def restore_order(index_batches: Iterable[Sequence[int]], outputs: Iterable[Sequence[T]]) -> list[T]:
    """Put per-batch outputs (one value per index) back in the examples' original order."""
    placed: dict[int, T] = {}
    for indices, values in zip(index_batches, outputs, strict=True):
        values = list(values)
        if len(values) != len(indices):
            raise ValueError(f"a batch of {len(indices)} examples came back with {len(values)} outputs")
        placed.update(zip(indices, values))
    if sorted(placed) != list(range(len(placed))):
        raise ValueError("the batches do not cover indices 0..n-1 exactly once")
    return [placed[i] for i in range(len(placed))]


@dataclass
class LabeledBatch:
    """Model inputs and targets of one batch."""

    inputs: Batch  # (B, L): the sentence, the joint pair, or the first sentence when siamese
    labels: torch.Tensor | None  # (B,): long classes or float scores; None for unlabelled examples
    uids: list[str]
    inputs_b: Batch | None = None  # (B, L2): the second sentence, encoded alone, when siamese

    def to(self, device: torch.device | str) -> LabeledBatch:
        return LabeledBatch(
            self.inputs.to(device),
            None if self.labels is None else self.labels.to(device),
            self.uids,
            None if self.inputs_b is None else self.inputs_b.to(device),
        )


@dataclass
class Collator:
    """collate_fn for a DataLoader: examples -> `LabeledBatch`.

    Pairs become `[CLS] a [SEP] b [SEP]` with token types 0/1, or with `siamese=True` two
    separate batches (`inputs` for a, `inputs_b` for b). Labels are long for classification and
    float32 when `regression`; a batch whose examples are all unlabelled gets `labels=None`.
    """

    tokenizer: BertTokenizer
    max_length: int = 128
    siamese: bool = False
    regression: bool = False
    pad_multiple: int = 1  # padded lengths are multiples of this (masked like any padding)

    def __call__(self, examples: Sequence[Example]) -> LabeledBatch:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        is_pair = _pair_kind(examples)
        first = [e.text_a for e in examples]
        second = [e.text_b for e in examples] if is_pair else None
        inputs_b = None
        if self.siamese:
            if not is_pair:
                raise ValueError("siamese encoding needs sentence pairs; these examples are single sentences")
            inputs = self.tokenizer(first, max_length=self.max_length, pad_to_multiple_of=self.pad_multiple)
            inputs_b = self.tokenizer(second, max_length=self.max_length, pad_to_multiple_of=self.pad_multiple)
        else:
            inputs = self.tokenizer(first, second, max_length=self.max_length, pad_to_multiple_of=self.pad_multiple)
        return LabeledBatch(inputs, self.labels(examples), [e.uid for e in examples], inputs_b)

    def labels(self, examples: Sequence[Example]) -> torch.Tensor | None:
        """The targets of a batch: long classes, float scores (regression), or None if unlabelled."""
        labels = [e.label for e in examples]
        missing = sum(label is None for label in labels)
        if missing == len(labels):
            return None
        if missing:
            raise ValueError(f"{missing} of {len(labels)} examples in the batch have no label; keep test data apart")
        if self.regression:
            return torch.tensor(labels, dtype=torch.float32)
        if any(not float(label).is_integer() for label in labels):
            raise ValueError("a classification batch holds non-integer labels; set regression=True for scores")
        return torch.tensor([int(label) for label in labels], dtype=torch.long)
