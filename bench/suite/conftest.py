"""Shared set-up of the benchmark suite (`pytest --benchmark`).

Every benchmark's `extra_info` is tagged with the device and library versions; the root
conftest saves the run as pytest-benchmark JSON under bench/results/, named after the device.
"""

from __future__ import annotations

import pytest
import torch

from multitask.environment import device_name, versions


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
