"""The one place where an op decides between its Triton kernel and its PyTorch twin.

`auto`   -> Triton for CUDA tensors, PyTorch for everything else.
`torch`  -> always the PyTorch twin.
`triton` -> the Triton kernel; on the CPU only under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os

import torch

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
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = any(t.is_cuda for t in tensors)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    # backend == "triton"
    if not triton_available():
        raise RuntimeError(f"{op}: backend='triton' needs the `triton` package, which is not installed")
    if not on_cuda and not interpreter_enabled():
        raise RuntimeError(
            f"{op}: backend='triton' on CPU tensors needs Triton's interpreter; "
            "set TRITON_INTERPRET=1 in the environment before importing mops, or use backend='torch'"
        )
    return "triton"
