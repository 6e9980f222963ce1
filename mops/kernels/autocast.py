"""The Triton ops under `torch.autocast`: the same dtypes in and out as their PyTorch twins.

Autocast acts on PyTorch operators, not on a custom autograd Function, so each op applies by
hand the policy autocast applies to the operator its twin is made of, then runs its Function
with autocast switched off (the kernels choose their own internal precision: fp32 statistics,
fp32 accumulators). Policies, from PyTorch's autocast op lists (aten/src/ATen/autocast_mode.*),
checked against the twins by tests/test_kernel_autocast.py:

    op          twin's operator                 CUDA autocast        CPU autocast
    attention   scaled_dot_product_attention    lower precision      lower precision
    layer_norm  x + residual, then layer_norm   fp32                 none (input dtype)
    bias_gelu   x + bias, then gelu             none (promotion)     none (promotion)

"lower precision": every floating input except float64 is cast to the autocast dtype, and the
output is in that dtype. "fp32": floating inputs are cast to float32 and the output is float32.
"none": ordinary type promotion (a bf16 activation plus an fp32 bias gives fp32). The casts are
differentiable `.to` calls outside the Function, so every gradient comes back in its input's
dtype, as with the twin. Autocast acts only on tensors of its own device type: CPU tensors
inside `torch.autocast("cuda")` are left alone. Device types other than CPU follow CUDA's lists.

`adamw_step` is not here: an optimizer step runs outside autocast, on fp32 master weights, and
its twin's foreach ops have no autocast policy either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

LOWER = "lower precision"
FP32 = "fp32"
NONE = "none"
Result = TypeVar("Result")

# op -> {device type: policy}; device types not listed use "cuda".
POLICIES: dict[str, dict[str, str]] = {
    "attention": {"cuda": LOWER, "cpu": LOWER},
    "layer_norm": {"cuda": FP32, "cpu": NONE},
    "bias_gelu": {"cuda": NONE, "cpu": NONE},
}


def cast_dtype(op: str, device_type: str) -> torch.dtype | None:
    """The dtype autocast casts `op`'s floating inputs to on `device_type` right now, or None."""
    if not torch.is_autocast_enabled(device_type):
        return None
    policies = POLICIES[op]
    policy = policies.get(device_type, policies["cuda"])
    if policy == LOWER:
        return torch.get_autocast_dtype(device_type)
    if policy == FP32:
        return torch.float32
    return None


def cast(dtype: torch.dtype | None, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """`tensor` as autocast would hand it to an operator: floating tensors other than float64
    cast to `dtype`; anything else (None, integer or bool masks, float64) unchanged."""
    if dtype is None or tensor is None or not tensor.is_floating_point() or tensor.dtype == torch.float64:
        return tensor
    return tensor.to(dtype)


def off(device_type: str) -> torch.autocast:
    """A context with autocast disabled on `device_type`: the kernels' launchers run in it."""
    return torch.autocast(device_type, enabled=False)


def disabled(method: Callable[..., Result]) -> Callable[..., Result]:
    """A Function's forward or backward, `method(ctx, tensor, ...)`, run with autocast off on the
    device type of its first tensor argument (x in the forward, the output gradient in the backward)."""

    @functools.wraps(method)
    def run(ctx: Any, tensor: torch.Tensor, *args: Any) -> Result:
        with off(tensor.device.type):
            return method(ctx, tensor, *args)

    return run
