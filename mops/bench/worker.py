"""One sweep run in its own process: `python -m mops.bench.worker CONFIG.json RECORD.json`.

Writes the run's record (status "ok"), or a record of the failure it caught ("oom" for a
CUDA out-of-memory, "failed" otherwise) with the memory reading up to that point.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch

from mops.bench.memory import MemorySampler
from mops.common.files import atomic_write_json
from mops.common.machine import device_name
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.devices import resolve_device
from mops.multitask.training.prediction import predict
from mops.multitask.training.record import failure_record
from mops.multitask.training.trainer import Trainer


def _prediction(trainer: Trainer) -> dict:
    """The predicted peak of this run's step at its batch size and longest length, kept beside the
    measured peak; a prediction that fails is noted, the run's record is kept."""
    config = trainer.config
    try:
        return predict(trainer.model, config.batch_size, config.max_length, trainer.precision,
                       config.backend).as_dict()
    except Exception as err:  # noqa: BLE001 - the run itself succeeded
        return {"error": f"{type(err).__name__}: {err}"}


def main(argv: list[str]) -> int:
    spec, out = Path(argv[0]), Path(argv[1])
    config = TrainConfig(**json.loads(spec.read_text()))
    samplers: list[MemorySampler] = []

    def sampler(device: torch.device) -> MemorySampler:
        samplers.append(MemorySampler(device))
        return samplers[-1]

    try:
        trainer = Trainer(config, memory_sampler=sampler)
        record = trainer.train()
        record["prediction"] = _prediction(trainer)
    except Exception as err:  # the run failed; its record says how, the sweep goes on
        oom = isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
        error = "".join(traceback.format_exception_only(err)).strip() + "\n" + traceback.format_exc(limit=-3)
        record = failure_record(config, "oom" if oom else "failed", error, device_name(resolve_device(config.device)),
                                memory=samplers[-1].result().to_dict() if samplers else None)
    atomic_write_json(out, record, indent=None)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
