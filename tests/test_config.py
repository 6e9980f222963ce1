"""TrainConfig's roles: the one list of which settings identify a run, which a resumed run may
change, and which only say where and how visibly it runs."""

from __future__ import annotations

import dataclasses

import pytest

from mops.bench.report import POOLED_KEYS
from mops.bench.sweep import config_id
from mops.multitask.training.config import ROLES, TrainConfig, role_of, setting, settings_with_role


def test_every_setting_has_one_of_the_roles():
    assert {role_of(spec.name) for spec in dataclasses.fields(TrainConfig)} == set(ROLES)
    with pytest.raises(ValueError, match="role must be one of"):
        setting(1, "a setting", role="cosmetic")


def test_the_place_is_the_folder_the_progress_bars_and_the_device():
    assert settings_with_role("place") == ("device", "out_dir", "progress")


def test_a_resumed_run_may_change_its_budgets_evaluation_and_execution_only():
    assert settings_with_role("resumable") == ("epochs", "steps", "seconds", "stop_at", "eval_every", "cache_frozen",
                                               "cuda_graphs", "check_every")


def test_identity_keeps_the_fixed_settings_and_measured_drops_only_the_place():
    config = TrainConfig(plan="FFSSII", steps=10)
    fixed = set(settings_with_role("fixed"))
    assert set(config.identity()) == fixed and "plan" in fixed and "steps" not in fixed
    assert set(config.measured()) == fixed | set(settings_with_role("resumable"))


def test_runs_differing_only_in_their_place_are_one_measurement():
    base = TrainConfig(plan="FFSSII", steps=10)
    moved = dataclasses.replace(base, out_dir="elsewhere", progress=False, device="cpu")
    assert config_id(moved) == config_id(base)
    assert config_id(dataclasses.replace(base, steps=20)) != config_id(base)  # a budget is part of the run
    assert set(settings_with_role("place")) < POOLED_KEYS and "seed" in POOLED_KEYS
