"""Project-wide pytest set-up.

* Without a GPU, Triton kernels run through Triton's CPU interpreter; the variable must be
  set before any kernel is defined, so it is set here, before the tests import `kernels`.
* `pytest --benchmark` runs the benchmark suite under benchmarks instead of the tests.
* Under pytest-xdist the workers share the cores: each gets cores / workers threads (torch's
  and, through OMP_NUM_THREADS, its child processes'), not a thread per core each.
* With MOPS_FAILURE_LOG set, each failure's traceback is appended to that file (one JSON line)
  the moment it happens, so a run stopped at a deadline still tells why its failures failed.
"""

import json
import os
import time

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["pytester"]  # tests of this file run it on a suite of their own

BENCH_SUITE = os.path.join(os.path.dirname(__file__), "benchmarks")
RESULTS = os.path.join(os.path.dirname(__file__), "results")
FAILURE_LOG_ENV = "MOPS_FAILURE_LOG"  # tools.gpu_check sets it for its test run
# Set by .ci/run: the skip reasons (prefixes, "|" between them) a green run may have. Any other
# skip fails the run: a missing embedded checkpoint or `transformers` once turned most of the
# suite into skips while CI stayed green.
ALLOWED_SKIPS_ENV = "MOPS_ALLOWED_SKIPS"
_failure_log = None  # the file, in the process that reports (the xdist controller, or the only one)
_unexpected_skips: list[str] = []  # "node: reason" of each skip no allowed reason explains


def share_the_cores(workers, cpu_count, environ):
    """Threads for one of `workers` test processes, also set as OMP_NUM_THREADS in `environ` for
    its children; None where there is nothing to share or OMP_NUM_THREADS was chosen already.
    Eight workers of a thread per core each ran the CPU tests eight times oversubscribed."""
    if workers <= 1 or "OMP_NUM_THREADS" in environ:
        return None
    threads = max(1, (cpu_count or 1) // workers)
    environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suite (benchmarks) instead of the correctness tests",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """With --benchmark: collect the benchmark suite instead of tests/ (unless paths are given),
    and save the run as JSON under results/, named after the device."""
    global _failure_log
    if not hasattr(config, "workerinput"):  # xdist workers forward their reports to the controller
        _failure_log = os.environ.get(FAILURE_LOG_ENV) or None
    else:
        threads = share_the_cores(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), os.cpu_count(), os.environ)
        if threads:
            torch.set_num_threads(threads)
    if not config.getoption("--benchmark"):
        return
    default_args = {os.path.abspath(p) for p in config.getini("testpaths")} | {os.path.abspath(str(config.rootpath))}
    if not config.args or {os.path.abspath(a) for a in config.args} <= default_args:
        config.args[:] = [BENCH_SUITE]
    if getattr(config.option, "benchmark_json", None) is None:
        from mops.common.machine import device_tag

        os.makedirs(RESULTS, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config.option.benchmark_json = os.path.join(RESULTS, f"{device_tag()}-{stamp}.json")


def pytest_collection_modifyitems(config, items):
    benchmarking = config.getoption("--benchmark")
    skip_bench = pytest.mark.skip(reason="benchmark: run with `pytest --benchmark`")
    for item in items:
        in_suite = str(item.fspath).startswith(BENCH_SUITE)
        if in_suite and not benchmarking:
            item.add_marker(skip_bench)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep recorded results small: summary statistics, not every raw timing."""
    for bench in output_json.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)


def skip_reason(report) -> str:
    """The reason a skipped test report gives ("needs a CUDA GPU"), without pytest's prefix."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def unexpected_skip(reason: str, allowed: str | None) -> bool:
    """Whether a skip with this reason should fail a run whose allowed reasons are `allowed`."""
    if allowed is None:
        return False
    return not any(reason.startswith(prefix) for prefix in allowed.split("|") if prefix)


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if unexpected_skip(reason, os.environ.get(ALLOWED_SKIPS_ENV)):
            _unexpected_skips.append(f"{report.nodeid}: {reason}")
    if _failure_log and report.failed:
        entry = {"node": report.nodeid, "when": report.when, "text": report.longreprtext}
        with open(_failure_log, "a") as log:
            log.write(json.dumps(entry) + "\n")


def pytest_terminal_summary(terminalreporter):
    if _unexpected_skips:
        terminalreporter.section(f"skips {ALLOWED_SKIPS_ENV} does not allow")
        for line in _unexpected_skips:
            terminalreporter.line(line)


def pytest_sessionfinish(session, exitstatus):
    if _unexpected_skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
