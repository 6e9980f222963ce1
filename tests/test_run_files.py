"""Checkpoints are data: a run folder someone hands over cannot run its code on resume, export,
a sweep's resume or an advice's resume, and a checkpoint that is no checkpoint is a clear error
naming the file and what to do."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mops.bench.advise import successive_halving
from mops.bench.records import read_records
from mops.bench.sweep import SweepConfig, config_id, grid, run_sweep
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.export import ExportError, export_task
from mops.multitask.training.run_files import (
    BEST_FILE,
    LAST_FILE,
    LOCK_FILE,
    CheckpointRefused,
    InUse,
    exclusive,
    load_checkpoint,
    save_checkpoint,
)
from mops.multitask.training.trainer import Trainer, TrainingError

TINY = dict(tasks=["sst"], checkpoint="random", hidden_size=32, num_layers=2, batch_size=4, max_train_examples=8,
            max_eval_examples=8, max_length=16, progress=False, device="cpu", backend="torch")


class Payload:
    """Unpickled, it runs a shell command: what a hostile `last.pt` would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path) -> Path:
    """A checkpoint whose config, once unpickled by an unsafe load, creates `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": Payload(marker), "model": {}, "step": 0}, path)
    return path


def test_the_planted_checkpoint_really_runs_its_command_when_loaded_unsafely(tmp_path):
    """So the tests below would fail if any path still loaded checkpoints with full pickle."""
    assert shutil.which("touch")
    marker = tmp_path / "ran"
    torch.load(plant(tmp_path / LAST_FILE, marker), weights_only=False)
    assert marker.exists()


def test_what_the_trainer_writes_loads_as_data(tmp_path):
    Trainer(TrainConfig(**TINY, steps=2, out_dir=str(tmp_path / "run"))).train()
    for name in (LAST_FILE, BEST_FILE):
        assert "model" in load_checkpoint(tmp_path / "run" / name, "retrain")


def test_resuming_a_planted_last_pt_runs_nothing_and_says_so(tmp_path):
    marker = tmp_path / "ran"
    plant(tmp_path / "run" / LAST_FILE, marker)
    with pytest.raises(CheckpointRefused) as refused:
        Trainer(TrainConfig(**TINY, steps=2, out_dir=str(tmp_path / "run"))).train()
    assert not marker.exists()
    message = str(refused.value)
    assert str(tmp_path / "run" / LAST_FILE) in message and "asks to run code" in message and "--fresh" in message


def test_exporting_a_planted_best_pt_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    Trainer(TrainConfig(**TINY, steps=2, out_dir=str(tmp_path / "run"))).train()
    plant(tmp_path / "run" / BEST_FILE, marker)
    with pytest.raises(ExportError, match="asks to run code") as refused:
        export_task(tmp_path / "run", "sst", tmp_path / "exported")
    assert not marker.exists() and not (tmp_path / "exported").exists()
    assert "mops train --fresh" in str(refused.value)


def test_a_sweep_resuming_a_planted_run_folder_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    train = {k: v for k, v in TINY.items() if k not in ("tasks", "checkpoint", "hidden_size")}
    sweep = SweepConfig(checkpoints=[], widths=[32], plans=["SS"], task_sets=[["sst"]], train={**train, "steps": 2},
                        results=str(tmp_path / "sweep.jsonl"))
    (config,) = grid(sweep)
    plant(sweep.run_folder / config_id(config) / LAST_FILE, marker)
    (record,) = read_records([run_sweep(sweep, progress=False)])
    assert not marker.exists()
    assert record["status"] == "failed" and "asks to run code" in record["error"]


def test_an_advice_carrying_a_planted_checkpoint_into_its_next_round_runs_nothing(tmp_path):
    """Between rounds the advice hands each stopped run's checkpoint to its next round: a file
    swapped in there (a copied advice folder, say) is refused too."""
    marker = tmp_path / "ran"
    train = {k: v for k, v in TINY.items() if k not in ("tasks", "checkpoint", "hidden_size")}
    rounds_run = []

    def run_then_plant(sweep: SweepConfig) -> Path:
        path = run_sweep(sweep, progress=False)
        rounds_run.append(path)
        if len(rounds_run) == 1:  # after the first round: every stopped run's last.pt is hostile
            for last in sweep.run_folder.glob(f"*/{LAST_FILE}"):
                last.unlink()
                plant(last, marker)
        return path

    rounds = successive_halving(["FF", "FS", "SS", "II"], ["sst"], "random", {**train, "steps": 4}, str(tmp_path / "a.jsonl"),
                                run=run_then_plant)
    assert not marker.exists()
    assert len(rounds) == 2 and len(rounds[1]) == 2
    for finalist in rounds[1].values():
        assert finalist["status"] == "failed" and "asks to run code" in finalist["error"]


@pytest.mark.parametrize("make", [
    lambda path: path.write_bytes(b""),
    lambda path: path.write_bytes(b"not a checkpoint at all"),
    lambda path: path.mkdir(),
    lambda path: path.write_text(json.dumps({"model": {}})),
], ids=["empty", "garbage", "a folder", "another file"])
def test_a_checkpoint_that_is_no_checkpoint_names_the_file_and_the_way_out(tmp_path, make):
    path = tmp_path / LAST_FILE
    make(path)
    with pytest.raises(CheckpointRefused) as refused:
        load_checkpoint(path, "run again with --fresh")
    assert str(path) in str(refused.value) and str(refused.value).endswith("run again with --fresh")


def test_a_truncated_checkpoint_is_refused_before_any_training(tmp_path):
    Trainer(TrainConfig(**TINY, steps=2, out_dir=str(tmp_path / "run"))).train()
    last = tmp_path / "run" / LAST_FILE
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CheckpointRefused, match="is not a readable checkpoint"):
        Trainer(TrainConfig(**TINY, steps=4, out_dir=str(tmp_path / "run"))).train()


def test_a_checkpoint_missing_its_parts_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    save_checkpoint({"model": {}}, tmp_path / "run" / LAST_FILE)
    with pytest.raises(TrainingError, match="lacks config, optimizer, scaler, state, rng"):
        Trainer(TrainConfig(**TINY, steps=2, out_dir=str(tmp_path / "run"))).train()


def test_no_module_loads_a_checkpoint_but_through_the_safe_loader():
    """Every torch.load in MOPS is the safe one: in run_files, or minbert's weights_only load."""
    unsafe = []
    for path in sorted((Path(__file__).resolve().parents[1] / "mops").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                unsafe.append(f"{path.name}:{number}")
    assert unsafe == []


# ---- one writer per folder ----------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from mops.multitask.training.run_files import exclusive
with exclusive(Path(sys.argv[1]), "the folder", "wait"):
    print("held", flush=True)
    time.sleep(120)
"""


def holding(lock: Path) -> subprocess.Popen:
    """Another process that holds `lock` until it is killed."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_is_refused_at_once_and_told_who_holds_the_folder(tmp_path):
    folder = tmp_path / "run"
    child = holding(folder / LOCK_FILE)
    try:
        with pytest.raises(InUse) as refused:
            Trainer(TrainConfig(**TINY, steps=2, out_dir=str(folder))).train()
        assert str(folder) in str(refused.value) and f"pid {child.pid}" in str(refused.value)
        assert "another --out folder" in str(refused.value)
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        child.kill()
        child.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / "run"
    child = holding(folder / LOCK_FILE)
    child.send_signal(signal.SIGKILL)
    child.wait()
    record = Trainer(TrainConfig(**TINY, steps=2, out_dir=str(folder))).train()
    assert record["status"] == "ok"


def test_the_lock_is_held_only_while_the_run_trains(tmp_path):
    folder = tmp_path / "run"
    Trainer(TrainConfig(**TINY, steps=2, out_dir=str(folder))).train()
    with exclusive(folder / LOCK_FILE, str(folder), "wait"):  # free again once train() returned
        pass


def test_what_a_killed_checkpoint_write_left_is_cleared_by_the_next_run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    leftover = folder / ".last.pt.k1ll3d.tmp"  # the name atomic_open gives a write in progress
    leftover.write_bytes(b"half a checkpoint")
    Trainer(TrainConfig(**TINY, steps=2, out_dir=str(folder))).train()
    assert not leftover.exists() and not list(folder.glob(".*.tmp"))
    assert (folder / LAST_FILE).is_file()
