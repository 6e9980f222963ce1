"""The one place where an op decides between its Triton kernel and its PyTorch twin.

`auto`   -> on a GPU, the implementation measured faster for that op on that kind of GPU
            (kernels/dispatch_table.json; PyTorch where nothing was measured); PyTorch on the CPU.
`torch`  -> always the PyTorch twin.
`triton` -> the Triton kernel; on the CPU only under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os

import torch

from . import dispatch

BACKENDS = ("auto", "torch", "triton")


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter (must be set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, *tensors: torch.Tensor, op: str = "op") -> str:
    """Return "torch" or "triton" for `op` on `tensors`, or raise a ValueError/RuntimeError that says why."""
    device = next((t.device for t in tensors if t.is_cuda), torch.device("cpu"))
    return resolve_for_device(backend, device, op)


def resolve_for_device(backend: str, device: torch.device, op: str) -> str:
    """Return "torch" or "triton" for `op` with this backend setting on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = device.type == "cuda"
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if not on_cuda or not triton_available():
            return "torch"
        return dispatch.choose(op, dispatch.device_name(device)).backend
    # backend == "triton"
    if not triton_available():
        raise RuntimeError(f"{op}: backend='triton' needs the `triton` package, which is not installed")
    if not on_cuda and not interpreter_enabled():
        raise RuntimeError(
            f"{op}: backend='triton' on CPU tensors needs Triton's interpreter; "
            "set TRITON_INTERPRET=1 in the environment before importing mops, or use backend='torch'"
        )
    return "triton"


def resolved_backends(backend: str, device: torch.device | str) -> dict[str, str]:
    """op -> "torch" or "triton": what each op of `dispatch.OPS` runs with this backend setting on
    `device` (what a results file records). Raises as the ops would when the setting cannot run."""
    device = torch.device(device)
    return {op: resolve_for_device(backend, device, op) for op in dispatch.OPS}
