"""Where training runs: the device a setting names, and the process group of a multi-process run."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    """`auto` -> the first CUDA GPU if there is one, else the CPU; otherwise the named device,
    which must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def process_group_backend(device_name: str) -> str:
    """NCCL when the run trains on GPUs, gloo when it trains on CPUs (also on a machine that has
    GPUs: `--device cpu` there must not reach for NCCL, which cannot reduce CPU tensors)."""
    return "nccl" if resolve_device(device_name).type == "cuda" else "gloo"


def init_distributed_from_env(device_name: str = "auto") -> bool:
    """Join the process group that `torchrun` describes in the environment (WORLD_SIZE > 1), with
    the backend for the device the run trains on. Returns whether this process is one of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(process_group_backend(device_name))
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def training_device(name: str) -> torch.device:
    """The device this process trains on: each rank of a multi-GPU run takes its LOCAL_RANK's GPU."""
    device = resolve_device(name)
    if device.type == "cuda" and dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device
