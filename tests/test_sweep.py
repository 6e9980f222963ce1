"""mops.bench.sweep: the grid, shards, one process per run, failures and OOMs recorded, resume after a kill.

Real runs use a random 2-layer, width-32 encoder on the demo corpus for two steps: a few seconds
each, most of it the child process importing torch. Tests about bookkeeping alone (shards) stand
in a fake `run_one` for the child process.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from embedded import requires_embedded_checkpoint

import mops.bench.sweep
import mops.bench.worker
from mops.bench.records import completed_ids
from mops.bench.report import report
from mops.bench.sweep import (
    SweepConfig,
    _classify_failure,
    config_id,
    grid,
    parse_shard,
    run_one,
    run_sweep,
    shard_results_path,
    sweep_from_args,
)
from mops.cli import main as cli_main
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.run_files import InUse, exclusive
from mops.multitask.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
pytestmark = requires_embedded_checkpoint  # sweep runs are child processes that build their encoder from it
# Where a run's peak comes from: NVML on a GPU (the resident-memory fallback there would be no GPU
# figure at all), the process's resident memory on a CPU.
MEMORY_SOURCES = {"nvml-process", "nvml-device"} if torch.cuda.is_available() else {"rss"}

# Training settings shared by every real run here: seconds per run on a CPU.
TINY_TRAIN = dict(num_layers=2, steps=2, eval_every=2, batch_size=8, max_length=32, max_eval_examples=16,
                  backend="torch", data="demo")


def tiny_sweep(tmp_path: Path, plans: list[str], **overrides) -> SweepConfig:
    settings = dict(checkpoints=[], widths=[32], plans=plans, train=dict(TINY_TRAIN),
                    results=str(tmp_path / "results.jsonl"), runs_dir=str(tmp_path / "runs"))
    settings.update(overrides)
    return SweepConfig(**settings)


def lines(path: Path) -> list[dict]:
    """Every line of a results file as JSON, strictly: a torn or blank line fails the test."""
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of a report's table made with fmt="tsv", one dict per row (notes after it left out)."""
    rows = list(csv.reader(io.StringIO(text.split("\n\n")[0]), delimiter="\t"))
    header = [cell.strip() for cell in rows[0]]
    return [dict(zip(header, (cell.strip() for cell in row), strict=True)) for row in rows[1:]]


def never_run(*args, **kwargs):
    raise AssertionError("a run that was already done was started again")


# -- faults injected into the worker processes -----------------------------------------------

PLUGIN = '''\
"""Test-only fault injection, imported at start-up by every Python process with this folder on
PYTHONPATH. MOPS_TEST_FAULT="oom:PLAN" makes a training step of that plan raise a CUDA-style
out-of-memory error; "crash:PLAN" ends the process at once, without a record, as a segfault would."""
import os

fault, _, plan = os.environ.get("MOPS_TEST_FAULT", "").partition(":")
if fault:
    import torch

    from mops.multitask.training.trainer import Trainer

    real_step = Trainer._train_step

    def faulty_step(self, data):
        if self.config.plan == plan:
            if fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by a test)")
            if fault == "crash":
                os._exit(3)
        return real_step(self, data)

    Trainer._train_step = faulty_step
'''


@pytest.fixture
def inject_fault(tmp_path, monkeypatch):
    """Call with e.g. "oom:FS" to make the sweep's worker processes fail that way; None clears it."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))

    def inject(fault: str | None) -> None:
        if fault is None:
            monkeypatch.delenv("MOPS_TEST_FAULT", raising=False)
        else:
            monkeypatch.setenv("MOPS_TEST_FAULT", fault)

    return inject


# -- the grid --------------------------------------------------------------------------------


def test_grid_is_encoders_by_plans_by_task_sets_by_seeds_in_a_fixed_order():
    sweep = SweepConfig(checkpoints=["minilm"], widths=[64], plans=["FS", "SS"], task_sets=[["sst"], ["para", "sts"]],
                        seeds=[0, 1], train={"steps": 5, "lr": 1e-3})
    runs = grid(sweep)
    assert [(c.checkpoint, c.hidden_size, c.plan, c.tasks, c.seed) for c in runs] == [
        ("minilm", None, "FS", ["sst"], 0), ("minilm", None, "FS", ["sst"], 1),
        ("minilm", None, "FS", ["para", "sts"], 0), ("minilm", None, "FS", ["para", "sts"], 1),
        ("minilm", None, "SS", ["sst"], 0), ("minilm", None, "SS", ["sst"], 1),
        ("minilm", None, "SS", ["para", "sts"], 0), ("minilm", None, "SS", ["para", "sts"], 1),
        ("random", 64, "FS", ["sst"], 0), ("random", 64, "FS", ["sst"], 1),
        ("random", 64, "FS", ["para", "sts"], 0), ("random", 64, "FS", ["para", "sts"], 1),
        ("random", 64, "SS", ["sst"], 0), ("random", 64, "SS", ["sst"], 1),
        ("random", 64, "SS", ["para", "sts"], 0), ("random", 64, "SS", ["para", "sts"], 1),
    ]
    assert all(c.steps == 5 and c.lr == 1e-3 and c.progress is False for c in runs)  # shared training settings
    assert [config_id(c) for c in grid(sweep)] == [config_id(c) for c in runs]  # the same grid twice, the same ids
    assert len({config_id(c) for c in runs}) == len(runs)


def test_config_id_ignores_where_a_run_writes_how_it_shows_progress_and_its_device():
    config = grid(SweepConfig(widths=[32], checkpoints=[], plans=["FS"]))[0]
    rid = config_id(config)
    assert len(rid) == 16 and int(rid, 16) >= 0
    assert config_id(dataclasses.replace(config, out_dir="elsewhere/run", progress=True, device="cpu")) == rid
    for change in (dict(seed=1), dict(plan="SS"), dict(lr=1e-3), dict(hidden_size=64), dict(tasks=["sst"])):
        assert config_id(dataclasses.replace(config, **change)) != rid, change


def test_widths_alone_sweep_only_random_encoders():
    runs = grid(SweepConfig(checkpoints=[], widths=[32, 64], plans=["FS"]))
    assert [(c.checkpoint, c.hidden_size) for c in runs] == [("random", 32), ("random", 64)]


# -- shards ----------------------------------------------------------------------------------


def test_parse_shard():
    assert parse_shard(None) == (0, 1) and parse_shard("") == (0, 1)
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "0/0", "1", "a/b", "1/2/3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_shard_results_path_names_one_file_per_shard(tmp_path):
    results = tmp_path / "sweep.jsonl"
    assert shard_results_path(results, (0, 1)) == results
    assert shard_results_path(results, (1, 3)) == tmp_path / "sweep.shard-1-of-3.jsonl"


def fake_run_one(config: TrainConfig, rid: str, timeout_s: float | None = None) -> dict:
    """A finished run's record without training: what a shard writes, not what it measures."""
    return {"run_id": rid, "status": "ok", "error": None, "config": dataclasses.asdict(config),
            "metrics": {"overall": 0.5}, "accounting": {"total_bytes": 2**20},
            "memory": {"peak_bytes": 2**22, "source": "rss"}, "timing": {"seconds_per_epoch": 1.0},
            "device": "test machine"}


def test_shards_partition_the_grid_into_their_own_files_and_the_report_merges_them(tmp_path, monkeypatch):
    monkeypatch.setattr(mops.bench.sweep, "run_one", fake_run_one)
    sweep = tiny_sweep(tmp_path, plans=["FF", "FS", "SF", "SS", "FI"], seeds=[0, 1])
    every_run = [config_id(c) for c in grid(sweep)]
    files = [run_sweep(sweep, shard=f"{i}/3", progress=False) for i in range(3)]
    assert files == [tmp_path / f"results.shard-{i}-of-3.jsonl" for i in range(3)]
    assert not (tmp_path / "results.jsonl").exists()
    per_shard = [[record["run_id"] for record in lines(path)] for path in files]
    assert per_shard == [every_run[i::3] for i in range(3)]  # each shard its slice, in grid order
    assert sorted(sum(per_shard, [])) == sorted(every_run)  # every run in exactly one shard

    rows = table_rows(report([str(path) for path in files], fmt="tsv"))
    assert sorted(row["plan"] for row in rows) == ["FF", "FI", "FS", "SF", "SS"]
    assert all(row["runs"] == "2/2" for row in rows)  # each plan's two seeds, from different shards


def test_cli_shard_option_runs_its_slice_into_its_own_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mops.bench.sweep, "run_one", fake_run_one)
    results = tmp_path / "results.jsonl"
    with pytest.raises(SystemExit) as ended:
        cli_main(["sweep", "--widths", "32", "--plans", "FS,SS,FF", "--results", str(results), "--shard", "1/2",
                  "--quiet", "--plot-dir", str(tmp_path / "plots")])
    assert ended.value.code == 0
    shard_file = tmp_path / "results.shard-1-of-2.jsonl"
    assert [r["config"]["plan"] for r in lines(shard_file)] == ["SS"]
    assert not results.exists()
    assert "SS" in capsys.readouterr().out


# -- real runs -------------------------------------------------------------------------------


def test_sweep_appends_one_record_per_run_and_a_rerun_skips_them(tmp_path, monkeypatch, capsys):
    sweep = tiny_sweep(tmp_path, plans=["FS", "SS"])
    results = run_sweep(sweep, progress=False)
    assert results == tmp_path / "results.jsonl"
    records = lines(results)
    assert [r["run_id"] for r in records] == [config_id(c) for c in grid(sweep)]
    for record in records:
        assert record["status"] == "ok" and record["error"] is None
        assert 0 <= record["metrics"]["overall"] <= 1
        assert record["accounting"]["total_bytes"] > 0
        assert record["memory"]["peak_bytes"] > 0 and record["memory"]["source"] in MEMORY_SOURCES
        assert record["timing"]["seconds_per_epoch"] > 0 and record["timing"]["wall_seconds"] > 0
        assert isinstance(record["device"], str) and record["device"]
        assert record["config"]["out_dir"] == str(tmp_path / "runs" / record["run_id"])
        assert (tmp_path / "runs" / record["run_id"] / "results.json").is_file()
    rows = table_rows(report(results, fmt="tsv"))
    assert sorted(row["plan"] for row in rows) == ["FS", "SS"]
    for row in rows:  # the report finds every figure it shows in the records
        assert row["status"] == "ok" and row["runs"] == "1/1"
        assert all(row[column] for column in ("pred MiB", "peak MiB", "source", "s/epoch", "overall")), row

    before = results.read_bytes()
    monkeypatch.setattr(mops.bench.sweep, "run_one", never_run)
    assert run_sweep(sweep, progress=True) == results
    assert results.read_bytes() == before
    assert "2 of 2 runs already done" in capsys.readouterr().out


def test_failed_run_is_recorded_the_sweep_goes_on_and_a_rerun_retries_only_it(tmp_path):
    sweep = tiny_sweep(tmp_path, plans=["FSS", "FS"])  # three letters for a 2-layer encoder: fails
    results = run_sweep(sweep, progress=False)
    failed, ok = lines(results)
    assert failed["status"] == "failed" and failed["config"]["plan"] == "FSS"
    assert "covers 3 layers but the model has 2" in failed["error"]
    assert failed["run_id"] == config_id(grid(sweep)[0])
    assert ok["status"] == "ok" and ok["config"]["plan"] == "FS"
    assert completed_ids(results) == {ok["run_id"]}

    run_sweep(sweep, progress=False)
    records = lines(results)
    assert [(r["config"]["plan"], r["status"]) for r in records] == [("FSS", "failed"), ("FS", "ok"), ("FSS", "failed")]


def test_worker_that_dies_without_a_record_is_recorded_as_failed_with_its_exit_code(tmp_path, inject_fault):
    inject_fault("crash:FS")
    config = grid(tiny_sweep(tmp_path, plans=["FS"]))[0]
    config.out_dir = str(tmp_path / "run")
    record = run_one(config, "some-run-id")
    assert record["status"] == "failed" and record["run_id"] == "some-run-id"
    assert record["error"].startswith("exit code 3")
    assert record["config"]["plan"] == "FS" and record["timing"]["wall_seconds"] > 0


def test_oom_inside_training_is_recorded_as_oom_and_not_retried(tmp_path, monkeypatch, inject_fault):
    inject_fault("oom:FS")
    sweep = tiny_sweep(tmp_path, plans=["FS"])
    results = run_sweep(sweep, progress=False)
    [record] = lines(results)
    assert record["status"] == "oom"
    assert "OutOfMemoryError" in record["error"] and "CUDA out of memory" in record["error"]
    assert record["memory"]["peak_bytes"] > 0  # the reading up to the failure is kept
    assert record["run_id"] == config_id(grid(sweep)[0])
    assert "oom" in table_rows(report(results, fmt="tsv"))[0]["status"]

    inject_fault(None)  # the run would now fit, but an OOM is final: a rerun does not start it
    monkeypatch.setattr(mops.bench.sweep, "run_one", never_run)
    run_sweep(sweep, progress=False)
    assert len(lines(results)) == 1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
        (RuntimeError("CUDA error: out of memory"), "oom"),
        (RuntimeError("cuBLAS handle could not be created"), "failed"),
    ],
    ids=["OutOfMemoryError", "out-of-memory-text", "other-error"],
)
def test_worker_records_the_failure_it_caught(tmp_path, monkeypatch, error, status):
    """In process: mops.bench.worker.main with a training step that raises `error`."""
    settings = dataclasses.asdict(grid(tiny_sweep(tmp_path, plans=["FS"]))[0])
    settings["out_dir"] = str(tmp_path / "run")
    spec, out = tmp_path / "config.json", tmp_path / "record.json"
    spec.write_text(json.dumps(settings))

    def failing_step(self, data):
        raise error

    monkeypatch.setattr(Trainer, "_train_step", failing_step)
    assert mops.bench.worker.main([str(spec), str(out)]) == 1
    record = json.loads(out.read_text())
    assert record["status"] == status
    assert str(error) in record["error"]
    assert record["config"] == settings
    assert record["memory"]["peak_bytes"] > 0 and record["memory"]["source"] in MEMORY_SOURCES
    assert isinstance(record["device"], str) and record["device"]
    assert not list(tmp_path.glob("*.tmp"))


def test_classify_failure_of_a_worker_that_left_no_record():
    assert _classify_failure(-signal.SIGKILL, "")[0] == "oom"
    assert _classify_failure(137, "")[0] == "oom"  # SIGKILL as a shell reports it
    status, error = _classify_failure(1, "Traceback (most recent call last):\nRuntimeError: CUDA out of memory.")
    assert status == "oom" and "CUDA out of memory" in error
    assert _classify_failure(1, "torch.OutOfMemoryError: Tried to allocate 2 GiB")[0] == "oom"
    status, error = _classify_failure(-signal.SIGSEGV, "Fatal Python error: Segmentation fault")
    assert status == "failed" and error.startswith(f"exit code {-signal.SIGSEGV}") and "Segmentation fault" in error


def test_run_past_its_time_limit_is_stopped_and_recorded_as_failed(tmp_path):
    sweep = tiny_sweep(tmp_path, plans=["FS"], timeout_s=0.5)
    [record] = lines(run_sweep(sweep, progress=False))
    assert record["status"] == "failed"
    assert "0.5 s per-run limit" in record["error"]
    assert completed_ids(sweep.results) == set()  # retried on the next run of the sweep


def test_killed_sweep_keeps_every_finished_run_and_a_rerun_completes_the_rest(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(textwrap.dedent(f"""\
        checkpoints = []
        widths = [32]
        plans = ["FS", "SS", "SF"]
        runs_dir = {json.dumps(str(tmp_path / "runs"))}

        [train]
        {chr(10).join(f"{key} = {json.dumps(value)}" for key, value in TINY_TRAIN.items())}
        """))
    results = tmp_path / "results.jsonl"
    command = ["sweep", "--config", str(config), "--results", str(results), "--quiet",
               "--plot-dir", str(tmp_path / "plots")]
    expected = [config_id(c) for c in grid(SweepConfig.from_file(config))]

    log = open(tmp_path / "sweep.log", "wb")
    # Its own session, so that the kill takes the sweep and its worker together; scratch folders
    # of the killed runs go to tmp_path.
    child = subprocess.Popen([sys.executable, "-m", "mops", *command], cwd=REPO, stdout=log, stderr=log,
                             start_new_session=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 180
        while not results.exists() or results.read_bytes().count(b"\n") < 1:
            assert child.poll() is None, (tmp_path / "sweep.log").read_text()
            assert time.monotonic() < deadline, "no run finished within three minutes"
            time.sleep(0.1)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
        log.close()
    assert child.returncode == -signal.SIGKILL
    kept = results.read_bytes()
    finished = [r["run_id"] for r in lines(results)]
    assert 1 <= len(finished) < 3 and finished == expected[: len(finished)]

    with pytest.raises(SystemExit) as ended:
        cli_main(command)
    assert ended.value.code == 0
    assert results.read_bytes().startswith(kept)  # the finished lines are untouched ...
    records = lines(results)
    assert sorted(r["run_id"] for r in records) == sorted(expected)  # ... and every run is there exactly once
    assert all(r["status"] == "ok" for r in records)


# -- sweep files -----------------------------------------------------------------------------


def test_from_file_reads_grid_keys_and_a_train_table(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(textwrap.dedent("""\
        checkpoints = ["minilm"]
        widths = [64, 128]
        plans = ["FFSSII", "SSSSSS"]
        task_sets = [["sst", "para", "sts"], ["sst"]]
        seeds = [0, 1]
        results = "out/sweep.jsonl"
        timeout_s = 600

        [train]
        steps = 100
        lr = 1e-4
        sampling = "round_robin"
        """))
    sweep = SweepConfig.from_file(path)
    assert sweep == SweepConfig(checkpoints=["minilm"], widths=[64, 128], plans=["FFSSII", "SSSSSS"],
                                task_sets=[["sst", "para", "sts"], ["sst"]], seeds=[0, 1], results="out/sweep.jsonl",
                                timeout_s=600, train={"steps": 100, "lr": 1e-4, "sampling": "round_robin"})
    assert len(grid(sweep)) == 3 * 2 * 2 * 2
    assert all(c.steps == 100 and c.sampling == "round_robin" for c in grid(sweep))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('plans = ["FS"]\nplan_list = ["SS"]\n', ["unknown keys plan_list"]),  # not a sweep key
        ('plans = ["FS"]\n[train]\nstepz = 10\n', ["unknown training settings stepz"]),
        ('plans = ["FS"]\n[train]\nplan = "SS"\n', ["plan", "grid"]),  # the grid sets it, not [train]
        ('plans = ["FS"]\n[train]\nseed = 3\nsteps = 2\n', ["seed", "grid"]),
        ('plans = ["FS"\n', ["not valid TOML"]),
        ("", ["names no setting", "default sweep"]),
        ('plans = ["FS"]\n[train]\nsteps = "10"\n', ["steps must be an integer, got '10'"]),
        ('plans = ["FS"]\n[train]\nlr = inf\n', ["lr must be a finite number, got inf"]),
        ('plans = ["FS"]\nwidths = [0]\ncheckpoints = []\n', ["hidden_size must be positive, got 0"]),
    ],
    ids=["unknown-key", "unknown-setting", "plan-in-train", "seed-in-train", "bad-toml", "empty", "steps-a-string",
         "lr-infinite", "width-zero"],
)
def test_from_file_rejects_what_it_does_not_know_naming_it_and_the_file(tmp_path, text, named):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as failed:
        SweepConfig.from_file(path)
    message = str(failed.value)
    assert message.startswith(f"{path}: ")
    assert all(fragment in message for fragment in named), message


def test_sweep_needs_a_plan_and_an_encoder():
    with pytest.raises(ValueError, match="at least one plan"):
        SweepConfig(plans=[])
    with pytest.raises(ValueError, match="checkpoint or a width"):
        SweepConfig(checkpoints=[], widths=[])


def test_runs_live_beside_their_results_file_by_default(tmp_path):
    first = SweepConfig(results=str(tmp_path / "a.jsonl"))
    second = sweep_from_args(results=str(tmp_path / "b.jsonl"), base=first)
    assert first.run_folder == tmp_path / "a.runs"
    assert second.run_folder == tmp_path / "b.runs"
    assert SweepConfig(results="x.jsonl", runs_dir=str(tmp_path / "r")).run_folder == tmp_path / "r"


def test_a_plan_string_where_a_list_belongs_is_refused():
    with pytest.raises(ValueError, match="plans must be a list"):
        SweepConfig(plans="FFSSII")


# -- one writer, finished runs kept ------------------------------------------------------------


def test_a_second_sweep_on_the_same_results_file_is_refused(tmp_path):
    sweep = tiny_sweep(tmp_path, ["FS"])
    results = Path(sweep.results)
    with exclusive(results.with_name(results.name + ".lock"), str(results), "wait"):  # a sweep already at work
        with pytest.raises(InUse, match="another --results file"):
            run_sweep(sweep, progress=False)
    assert not results.exists() and not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_a_finished_run_whose_record_was_lost_is_recovered_not_measured_again(tmp_path):
    """The sweep died after the run finished and before its line was appended: the rerun takes
    the record the run folder kept, its memory measurement included."""
    sweep = tiny_sweep(tmp_path, ["FS"])
    results = run_sweep(sweep, progress=False)
    (first,) = lines(results)
    results.unlink()
    (again,) = lines(run_sweep(sweep, progress=False))
    assert again["memory"] == first["memory"] and again["timing"]["train_seconds"] == first["timing"]["train_seconds"]
    assert again["curve"] == first["curve"] and again["resumed"] == first["resumed"]
