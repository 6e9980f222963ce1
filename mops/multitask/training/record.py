"""The run record, one schema for every writer: the trainer's `results.json`, the record a sweep
worker writes for a run it caught failing, and the one a sweep writes for a child that died.

Readers (the report, the advice, a resumed sweep) see one shape whoever wrote it; `schema` says
which version of it, so a reader can tell an old file from a new one.
"""

from __future__ import annotations

import dataclasses

from mops.multitask.training.config import TrainConfig

SCHEMA = 1  # raise it when a field changes meaning or leaves; a new field needs no new version
STATUSES = ("ok", "oom", "failed")  # finished; ran out of memory (would again); failed otherwise


def failure_record(config: TrainConfig, status: str, error: str, device: str, memory: dict | None = None,
                   wall_seconds: float | None = None) -> dict:
    """The record of a run that did not finish: its settings, why, and what memory it reached."""
    if status not in STATUSES[1:]:
        raise ValueError(f"a failed run's status is one of {STATUSES[1:]}, got {status!r}")
    record = {"schema": SCHEMA, "status": status, "error": error, "config": dataclasses.asdict(config),
              "memory": memory, "device": device}
    if wall_seconds is not None:
        record["timing"] = {"wall_seconds": round(wall_seconds, 3)}
    return record
