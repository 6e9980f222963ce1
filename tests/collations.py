"""Watching what a trainer tokenizes: every batch its collators build, in order."""

from __future__ import annotations

import dataclasses

from mops.multitask.data.batching import Collator, LabeledBatch
from mops.multitask.data.examples import Example


@dataclasses.dataclass
class RecordingCollator(Collator):
    seen: list[LabeledBatch] = dataclasses.field(default_factory=list)
    handed: list[list[Example]] = dataclasses.field(default_factory=list)

    def __call__(self, examples):
        batch = super().__call__(examples)
        self.seen.append(batch)
        self.handed.append(list(examples))
        return batch


def _record(trainer) -> tuple[list[LabeledBatch], list[list[Example]]]:
    seen: list[LabeledBatch] = []
    handed: list[list[Example]] = []
    for data in trainer.data:
        fields = {f.name: getattr(data.collate, f.name) for f in dataclasses.fields(Collator)}
        data.collate = RecordingCollator(**fields, seen=seen, handed=handed)
    return seen, handed


def record_collations(trainer) -> list[LabeledBatch]:
    """Swap each task's collator for a recording copy; returns the list every batch is appended to."""
    return _record(trainer)[0]


def record_examples(trainer) -> list[list[Example]]:
    """Swap each task's collator for a recording copy; returns the list every batch's examples (as
    the collator was handed them) are appended to."""
    return _record(trainer)[1]
