"""The learning-rate schedule: the host function is the reference, its device form must agree."""

from __future__ import annotations

import pytest
import torch

from mops.multitask.training.schedule import lr_factor, lr_factor_tensor


def test_linear_schedule_warms_up_then_decays():
    assert lr_factor("constant", 0.7, 0.1) == 1.0
    assert lr_factor("linear", 0.0, 0.1) == 0.0
    assert lr_factor("linear", 0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor("linear", 0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor("linear", 0.55, 0.1) == pytest.approx(0.5)
    assert lr_factor("linear", 1.0, 0.1) == 0.0


@pytest.mark.parametrize("schedule", ["linear", "constant"])
@pytest.mark.parametrize("warmup", [0.0, 0.1, 0.37])
def test_the_device_form_equals_the_host_reference(schedule, warmup):
    """Every progress of a 97-step run (mid-step positions, as the trainer uses them) and the ends."""
    points = [(i + 0.5) / 97 for i in range(97)] + [0.0, warmup, 1.0]
    for progress in points:
        got = lr_factor_tensor(schedule, torch.tensor(progress, dtype=torch.float64), warmup)
        assert got.dtype == torch.float64 and got.shape == ()
        assert got.item() == lr_factor(schedule, progress, warmup), (progress, got.item())


def test_the_device_form_follows_its_tensor_when_rewritten_in_place():
    progress = torch.zeros((), dtype=torch.float64)
    seen = []
    for value in (0.05, 0.5, 0.95):
        progress.fill_(value)
        seen.append(lr_factor_tensor("linear", progress, 0.1).item())
    assert seen == [lr_factor("linear", v, 0.1) for v in (0.05, 0.5, 0.95)]


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="linear, constant"):
        lr_factor_tensor("cosine", torch.zeros(()), 0.1)
