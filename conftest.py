"""Project-wide pytest set-up.

* Without a GPU, Triton kernels run through Triton's CPU interpreter; the variable must be
  set before any kernel is defined, so it is set here, before the tests import `kernels`.
* `pytest --benchmark` runs the benchmark suite under bench/suite instead of the tests.
"""

import os
import time

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCH_SUITE = os.path.join(os.path.dirname(__file__), "bench", "suite")
RESULTS = os.path.join(os.path.dirname(__file__), "bench", "results")


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suite (bench/suite) instead of the correctness tests",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """With --benchmark: collect the benchmark suite instead of tests/ (unless paths are given),
    and save the run as JSON under bench/results/, named after the device."""
    if not config.getoption("--benchmark"):
        return
    default_args = {os.path.abspath(p) for p in config.getini("testpaths")} | {os.path.abspath(str(config.rootpath))}
    if not config.args or {os.path.abspath(a) for a in config.args} <= default_args:
        config.args[:] = [BENCH_SUITE]
    if getattr(config.option, "benchmark_json", None) is None:
        from multitask.environment import device_tag

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
