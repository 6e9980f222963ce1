"""mops.bench.memory: the peak-memory sampler.

The RSS fallback is measured for real on this machine. The NVML path runs against a fake
`pynvml` module and fake `torch.cuda` hooks, so the GPU logic (UUID mapping, process versus
device usage, the baseline, failures) is exercised without a GPU.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from types import SimpleNamespace

import pytest
import torch

from mops.bench.memory import MemorySampler, find_nvml_handle, normalize_uuid

MiB = 2**20


class FakeNVMLError(Exception):
    pass


class FakeNvml(types.ModuleType):
    """Just the NVML calls the sampler makes, over a list of devices in NVML's own order."""

    def __init__(self, devices: list[dict]):
        super().__init__("pynvml")
        self.NVMLError = FakeNVMLError
        self.devices = devices  # each: uuid, used, procs [(pid, bytes)]
        self.init_error: Exception | None = None
        self.fail_after: int | None = None  # memory queries that succeed before one raises
        self.queries = 0
        self.shutdowns = 0

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.devices[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetUUID(self, handle):
        return handle["uuid"]

    def _count_query(self):
        self.queries += 1
        if self.fail_after is not None and self.queries > self.fail_after:
            raise FakeNVMLError("GPU is lost")

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._count_query()
        return SimpleNamespace(used=handle["used"], total=80 * 2**30, free=80 * 2**30 - handle["used"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._count_query()
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in handle["procs"]]


CUDA_UUID = "5a1b2c3d-0000-4000-8000-00000000aaaa"  # how PyTorch prints it: no "GPU-" prefix
OTHER_UUID = "GPU-99999999-0000-4000-8000-00000000bbbb"


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as if CUDA device 0 were the GPU with CUDA_UUID and the allocator held `reserved`."""
    state = SimpleNamespace(reserved=0, max_allocated=123 * MiB, max_reserved=456 * MiB, resets=[])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=CUDA_UUID))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda i=None: state.resets.append(i))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i=None: state.reserved)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i=None: state.max_allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda i=None: state.max_reserved)
    return state


def install(monkeypatch, nvml: FakeNvml) -> FakeNvml:
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


def two_gpus(ours: dict) -> FakeNvml:
    """NVML index 0 is someone else's GPU; ours is index 1 (as with CUDA_VISIBLE_DEVICES=1)."""
    other = {"uuid": OTHER_UUID, "used": 70_000 * MiB, "procs": [(os.getpid(), 60_000 * MiB)]}
    return FakeNvml([other, {"uuid": "GPU-" + CUDA_UUID.upper(), **ours}])


def wait_for_queries(nvml: FakeNvml, count: int, timeout_s: float = 5.0) -> None:
    """Block until the sampling thread has queried NVML `count` more times."""
    target = nvml.queries + count
    deadline = time.monotonic() + timeout_s
    while nvml.queries < target:
        assert time.monotonic() < deadline, "the sampling thread stopped querying NVML"
        time.sleep(0.002)


# -- UUID mapping ------------------------------------------------------------------------------


def test_uuids_compare_across_prefix_case_and_bytes():
    assert normalize_uuid(b"GPU-5A1B") == normalize_uuid("5a1b") == normalize_uuid("MIG-5a1b") == "5a1b"
    assert normalize_uuid("GPU-5a1b") != normalize_uuid("GPU-5a1c")


def test_handle_is_found_by_uuid_not_by_index():
    nvml = two_gpus({"used": 0, "procs": []})
    nvml.devices[1]["uuid"] = ("GPU-" + CUDA_UUID).encode()  # older bindings return bytes
    assert find_nvml_handle(nvml, CUDA_UUID) is nvml.devices[1]


def test_unknown_uuid_is_a_lookup_error_that_names_it():
    nvml = FakeNvml([{"uuid": OTHER_UUID, "used": 0, "procs": []}])
    with pytest.raises(LookupError, match=CUDA_UUID):
        find_nvml_handle(nvml, CUDA_UUID)


# -- NVML sources -------------------------------------------------------------------------------


def test_process_source_when_nvml_lists_this_pid(monkeypatch, fake_cuda):
    nvml = install(monkeypatch, two_gpus({"used": 9_000 * MiB, "procs": [(1, 5_000 * MiB), (os.getpid(), 800 * MiB)]}))
    ours = nvml.devices[1]
    with MemorySampler("cuda:0", interval_s=0.001) as sampler:
        ours["procs"][1] = (os.getpid(), 3_000 * MiB)  # a short spike...
        wait_for_queries(nvml, 3)
        ours["procs"][1] = (os.getpid(), 1_000 * MiB)  # ...gone before the block ends
    reading = sampler.result()
    assert reading.source == "nvml-process"
    assert reading.peak_bytes == 3_000 * MiB  # ours, not the other GPU's 60 000 MiB nor the device total
    assert reading.start_bytes == 800 * MiB
    assert reading.baseline_bytes is None
    assert (reading.torch_max_allocated, reading.torch_max_reserved) == (123 * MiB, 456 * MiB)
    assert fake_cuda.resets == [0]
    assert reading.fallback is None and reading.sampling_error is None
    assert nvml.shutdowns == 1


def test_device_source_minus_baseline_when_pid_is_not_listed(monkeypatch, fake_cuda):
    # In a container NVML lists host PIDs, so ours is missing; 1 000 MiB is used by others at start.
    nvml = install(monkeypatch, two_gpus({"used": 1_000 * MiB, "procs": [(1, 500 * MiB)]}))
    ours = nvml.devices[1]
    with MemorySampler("cuda:0", interval_s=0.001) as sampler:
        ours["used"] = 4_000 * MiB
        wait_for_queries(nvml, 3)
        ours["used"] = 1_500 * MiB
    reading = sampler.result()
    assert reading.source == "nvml-device"
    assert reading.baseline_bytes == 1_000 * MiB
    assert reading.peak_bytes == 3_000 * MiB
    assert reading.start_bytes == 0


def test_baseline_keeps_what_the_allocator_already_holds(monkeypatch, fake_cuda):
    # The model (200 MiB, reserved by PyTorch) was moved to the GPU before the sampler started.
    fake_cuda.reserved = 200 * MiB
    install(monkeypatch, two_gpus({"used": 1_200 * MiB, "procs": []}))
    with MemorySampler("cuda:0", interval_s=0.01) as sampler:
        pass
    reading = sampler.result()
    assert reading.baseline_bytes == 1_000 * MiB
    assert reading.peak_bytes == 200 * MiB


def test_listed_pid_without_a_figure_falls_to_the_device_source(monkeypatch, fake_cuda):
    install(monkeypatch, two_gpus({"used": 2_000 * MiB, "procs": [(os.getpid(), None)]}))
    with MemorySampler("cuda:0", interval_s=0.01) as sampler:
        pass
    assert sampler.result().source == "nvml-device"


# -- fallbacks and failures ---------------------------------------------------------------------


def test_nvml_init_failure_falls_back_to_rss_with_the_reason(monkeypatch, fake_cuda):
    nvml = install(monkeypatch, two_gpus({"used": 0, "procs": []}))
    nvml.init_error = FakeNVMLError("Driver Not Loaded")
    with MemorySampler("cuda:0", interval_s=0.01) as sampler:
        pass
    reading = sampler.result()
    assert reading.source == "rss"
    assert "Driver Not Loaded" in reading.fallback
    assert reading.peak_bytes > 0
    assert reading.torch_max_allocated == 123 * MiB  # PyTorch's peaks are still reported


def test_missing_pynvml_falls_back_to_rss(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with MemorySampler("cuda:0", interval_s=0.01) as sampler:
        pass
    reading = sampler.result()
    assert reading.source == "rss"
    assert "pynvml" in reading.fallback


def test_no_matching_uuid_falls_back_to_rss(monkeypatch, fake_cuda):
    nvml = install(monkeypatch, FakeNvml([{"uuid": OTHER_UUID, "used": 0, "procs": []}]))
    with MemorySampler("cuda:0", interval_s=0.01) as sampler:
        pass
    reading = sampler.result()
    assert reading.source == "rss"
    assert CUDA_UUID in reading.fallback
    assert nvml.shutdowns == 1


def test_sampling_error_mid_run_is_recorded_and_the_run_goes_on(monkeypatch, fake_cuda):
    nvml = install(monkeypatch, two_gpus({"used": 1_000 * MiB, "procs": []}))
    ours = nvml.devices[1]
    with MemorySampler("cuda:0", interval_s=0.001) as sampler:
        ours["used"] = 2_500 * MiB
        wait_for_queries(nvml, 2)
        nvml.fail_after = nvml.queries  # every later query raises
        time.sleep(0.05)
        ours["used"] = 9_000 * MiB  # after sampling stopped: must not be seen
        samples_when_failed = sampler.result().samples
        time.sleep(0.02)
        assert sampler.result().samples == samples_when_failed  # the thread really stopped
    reading = sampler.result()
    assert "GPU is lost" in reading.sampling_error
    assert reading.peak_bytes == 1_500 * MiB
    assert reading.source == "nvml-device"


def test_the_runs_own_exception_passes_through_and_leaves_a_reading(monkeypatch, fake_cuda):
    install(monkeypatch, two_gpus({"used": 1_000 * MiB, "procs": [(os.getpid(), 700 * MiB)]}))
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        with MemorySampler("cuda:0", interval_s=0.01) as sampler:
            raise RuntimeError("CUDA out of memory")
    assert sampler.result().peak_bytes == 700 * MiB
    assert not any(t.name == "mops-memory-sampler" for t in threading.enumerate())


# -- the RSS fallback, measured on this machine ---------------------------------------------------


def rss_growth(allocate_bytes: int) -> int:
    with MemorySampler("cpu", interval_s=0.005) as sampler:
        if allocate_bytes:
            block = torch.ones(allocate_bytes // 4, dtype=torch.float32)  # ones: every page touched
            time.sleep(0.15)
            del block  # freed before the block ends: only the sampling thread can have seen it
        else:
            time.sleep(0.15)
    reading = sampler.result()
    assert reading.source == "rss" and reading.fallback is None
    assert reading.samples >= 5
    return reading.peak_bytes - reading.start_bytes


def test_rss_peak_rises_by_about_the_allocation():
    size = 200 * MiB
    growth = rss_growth(size)
    assert 0.85 * size <= growth <= 1.25 * size + 32 * MiB


def test_rss_peak_stays_flat_without_an_allocation():
    assert rss_growth(0) < 32 * MiB
