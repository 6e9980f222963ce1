"""Two processes under torchrun (gloo, CPU) train to the same weights and metrics as one process
that sees the same global batches: each rank takes its slice of every batch, weighs its loss by
its share of the batch's examples, and DDP averages the gradients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from embedded import requires_embedded_checkpoint

from mops.multitask.training.config import TrainConfig
from mops.multitask.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
              requires_embedded_checkpoint]  # the child processes build their encoder from it

# Dropout off, so both runs compute the same function; a grouped plan leaves some copies and
# heads idle at every step, which is the case DDP must be told about. 13 training examples per
# task in batches of 5 make two batches of 5 and an epoch's remainder of 3: in every batch one
# rank holds one example more than the other, so only weighing each rank's loss by its share
# gives the global batch's mean gradient. 9 steps an epoch: the 12 steps start a second epoch. With
# a frozen layer at the bottom, each rank caches the prefix outputs of the examples it sees.
EXAMPLES, BATCH = 13, 5
COMMON = ["train", "--checkpoint", "random", "--hidden-size", "32", "--num-layers", "2", "--data", "demo",
          "--steps", "12", "--eval-every", "6", "--batch-size", str(BATCH), "--max-length", "32",
          "--max-train-examples", str(EXAMPLES), "--max-eval-examples", "16", "--dropout", "0", "--head-dropout", "0",
          "--lr", "1e-3",
          "--sampling", "round_robin", "--backend", "torch", "--device", "cpu", "--quiet"]
# (plan, further options): the fourth case scores pairs with cosine heads on sentences encoded alone;
# the fifth reads pairs in a random order per batch (the same on every rank) and caches both orders.
CASES = [("S[sst+para|sts]", []), ("F[sst+para|sts]", []), ("BL[sst+para|sts]", []),
         ("S[sst+para|sts]", ["--pooling", "mean", "--cosine-tasks", "para,sts"]),
         ("F[sst+para|sts]", ["--symmetric-pairs"])]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=False)["model"]


# "BL[sst+para|sts]": BitFit below, LoRA with one update for sst+para and one for sts above.
@pytest.mark.parametrize("plan, options", CASES,
                         ids=["shared-and-groups", "frozen-prefix-cached", "bitfit-and-lora", "mean-siamese-cosine",
                              "symmetric-pairs-cached"])
def test_two_processes_match_one(tmp_path, plan, options):
    assert BATCH % 2 and EXAMPLES % BATCH % 2  # every batch, an epoch's remainder too, splits unevenly
    args = [*COMMON, "--plan", plan, *options]
    single = subprocess.run([sys.executable, "-m", "mops", *args, "--out", str(tmp_path / "one")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mops", *args, "--out", str(tmp_path / "two")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        # Float sums run in another order across ranks; nothing else may differ.
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    record_one = json.loads((tmp_path / "one" / "results.json").read_text())
    record_two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert record_two["config"]["world_size"] == 2
    assert record_two["metrics"] == pytest.approx(record_one["metrics"], rel=1e-4, abs=1e-6)
    if plan.startswith("F"):
        assert record_two["prefix_cache"]["enabled"] and record_two["prefix_cache"]["hits"] > 0
    # The runs really trained: weights moved away from their initial values.
    model = Trainer(TrainConfig(tasks=["sst", "para", "sts"], plan=plan, checkpoint="random",
                                hidden_size=32, num_layers=2, data="demo", max_length=32, progress=False,
                                out_dir=str(tmp_path / "init"), backend="torch", device="cpu")).model
    initial = model.state_dict()
    updated = {name for name, p in model.named_parameters() if p.requires_grad}  # not F pieces, not L/B bases
    trainable = [name for name in one if not name.startswith("pieces.embeddings") and name in updated]
    assert trainable
    moved = sum(not torch.equal(initial[name], one[name]) for name in trainable)
    assert moved > len(trainable) // 2

