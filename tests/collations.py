"""Watching what a trainer tokenizes: every batch its collators build, in order."""

from __future__ import annotations

import dataclasses

from multitask.batching import Collator, LabeledBatch


@dataclasses.dataclass
class RecordingCollator(Collator):
    seen: list[LabeledBatch] = dataclasses.field(default_factory=list)

    def __call__(self, examples):
        batch = super().__call__(examples)
        self.seen.append(batch)
        return batch


def record_collations(trainer) -> list[LabeledBatch]:
    """Swap each task's collator for a recording copy; returns the list every batch is appended to."""
    seen: list[LabeledBatch] = []
    for data in trainer.data:
        fields = {f.name: getattr(data.collate, f.name) for f in dataclasses.fields(Collator)}
        data.collate = RecordingCollator(**fields, seen=seen)
    return seen
