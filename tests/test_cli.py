"""`mops`: plan, report, sweep, data download, and one-line errors for bad input.

Commands run in process through `mops.cli.main`, which always ends in SystemExit with the
exit status; `mops sweep` still starts one child process per run.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
from pathlib import Path

import pytest
from embedded import requires_embedded_checkpoint

from mops.bench import sweep as sweep_module
from mops.bench.records import append_record, run_id
from mops.cli import main
from mops.multitask.data.tasks import TASK_NAMES
from mops.multitask.training import run_files, trainer

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MiB = 2**20


def mops(*args: str) -> int:
    """Run `mops ARGS` in this process and return its exit status."""
    with pytest.raises(SystemExit) as ended:
        main(list(args))
    return ended.value.code


def one_error_line(err: str) -> str:
    assert err.startswith("mops: error: ") and err.count("\n") == 1, err
    return err


# -- mops plan -------------------------------------------------------------------------------


def test_plan_prints_each_piece_and_what_the_plan_costs(capsys):
    assert mops("plan", "F2S2[sst+para|sts]2") == 0
    out = capsys.readouterr().out
    assert out.startswith("plan 'FFSS[sst+para|sts]2': 6 layers, tasks sst, para, sts\n")
    pieces = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:10]}
    assert list(pieces) == ["embeddings", *[f"layer.{i}" for i in range(6)], "pooler"]
    for name in ("embeddings", "layer.0", "layer.1"):
        assert pieces[name] == ["F", "frozen", "1", "sst+para+sts"], name
    for name in ("layer.2", "layer.3"):
        assert pieces[name] == ["S", "shared", "1", "sst+para+sts"], name
    for name in ("layer.4", "layer.5", "pooler"):
        assert pieces[name] == ["G", "groups", "2", "sst+para", "|", "sts"], name

    counts = re.search(r"^parameters: ([\d,]+) unique, ([\d,]+) trainable$", out, re.M)
    unique, trainable = (int(n.replace(",", "")) for n in counts.groups())
    assert 0 < trainable < unique  # three frozen pieces
    memory = re.search(r"^memory for weights ([\d.,]+) MiB, gradients ([\d.,]+) MiB, AdamW state ([\d.,]+) MiB: "
                       r"([\d.,]+) MiB before activations$", out, re.M)
    weights, grads, adam, total = (float(n.replace(",", "")) for n in memory.groups())
    # fp32: 4 bytes per weight, 4 per gradient and 8 of AdamW moments per trainable parameter
    assert weights == pytest.approx(4 * unique / MiB, abs=0.05)
    assert grads == pytest.approx(4 * trainable / MiB, abs=0.05)
    assert adam == pytest.approx(8 * trainable / MiB, abs=0.05)
    assert total == pytest.approx(weights + grads + adam, abs=0.15)


def test_plan_says_when_a_weightless_pooling_takes_the_poolers_place(capsys):
    assert mops("plan", "FFSSII", "--pooling", "mean") == 0
    mean = capsys.readouterr().out
    assert "pooling: mean (no weights), in place of the pooler row above" in mean
    assert mops("plan", "FFSSII", "--pooling", "pooler") == 0
    pooler = capsys.readouterr().out
    assert "pooling:" not in pooler

    def trainable(out: str) -> int:
        return int(re.search(r"([\d,]+) trainable", out).group(1).replace(",", ""))

    assert trainable(pooler) - trainable(mean) == 3 * (384 * 384 + 384)  # three pooler copies' dense layers


def test_plan_sizes_the_frozen_prefix_cache(capsys):
    assert mops("plan", "FFFSSS", "--examples", "1000", "--mean-length", "20") == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("frozen-prefix cache")]
    fp32, bf16 = 1000 * 20 * 384 * 4 / MiB, 1000 * 20 * 384 * 2 / MiB  # a vector of 384 per real token
    assert line == (f"frozen-prefix cache for 1,000 examples of 20 tokens on average (384 values per real token): "
                    f"{fp32:,.1f} MiB in fp32, {bf16:,.1f} MiB under bf16 (off: --no-cache-frozen)")
    assert mops("plan", "FFFFFF", "--examples", "1000") == 0  # the whole encoder frozen: pooled vectors
    assert f"(one pooled vector per example): {1000 * 384 * 4 / MiB:,.1f} MiB in fp32" in capsys.readouterr().out
    assert mops("plan", "SSSSSS") == 0
    assert "\nfrozen-prefix cache: none (the plan has no frozen prefix)\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("plan", "says"),
    [
        ("F2S2X2", "layer 4 (0-based, bottom to top), character 4: unknown letter 'X'"),
        ("F2S2I3", "covers 7 layers but the model has 6"),
    ],
    ids=["unknown-letter", "too-deep"],
)
def test_bad_plan_exits_2_with_one_line_naming_the_layer(capsys, plan, says):
    assert mops("plan", plan) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing printed before the error
    assert says in one_error_line(err)


# -- mops report -----------------------------------------------------------------------------


def sweep_record(plan: str, status: str = "ok", overall: float | None = None, error: str | None = None) -> dict:
    config = {"checkpoint": "minilm", "hidden_size": 384, "num_layers": 6, "plan": plan,
              "tasks": ["sst", "para", "sts"], "seed": 0}
    record = {"run_id": run_id(config), "status": status, "error": error, "config": config, "device": "test machine",
              "accounting": {"unique_params": 22_713_216, "trainable_params": 11_000_000, "total_bytes": 300 * MiB},
              "memory": {"peak_bytes": 1200 * MiB, "source": "rss"}}
    if status == "ok":
        record["metrics"] = {"sst_acc": 0.4, "para_acc": 0.7, "sts_r": 0.5, "overall": overall}
        record["timing"] = {"seconds_per_epoch": 42.0}
        record["curve"] = [{"step": s, "seconds": 10.0 * s, "metrics": {"overall": overall * s / 2}} for s in (1, 2)]
    return record


def test_report_of_a_results_file_prints_the_table_and_writes_the_plots(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    append_record(results, sweep_record("FFSSII", overall=0.61))
    append_record(results, sweep_record("IIIIII", "oom", error="torch.OutOfMemoryError: CUDA out of memory."))
    plots = tmp_path / "plots"
    assert mops("report", str(results), "--plot-dir", str(plots)) == 0
    out = capsys.readouterr().out
    header, rule, *rows = out.split("\n\n")[0].splitlines()
    assert header.startswith("|") and "peak MiB" in header and "overall" in header
    assert [row.split("|")[2].strip() for row in rows] == ["FFSSII", "IIIIII"]
    assert "0.610" in rows[0] and rows[1].rstrip(" |").endswith("oom")
    assert "- IIIIII w384 seed 0: oom: torch.OutOfMemoryError: CUDA out of memory." in out
    assert f"plots: {plots / 'pareto.png'}, {plots / 'curves.png'}" in out
    for name in ("pareto.png", "curves.png"):
        assert (plots / name).read_bytes().startswith(PNG_SIGNATURE), name


def test_report_of_a_benchmark_json_prints_the_benchmark_table(capsys):
    fixture = FIXTURES / "benchmark.json"
    assert mops("report", str(fixture), "--format", "plain") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{fixture}:\n")
    assert out.splitlines()[1].split()[:5] == ["name", "group", "median", "mean", "±"]
    names = [b["name"] for b in json.loads(fixture.read_text())["benchmarks"]]
    assert all(name in out for name in names)


def test_report_of_a_missing_file_is_a_one_line_error(tmp_path, capsys):
    assert mops("report", str(tmp_path / "nothing.jsonl")) == 2
    assert "nothing.jsonl" in one_error_line(capsys.readouterr().err)


# -- mops sweep ------------------------------------------------------------------------------


def test_sweep_options_make_the_grid(tmp_path, monkeypatch):
    """Each grid option, parsed: runs are recorded but not trained (a stand-in for the child process)."""
    started = []

    def record_only(config, rid, timeout_s=None):
        started.append(config)
        return {"run_id": rid, "status": "ok", "config": dataclasses.asdict(config), "metrics": {"overall": 0.5}}

    monkeypatch.setattr(sweep_module, "run_one", record_only)
    assert mops("sweep", "--widths", "32,64", "--plans", "FS", "--task-sets", "sst,para;sts", "--seeds", "1,2",
                "--steps", "3", "--lr", "1e-3", "--results", str(tmp_path / "r.jsonl"), "--quiet") == 0
    assert [(c.checkpoint, c.hidden_size, c.plan, c.tasks, c.seed) for c in started] == [
        ("random", 32, "FS", ["sst", "para"], 1), ("random", 32, "FS", ["sst", "para"], 2),
        ("random", 32, "FS", ["sts"], 1), ("random", 32, "FS", ["sts"], 2),
        ("random", 64, "FS", ["sst", "para"], 1), ("random", 64, "FS", ["sst", "para"], 2),
        ("random", 64, "FS", ["sts"], 1), ("random", 64, "FS", ["sts"], 2),
    ]
    assert all(c.steps == 3 and c.lr == 1e-3 for c in started)


@requires_embedded_checkpoint  # the sweep's child process builds its encoder from it
def test_sweep_from_the_command_line_trains_writes_results_and_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # run folders go under ./results/runs
    assert mops("sweep", "--widths", "32", "--plans", "FFFSSS", "--task-sets", "sst,sts", "--seeds", "7",
                "--steps", "2", "--eval-every", "2", "--batch-size", "8", "--max-length", "32",
                "--max-eval-examples", "16", "--backend", "torch", "--data", "demo",
                "--results", "out/results.jsonl", "--quiet") == 0
    [line] = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["status"] == "ok", record["error"]
    config = record["config"]
    assert (config["checkpoint"], config["hidden_size"], config["plan"]) == ("random", 32, "FFFSSS")
    assert (config["tasks"], config["seed"]) == (["sst", "sts"], 7)
    assert (config["steps"], config["batch_size"], config["max_length"], config["backend"]) == (2, 8, 32, "torch")
    assert set(record["metrics"]) == {"sst_acc", "sts_r", "overall"}
    out = capsys.readouterr().out
    header, rule, *rows = out.split("\n\n")[0].splitlines()
    assert "sst_acc" in header and "sts_r" in header and "para_acc" not in header
    assert [row.split("|")[2].strip() for row in rows] == ["FFFSSS"]
    assert all(row.rstrip(" |").endswith("ok") for row in rows)
    assert (tmp_path / "out" / "pareto.png").is_file() and (tmp_path / "out" / "curves.png").is_file()


def test_sweep_with_an_unknown_task_exits_2_before_any_run(tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    assert mops("sweep", "--widths", "32", "--plans", "FS", "--task-sets", "sst;nli", "--results", str(results)) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "unknown task(s) nli" in err and ", ".join(TASK_NAMES) in err
    assert not results.exists()


def test_sweep_config_file_with_an_unknown_key_exits_2_naming_it(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text('plans = ["FS"]\nseed = 1\n')
    assert mops("sweep", "--config", str(config), "--results", str(tmp_path / "r.jsonl")) == 2
    err = one_error_line(capsys.readouterr().err)
    assert str(config) in err and "unknown keys seed" in err


# -- mops data, mops train -------------------------------------------------------------------


def test_data_download_help(capsys):
    assert mops("data", "download", "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mops data download")
    assert "--base-url" in out and "--sha256" in out


def test_train_with_an_unknown_task_exits_2_listing_the_valid_tasks(tmp_path, capsys):
    assert mops("train", "--tasks", "sst,nli", "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"mops train: error: argument --tasks: unknown task(s) nli; "
                                    f"choose from {', '.join(TASK_NAMES)}")
    assert not (tmp_path / "run").exists()


# -- bad input and failing disks: one line, before any work ------------------------------------

TINY_TRAIN_ARGS = ["train", "--tasks", "sst", "--checkpoint", "random", "--hidden-size", "32", "--num-layers", "1",
                   "--steps", "2", "--batch-size", "4", "--max-eval-examples", "8", "--backend", "torch"]


@pytest.mark.parametrize(("args", "says"), [
    (["--hidden-size", "0"], "hidden_size must be positive, got 0"),
    (["--num-layers", "0"], "num_layers must be positive, got 0"),
    (["--seconds", "nan"], "seconds must be a finite number, got nan"),
    (["--epochs", "inf"], "epochs must be a finite number, got inf"),
    (["--lora-alpha", "nan"], "lora_alpha must be a finite number, got nan"),
    (["--warmup", "1.5"], "warmup must be a fraction in [0, 1), got 1.5"),
    (["--out", ""], "out_dir is empty; name the run folder (--out)"),
    (["--max-length", "100000"], "max_length 100000 is longer than the 512 positions"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_settings_out_of_range_are_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                                                 args, says):
    monkeypatch.chdir(tmp_path)
    assert mops(*TINY_TRAIN_ARGS, "--out", str(tmp_path / "run"), *args) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "option"), [
    (["plan", "FFSSII", "--examples", "-5"], "--examples"), (["plan", "FFSSII", "--length", "0"], "--length"),
    (["advise", "--budget", "1GiB", "--candidates", "0"], "--candidates"),
])
def test_a_command_s_own_numbers_must_be_above_zero(capsys, args, option):
    with pytest.raises(SystemExit) as ended:
        main(args)
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err and "must be a finite number above zero" in err


def test_a_run_folder_on_a_read_only_disk_fails_in_one_line_before_training(tmp_path, monkeypatch, capsys):
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "run")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_files.os, "open", read_only)
    monkeypatch.setattr(trainer.Trainer, "_train_step", lambda self, data: pytest.fail("trained on a read-only disk"))
    assert mops(*TINY_TRAIN_ARGS, "--out", str(tmp_path / "run")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Read-only file system" in line and str(tmp_path / "run") in line and "free space" in line
