"""A task's data as the trainer walks it: the order of its batches and its dev sample."""

from __future__ import annotations

from mops.multitask.data.batching import BucketBatchSampler
from mops.multitask.training.task_data import TaskData, dev_sample


def walker(n: int = 10, batch_size: int = 4) -> TaskData:
    sampler = BucketBatchSampler([5 + i % 3 for i in range(n)], batch_size, seed=1)
    return TaskData(task=None, train=list(range(n)), dev=[], sampler=sampler, dev_batches=[], collate=None, tokens=0)


def test_walks_each_epoch_whole_then_the_next_reshuffled():
    data, position = walker(), [0, 0]
    epochs = [[data.next_batch(position) for _ in range(3)] for _ in range(2)]  # 10 examples in batches of 4: 3 a epoch
    for batches in epochs:
        assert sorted(i for batch in batches for i in batch) == list(range(10))
    assert epochs[0] != epochs[1]
    assert position == [1, 3]


def test_a_walk_resumed_from_its_position_goes_on_the_same_way():
    whole, position = walker(), [0, 0]
    order = [whole.next_batch(position) for _ in range(7)]
    first, position = walker(), [0, 0]
    head = [first.next_batch(position) for _ in range(4)]
    resumed = walker()  # a fresh process: no cached epoch, only the saved position
    tail = [resumed.next_batch(position) for _ in range(3)]
    assert head + tail == order


def test_a_capped_dev_set_is_a_fixed_random_sample_in_file_order():
    dev = list(range(100))
    sample = dev_sample(dev, 10)
    assert len(sample) == 10 and sample == sorted(sample) and sample != dev[:10]  # not the first lines
    assert dev_sample(dev, 10) == sample  # every run gets the same examples
    assert dev_sample(dev, 100) == dev and dev_sample(dev, None) == dev
