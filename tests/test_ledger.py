"""The step ledger: what the host learns of the steps when it reads, every `check_every` steps."""

from __future__ import annotations

import math

import torch

from mops.multitask.training.ledger import StepLedger


def test_counts_steps_and_keeps_the_last_loss():
    ledger = StepLedger(torch.device("cpu"))
    for loss in (0.9, 0.7, 0.4):
        ledger.record(torch.tensor(loss), task_index=1)
    seen = ledger.read()
    assert seen["steps"] == 3
    assert seen["loss"] == torch.tensor(0.4).item()
    assert seen["first_bad_step"] == -1 and seen["skipped_steps"] == 0


def test_keeps_the_first_non_finite_loss_with_its_step_and_task():
    ledger = StepLedger(torch.device("cpu"))
    ledger.record(torch.tensor(0.5), task_index=0)
    ledger.record(torch.tensor(math.inf), task_index=2)  # step 2, task 2: the one to report
    ledger.record(torch.tensor(math.nan), task_index=1)  # a later one does not replace it
    seen = ledger.read()
    assert (seen["first_bad_step"], seen["bad_loss"], seen["bad_task"]) == (2, math.inf, 2)
    assert seen["steps"] == 3 and math.isnan(seen["loss"])


def test_sums_fp16_skips():
    ledger = StepLedger(torch.device("cpu"))
    for skipped in (True, False, True):
        ledger.record(torch.tensor(1.0), task_index=0, skipped=torch.tensor(skipped))
    assert ledger.read()["skipped_steps"] == 2


def test_restores_a_saved_ledger_or_builds_one_from_the_counts():
    ledger = StepLedger(torch.device("cpu"))
    ledger.record(torch.tensor(math.nan), task_index=1)
    restored = StepLedger(torch.device("cpu"))
    restored.restore(ledger.values.clone(), steps=99, skipped_steps=99)  # the saved values win
    assert restored.read()["first_bad_step"] == 1 and restored.read()["steps"] == 1
    older = StepLedger(torch.device("cpu"))
    older.restore(None, steps=40, skipped_steps=3)  # a checkpoint written before the ledger
    seen = older.read()
    assert (seen["steps"], seen["skipped_steps"], seen["first_bad_step"]) == (40, 3, -1)
