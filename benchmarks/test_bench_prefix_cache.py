"""The frozen-prefix cache on the CPU: three demo epochs of MiniLM with the cache on and off.

The figures are each run's `epoch_seconds`: the first epoch fills the cache (its cost against the
uncached first epoch), the later ones replay it (their mean against the uncached later epochs').
With tasks sampled in proportion to their size, a task's first pass can run into the second
epoch, so the second still fills a little. Plans with more frozen layers save more; FFFFFF
trains only the heads once the pooled vectors are kept.
"""

from __future__ import annotations

import pytest

from benchmarks.conftest import requires_embedded_checkpoint
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.trainer import Trainer


@requires_embedded_checkpoint
@pytest.mark.parametrize("cache", ["on", "off"])
@pytest.mark.parametrize("plan", ["FFFFFF", "FFFFSS", "FFFSSS"])
def test_prefix_cache_cpu_minilm_demo(benchmark, tmp_path, plan, cache):
    config = TrainConfig(tasks=["sst", "para", "sts"], plan=plan, data="demo", epochs=3, batch_size=32,
                         max_length=64, lr=1e-4, backend="torch", cache_frozen=cache == "on",
                         out_dir=str(tmp_path / f"{plan}-{cache}"), progress=False)
    record = benchmark.pedantic(lambda: Trainer(config).train(fresh=True), rounds=1, iterations=1)
    first, *later = record["timing"]["epoch_seconds"]
    benchmark.group = f"prefix-cache-cpu-minilm-demo-{plan}"
    benchmark.extra_info.update(
        plan=plan, cache=cache, epoch_seconds=record["timing"]["epoch_seconds"], first_epoch_seconds=first,
        later_epochs_mean_seconds=sum(later) / len(later),
        prefix_cache=record["prefix_cache"], overall=record["metrics"]["overall"],
    )
