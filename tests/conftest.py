"""Fixtures shared by the correctness tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mops.minbert.checkpoint import EmbeddedCheckpointMissing, embedded_checkpoint_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The embedded all-MiniLM-L6-v2 checkpoint folder."""
    return embedded_checkpoint_dir()


def _skip_without_the_embedded_checkpoint():
    """A test that reaches for the embedded checkpoint where it is not installed is skipped, not failed."""
    try:
        return (yield)
    except EmbeddedCheckpointMissing as missing:
        pytest.skip(f"needs the embedded checkpoint: {missing}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _skip_without_the_embedded_checkpoint())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _skip_without_the_embedded_checkpoint())
