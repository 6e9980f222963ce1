"""One task's examples as the trainer walks them: length-bucketed training batches, dev batches,
the collator that turns examples into model inputs, and the position of the walk (resumable)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from minbert import BertTokenizer

from .batching import BucketBatchSampler, Collator, token_lengths
from .config import TrainConfig
from .model import HeadConfig
from .tasks import Task


class NoTrainingData(ValueError):
    """A task with no training examples (an empty file, or a cap of zero)."""


@dataclass
class TaskData:
    task: Task
    train: list
    dev: list
    sampler: BucketBatchSampler  # length-bucketed training batches, reshuffled per epoch
    dev_batches: list[list[int]]  # dev indices sorted by length, cut into batches
    collate: Collator
    tokens: int  # real tokens of the training and dev sets as encoded (both sentences of siamese pairs, at most)
    epoch_cache: tuple[int, list[list[int]]] | None = None  # (epoch, its batches)

    @property
    def sides(self) -> tuple[str, ...]:
        """The encodings an example needs: "a" (a sentence or a joint pair), and "b" for siamese pairs."""
        return ("a", "b") if self.collate.siamese else ("a",)

    def next_batch(self, position: list[int]) -> list[int]:
        """The indices of the next training batch, walking the bucketed epochs in order. `position` is
        [epoch, batch index], advanced in place (the trainer's state keeps it, so a resumed run goes on
        where it stopped)."""
        while True:
            epoch, index = position
            if self.epoch_cache is None or self.epoch_cache[0] != epoch:
                self.sampler.set_epoch(epoch)
                self.epoch_cache = (epoch, self.sampler.batches())
            batches = self.epoch_cache[1]
            if index < len(batches):
                position[1] += 1
                return batches[index]
            position[0], position[1] = epoch + 1, 0


def dev_sample(dev: list, cap: int | None) -> list:
    """At most `cap` dev examples, drawn evenly at random (seed 0, whatever the run's seed, so runs
    that share a cap share their dev examples), in file order. The first `cap` lines of a file are
    not a fair sample: the CS224N files are not shuffled."""
    if cap is None or cap >= len(dev):
        return dev
    return [dev[i] for i in sorted(random.Random(0).sample(range(len(dev)), cap))]


def load_task_data(task: Task, config: TrainConfig, tokenizer: BertTokenizer, head: HeadConfig,
                   pad_multiple: int) -> TaskData:
    """Read a task's splits (capped as the config says), measure every example's tokens, and bucket them."""
    train = task.loader("train")[: config.max_train_examples]  # a cap of None keeps them all
    dev = dev_sample(task.loader("dev"), config.max_eval_examples)
    if not train:
        raise NoTrainingData(f"task {task.name} has no training examples")
    siamese = head.siamese(task)
    lengths = token_lengths(train, tokenizer, config.max_length, siamese)
    dev_lengths = token_lengths(dev, tokenizer, config.max_length, siamese)
    dev_batches = BucketBatchSampler(dev_lengths, 2 * config.batch_size, shuffle=False).batches()
    collate = Collator(tokenizer, config.max_length, siamese, regression=task.kind == "regression",
                       pad_multiple=pad_multiple)
    tokens = (sum(lengths) + sum(dev_lengths)) * (2 if siamese else 1)  # siamese: the longer side, twice
    return TaskData(task, train, dev, BucketBatchSampler(lengths, config.batch_size, seed=config.seed), dev_batches,
                    collate, tokens)
