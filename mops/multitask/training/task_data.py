"""One task's examples as the trainer walks them: length-bucketed training batches, dev batches,
the collator that turns examples into model inputs, and the position of the walk (resumable)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from mops.minbert import BertTokenizer
from mops.multitask.data.batching import BucketBatchSampler, Collator, token_lengths
from mops.multitask.data.tasks import Task
from mops.multitask.sharing.model import HeadConfig
from mops.multitask.training.config import TrainConfig


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
    tokens: int  # real tokens of the training and dev examples in one encoding (siamese: the longer side)
    symmetric: bool = False  # pairs read in both orders (`HeadConfig.symmetric`)
    seed: int = 0  # of the training batches' orders
    epoch_cache: tuple[int, list[list[int]]] | None = None  # (epoch, its batches)

    def sides(self, swapped: bool = False) -> tuple[str, ...]:
        """The encodings a batch needs, as the frozen-prefix cache names them: "a" (a sentence or a
        joint pair) and "b" (a siamese pair's second sentence); read swapped, a joint pair is "ba"
        (another encoding) and a siamese pair is its two sentences exchanged."""
        if self.collate.siamese:
            return ("b", "a") if swapped else ("a", "b")
        return ("ba",) if swapped else ("a",)

    @property
    def encodings(self) -> int:
        """Distinct encodings of one example the cache may keep: two for siamese or symmetric pairs."""
        return 2 if self.collate.siamese or self.symmetric else 1

    def examples(self, split: str, indices: list[int], swapped: bool = False) -> list:
        """The examples of a batch, each pair's sentences exchanged when `swapped`."""
        chosen = [(self.train if split == "train" else self.dev)[i] for i in indices]
        return [swap_pair(e) for e in chosen] if swapped else chosen

    def swapped_at(self, position: list[int]) -> bool:
        """Whether the training batch `next_batch` just returned is read in the (b, a) order: a fair coin
        drawn from (seed, task, epoch, batch index), so a resumed run draws the same, and every rank too."""
        epoch, after = position
        return self.symmetric and random.Random(f"{self.seed}/{self.task.name}/{epoch}/{after - 1}").random() < 0.5

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


def swap_pair(example):
    """The pair (b, a) of an example (a, b), labels and ids unchanged."""
    return dataclasses.replace(example, text_a=example.text_b, text_b=example.text_a)


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
    return TaskData(task, train, dev, BucketBatchSampler(lengths, config.batch_size, seed=config.seed), dev_batches,
                    collate, sum(lengths) + sum(dev_lengths), head.symmetric(task), config.seed)
