"""Names for the machine a measurement came from, used to tag every recorded result."""

from __future__ import annotations

import functools
import platform
import re
from importlib import metadata

import torch


@functools.lru_cache(maxsize=None)
def gpu_name(index: int) -> str:
    """The name of CUDA device `index` as torch reports it, read once: the one place MOPS asks
    (tests replace it to fake a GPU)."""
    return torch.cuda.get_device_name(index)


def device_name(device: torch.device | str | None = None) -> str:
    """'NVIDIA H100 80GB HBM3' on a GPU, the CPU's model name (or 'cpu') otherwise."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return gpu_name(device.index if device.index is not None else torch.cuda.current_device())
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_tag(device: torch.device | str | None = None) -> str:
    """A file-name-safe form of `device_name`: 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or "cpu"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("triton", "transformers", "tokenizers"):
        try:  # read from package metadata: importing transformers alone takes seconds
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda or "unknown"
    return found
