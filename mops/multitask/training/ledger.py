"""What the training step records on the device for the host to read now and then.

A step that read its loss back to check it would wait for the device every step and could not be
replayed as a CUDA graph. The step writes into this ledger instead, and the trainer reads it every
`check_every` steps (one wait)."""

from __future__ import annotations

import math

import torch


class StepLedger:
    """Step count, the first non-finite loss (its 1-based step, value and task), fp16 skips, last loss."""

    FIELDS = ("steps", "first_bad_step", "bad_loss", "bad_task", "skipped_steps", "loss")

    def __init__(self, device: torch.device) -> None:
        self.values = torch.tensor([0.0, -1.0, 0.0, -1.0, 0.0, math.nan], dtype=torch.float64, device=device)

    def record(self, loss: torch.Tensor, task_index: int, skipped: torch.Tensor | None = None) -> None:
        """Count a step; keep the first non-finite loss (its 1-based step and task) and fp16 skips."""
        v, loss = self.values, loss.detach().to(torch.float64)
        step = v[0] + 1
        first = ~torch.isfinite(loss) & (v[1] < 0)
        skips = v[4] + (skipped.to(torch.float64) if skipped is not None else 0.0)
        v.copy_(torch.stack([step, torch.where(first, step, v[1]), torch.where(first, loss, v[2]),
                             torch.where(first, float(task_index), v[3]), skips, loss]))

    def read(self) -> dict[str, float]:
        return dict(zip(self.FIELDS, self.values.tolist()))

    def restore(self, saved: list[float] | torch.Tensor | None, steps: int, skipped_steps: int) -> None:
        """Load a checkpoint's ledger; one written before the ledger existed gives its step and skip counts."""
        if saved is None:
            saved = [steps, -1.0, 0.0, -1.0, skipped_steps, math.nan]
        self.values.copy_(torch.as_tensor(saved, dtype=torch.float64))
