"""Fixtures shared by the correctness tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minbert.checkpoint import embedded_checkpoint_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The embedded all-MiniLM-L6-v2 checkpoint folder."""
    return embedded_checkpoint_dir()
