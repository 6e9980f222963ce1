"""Project-wide pytest set-up.

* Without a GPU, Triton kernels run through Triton's CPU interpreter; the variable must be
  set before any kernel is defined, so it is set here, before the tests import `kernels`.
* `pytest --benchmark` runs the benchmark suite under bench/suite instead of the tests.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCH_SUITE = os.path.join(os.path.dirname(__file__), "bench", "suite")


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suite (bench/suite) instead of the correctness tests",
    )


def pytest_configure(config):
    """With --benchmark and no explicit paths, collect the benchmark suite instead of tests/."""
    if not config.getoption("--benchmark"):
        return
    default_args = {os.path.abspath(p) for p in config.getini("testpaths")} | {os.path.abspath(str(config.rootpath))}
    if not config.args or {os.path.abspath(a) for a in config.args} <= default_args:
        config.args[:] = [BENCH_SUITE]


def pytest_collection_modifyitems(config, items):
    import pytest

    benchmarking = config.getoption("--benchmark")
    skip_bench = pytest.mark.skip(reason="benchmark: run with `pytest --benchmark`")
    for item in items:
        in_suite = str(item.fspath).startswith(BENCH_SUITE)
        if in_suite and not benchmarking:
            item.add_marker(skip_bench)
