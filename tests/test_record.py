"""The run record's one schema: every writer tags it with the version, and a failed run's record
has the fields a finished run's readers look for."""

from __future__ import annotations

import dataclasses

import pytest

from mops.multitask.training.config import TrainConfig
from mops.multitask.training.record import SCHEMA, STATUSES, failure_record
from mops.multitask.training.trainer import Trainer


def test_a_failure_record_says_why_and_how_far_memory_went():
    config = TrainConfig(plan="SSSSSS", steps=5)
    record = failure_record(config, "oom", "CUDA out of memory", "NVIDIA H100 80GB HBM3",
                            memory={"peak_bytes": 1024}, wall_seconds=1.23456)
    assert record == {"schema": SCHEMA, "status": "oom", "error": "CUDA out of memory",
                      "config": dataclasses.asdict(config), "memory": {"peak_bytes": 1024},
                      "device": "NVIDIA H100 80GB HBM3", "timing": {"wall_seconds": 1.235}}


def test_only_a_failure_status_makes_a_failure_record():
    assert STATUSES == ("ok", "oom", "failed")
    with pytest.raises(ValueError, match="a failed run's status is one of"):
        failure_record(TrainConfig(), "ok", "", "cpu")


def test_the_trainer_s_results_json_carries_the_schema(tmp_path):
    config = TrainConfig(tasks=["sst"], checkpoint="random", hidden_size=32, num_layers=1, steps=1, batch_size=4,
                         max_train_examples=8, max_eval_examples=8, max_length=16, progress=False,
                         out_dir=str(tmp_path / "run"))
    record = Trainer(config).train()
    assert record["schema"] == SCHEMA and record["status"] in STATUSES
