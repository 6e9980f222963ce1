"""Two processes under torchrun (gloo, CPU) train to the same weights as one process that sees
the same global batches: each rank takes half of every batch and DDP averages the gradients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from embedded import requires_embedded_checkpoint
from multitask.config import TrainConfig
from multitask.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
              requires_embedded_checkpoint]  # the child processes build their encoder from it

# Dropout off, so both runs compute the same function; a grouped plan leaves some copies and
# heads idle at every step, which is the case DDP must be told about.
ARGS = ["train", "--checkpoint", "random", "--hidden-size", "32", "--num-layers", "2", "--plan", "S[sst+para|sts]",
        "--data", "demo", "--steps", "6", "--eval-every", "6", "--batch-size", "8", "--max-length", "32",
        "--max-eval-examples", "16", "--dropout", "0", "--head-dropout", "0", "--lr", "1e-3",
        "--sampling", "round_robin", "--backend", "torch", "--quiet"]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=False)["model"]


def test_two_processes_match_one(tmp_path):
    single = subprocess.run([sys.executable, "-m", "mops", *ARGS, "--out", str(tmp_path / "one")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mops", *ARGS, "--out", str(tmp_path / "two")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        # Float sums run in another order across ranks; nothing else may differ.
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    record_two = (tmp_path / "two" / "results.json").read_text()
    assert '"world_size": 2' in record_two
    # The runs really trained: weights moved away from their initial values.
    initial = Trainer(TrainConfig(tasks=["sst", "para", "sts"], plan="S[sst+para|sts]", checkpoint="random",
                                  hidden_size=32, num_layers=2, data="demo", max_length=32, progress=False,
                                  out_dir=str(tmp_path / "init"), backend="torch")).model.state_dict()
    moved = sum(not torch.equal(initial[name], one[name]) for name in one)
    assert moved > len(one) // 2
