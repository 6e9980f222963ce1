"""Mixed precision: which autocast a run uses, and the gradient scaler fp16 needs.

Weights, gradients and AdamW state stay fp32 in every mode; autocast runs the matrix products
(and the kernels that follow autocast) in bf16 or fp16. bf16 has fp32's range, so it needs no
scaling; fp16 does: the loss is multiplied by a scale before the backward, a step whose
gradients overflow is skipped (and counted), and the scale adapts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mops.common.machine import device_name

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Precision:
    name: str  # bf16 | fp16 | fp32: what the run uses
    device_type: str  # cuda | cpu: the autocast device

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast region of forward passes and losses (nothing for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is active for fp16 only (a disabled one passes steps straight through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(name: str, device: torch.device) -> Precision:
    """`auto`: bf16 on a CUDA GPU that has it, fp16 on an older one, fp32 on the CPU."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    cuda = device.type == "cuda"
    if name == "auto":
        if not cuda:
            return Precision("fp32", device.type)
        name = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"{device_name(device)} has no bf16 arithmetic; use --precision fp16")
    return Precision(name, device.type)
