"""Peak memory of a training run, sampled in a background thread while the run goes on.

On a GPU the number that decides whether a sharing plan fits is the device memory the run
holds at its worst moment. NVML sees it from outside the allocator (CUDA context, cuBLAS
workspaces, fragmentation included); PyTorch's allocator peaks, recorded beside it, catch spikes
shorter than the sampling interval. Without a GPU or without NVML the sampler falls back to the
process's resident memory, so every run gets a reading, and a failing sampler never stops a run.

Sources, in order of preference (the reading says which one it used):

* ``nvml-process`` -- this process's own entry in ``nvmlDeviceGetComputeRunningProcesses``.
  Absent inside many containers, where NVML lists host PIDs, not ours.
* ``nvml-device`` -- the device's used memory minus a baseline taken when the sampler starts,
  after the CUDA context exists. The baseline leaves out the context and other processes, and
  keeps in what this process's allocator already holds (see `_device_baseline`).
* ``rss`` -- the process's resident set (VmRSS), with ``ru_maxrss`` as a floor when the
  process's lifetime peak rose during the run.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

NVML_PROCESS = "nvml-process"
NVML_DEVICE = "nvml-device"
RSS = "rss"


@dataclass
class MemoryReading:
    """The "memory" object of a run record; `peak_bytes` is what the report compares."""

    peak_bytes: int  # highest reading seen, on the scale of `source`
    source: str  # "nvml-process" | "nvml-device" | "rss"
    baseline_bytes: int | None  # subtracted from device readings (nvml-device only)
    torch_max_allocated: int | None  # allocator peak of live tensors (CUDA only)
    torch_max_reserved: int | None  # allocator peak of cached segments (CUDA only)
    samples: int  # readings taken, the start and final ones included
    interval_s: float  # seconds between readings
    start_bytes: int | None = None  # first reading, same scale as peak_bytes: growth = peak - start
    fallback: str | None = None  # why a better source was not used
    sampling_error: str | None = None  # why sampling stopped early, if it did

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SamplerConfig:
    device: torch.device  # the device the run uses; CUDA devices are looked up in NVML
    interval_s: float = 0.05  # seconds between readings; PyTorch's peaks cover shorter spikes
    use_nvml: bool = True  # False forces the rss source (useful for CPU runs and tests)


def normalize_uuid(uuid: object) -> str:
    """'GPU-3b4c...' (str or bytes, NVML) and '3b4c...' (PyTorch) to one comparable form."""
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def find_nvml_handle(nvml: Any, cuda_uuid: object) -> Any:
    """The NVML handle whose UUID is `cuda_uuid`.

    Matching by UUID, not by index, keeps the mapping right when CUDA_VISIBLE_DEVICES renumbers
    devices or CUDA orders them differently from NVML. A MIG instance is not among the physical
    devices, so it is looked up by its own UUID afterwards. Raises LookupError when nothing matches.
    """
    wanted = normalize_uuid(cuda_uuid)
    seen = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        found = normalize_uuid(nvml.nvmlDeviceGetUUID(handle))
        if found == wanted:
            return handle
        seen.append(found)
    try:
        return nvml.nvmlDeviceGetHandleByUUID("MIG-" + wanted)
    except Exception:  # NVMLError (not found) or an NVML without MIG support
        pass
    raise LookupError(f"no NVML device has UUID {wanted} (NVML lists {', '.join(seen) or 'none'})")


def _process_usage(nvml: Any, handle: Any, pid: int) -> int | None:
    """This pid's usedGpuMemory, or None when NVML does not list it or does not know the figure."""
    for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid:
            return None if proc.usedGpuMemory is None else int(proc.usedGpuMemory)
    return None


def _device_baseline(nvml: Any, handle: Any, index: int) -> int:
    """Device memory in use at start that is not this run's: used minus what our allocator holds.

    Subtracting only the reserved part keeps weights the run moved to the device before the
    sampler started in the peak, while the CUDA context and other processes' memory stay out.
    """
    used = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    return max(0, used - int(torch.cuda.memory_reserved(index)))


def read_rss_bytes() -> int | None:
    """Current resident memory of this process (VmRSS), None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def max_rss_bytes() -> int:
    """Lifetime peak resident memory of this process (ru_maxrss: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class MemorySampler:
    """Context manager: ``with MemorySampler("cuda:0") as s: train(); s.result()``.

    Enter it before the training work starts (moving the model to the device may come before or
    after). The block's exceptions pass through untouched, so an OOM still leaves a reading for
    the failed run's record; the sampler's own failures are recorded in the reading instead.
    """

    def __init__(self, device: torch.device | str | None = None, interval_s: float = 0.05, use_nvml: bool = True):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.config = SamplerConfig(torch.device(device), interval_s, use_nvml)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read: Callable[[], int | None] = read_rss_bytes
        self._source = RSS
        self._baseline: int | None = None
        self._fallback: str | None = None
        self._error: str | None = None
        self._peak = 0
        self._start_bytes: int | None = None
        self._samples = 0
        self._maxrss_at_start = 0
        self._nvml: Any = None
        self._torch_peaks: tuple[int | None, int | None] = (None, None)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> MemorySampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> bool:
        self.stop()
        return False  # never swallow the run's own exception

    def start(self) -> None:
        """Pick the source, take the first reading, and start the sampling thread."""
        if self._thread is not None:
            raise RuntimeError("MemorySampler was already started; make a new one per run")
        self._maxrss_at_start = max_rss_bytes()
        try:
            on_cuda = self._cuda_index() is not None
        except Exception as error:  # e.g. a CUDA device asked of a build without CUDA
            on_cuda, self._fallback = False, f"CUDA device not usable: {error!r}"
        if on_cuda:
            self._reset_torch_peaks()
            if self.config.use_nvml:
                self._open_nvml()
            else:
                self._fallback = "NVML disabled (use_nvml=False)"
        self._start_bytes = self._sample()
        self._thread = threading.Thread(target=self._loop, name="mops-memory-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, take a final reading, and collect PyTorch's peaks. Never raises."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._source == RSS:
            self._apply_maxrss_floor()
        try:
            index = self._cuda_index()
            if index is not None:
                self._torch_peaks = (int(torch.cuda.max_memory_allocated(index)), int(torch.cuda.max_memory_reserved(index)))
        except Exception:  # a broken CUDA state must not turn a finished run into a crash
            pass
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None

    def result(self) -> MemoryReading:
        """The reading so far (final once the block has exited)."""
        with self._lock:
            return MemoryReading(
                peak_bytes=self._peak,
                source=self._source,
                baseline_bytes=self._baseline,
                torch_max_allocated=self._torch_peaks[0],
                torch_max_reserved=self._torch_peaks[1],
                samples=self._samples,
                interval_s=self.config.interval_s,
                start_bytes=self._start_bytes,
                fallback=self._fallback,
                sampling_error=self._error,
            )

    # -- source selection --------------------------------------------------------------------

    def _cuda_index(self) -> int | None:
        device = self.config.device
        if device.type != "cuda":
            return None
        return device.index if device.index is not None else torch.cuda.current_device()

    def _reset_torch_peaks(self) -> None:
        try:
            torch.cuda.reset_peak_memory_stats(self._cuda_index())
        except Exception:  # the peaks stay None in the reading; the run goes on
            pass

    def _open_nvml(self) -> None:
        """Switch to an NVML source, or leave rss in place and record why not."""
        index = self._cuda_index()
        try:
            import pynvml
        except ImportError as error:
            self._fallback = f"pynvml not importable: {error}"
            return
        try:
            pynvml.nvmlInit()
        except Exception as error:
            self._fallback = f"NVML init failed: {error!r}"
            return
        try:
            torch.cuda.synchronize(index)  # makes sure the CUDA context exists before the baseline
            handle = find_nvml_handle(pynvml, torch.cuda.get_device_properties(index).uuid)
            pid = os.getpid()
            try:
                listed = _process_usage(pynvml, handle, pid) is not None
            except Exception:  # process queries need permissions some setups lack
                listed = False
            if listed:
                self._source = NVML_PROCESS
                self._read = lambda: _process_usage(pynvml, handle, pid)
            else:
                baseline = _device_baseline(pynvml, handle, index)
                self._source, self._baseline = NVML_DEVICE, baseline
                self._read = lambda: max(0, int(pynvml.nvmlDeviceGetMemoryInfo(handle).used) - baseline)
            self._nvml = pynvml
        except Exception as error:
            self._fallback = f"NVML device lookup failed: {error!r}"
            self._source, self._baseline, self._read = RSS, None, read_rss_bytes
            try:
                pynvml.nvmlShutdown()
            except Exception:
                pass

    # -- sampling ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.config.interval_s) and self._error is None:
            self._sample()

    def _sample(self) -> int | None:
        """One reading (None if there was none); an error is recorded and ends the sampling."""
        if self._error is not None:
            return None
        try:
            value = self._read()
        except Exception as error:
            with self._lock:
                self._error = f"sampling stopped after {self._samples} readings: {error!r}"
            return None
        with self._lock:
            self._samples += 1
            if value is not None and value > self._peak:
                self._peak = int(value)
        return None if value is None else int(value)

    def _apply_maxrss_floor(self) -> None:
        """ru_maxrss is the process's lifetime peak; it bounds this run only if it rose during it."""
        try:
            now = max_rss_bytes()
        except Exception:
            return
        if now > self._maxrss_at_start:
            with self._lock:
                self._peak = max(self._peak, now)
