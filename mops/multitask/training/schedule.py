"""The learning-rate schedule, a pure function of training progress (so resuming needs no state)."""

from __future__ import annotations

import torch

SCHEDULES = ("linear", "constant")


def lr_factor(schedule: str, progress: float, warmup: float) -> float:
    """Multiplier of the peak learning rate at `progress` (0..1 of the budget).

    `linear` rises from 0 to 1 over the first `warmup` of training and falls to 0 at the end,
    the schedule BERT fine-tuning usually uses; `constant` is 1 throughout.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if schedule == "constant":
        return 1.0
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1.0 - progress) / (1.0 - warmup))


def lr_factor_tensor(schedule: str, progress: torch.Tensor, warmup: float) -> torch.Tensor:
    """`lr_factor` computed on the device from a 0-d `progress` tensor, in its dtype.

    The trainer writes each step's progress into one device tensor and the step reads the rate
    from it, so a replayed CUDA graph follows the schedule; `lr_factor` stays the reference.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if schedule == "constant":
        return torch.ones_like(progress)
    rising = progress / warmup if warmup > 0.0 else torch.ones_like(progress)
    falling = torch.clamp((1.0 - progress) / (1.0 - warmup), min=0.0)
    return torch.where(progress < warmup, rising, falling)
