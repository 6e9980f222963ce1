"""The project-wide pytest set-up (the root conftest.py): parallel workers share the cores."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def root_conftest():
    spec = importlib.util.spec_from_file_location("root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parallel_workers_share_the_cores(root_conftest):
    environ = {}
    assert root_conftest.share_the_cores(8, 16, environ) == 2
    assert environ == {"OMP_NUM_THREADS": "2"}  # child processes (a `mops train` in a test) follow
    assert root_conftest.share_the_cores(8, 4, {}) == 1  # more workers than cores: one thread each


def test_one_process_or_a_chosen_thread_count_is_left_alone(root_conftest):
    assert root_conftest.share_the_cores(1, 16, {}) is None
    chosen = {"OMP_NUM_THREADS": "6"}
    assert root_conftest.share_the_cores(8, 16, chosen) is None and chosen == {"OMP_NUM_THREADS": "6"}
