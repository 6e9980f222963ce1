"""mops.multitask.training.precision and its use in the trainer: which autocast a run gets, fp32 master
weights and AdamW state, evaluation under the same autocast, and fp16 steps skipped on overflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mops.common import machine
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.precision import Precision, resolve_precision
from mops.multitask.training.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(
        tasks=["sst", "para", "sts"], plan="FS", checkpoint="random", hidden_size=32, num_layers=2,
        data="demo", steps=6, batch_size=8, max_length=32, eval_every=6, max_eval_examples=24,
        lr=1e-3, out_dir=str(tmp_path / "run"), progress=False, backend="torch", device="cpu",
    )
    return TrainConfig(**{**settings, **overrides})


# ---- which precision -------------------------------------------------------------------------


def test_auto_is_fp32_on_the_cpu_and_explicit_choices_hold():
    assert resolve_precision("auto", CPU) == Precision("fp32", "cpu")
    assert resolve_precision("bf16", CPU).dtype is torch.bfloat16
    assert resolve_precision("fp16", CPU).dtype is torch.float16
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp16, fp32; got 'fp8'"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize(("has_bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_where_it_exists_and_fp16_elsewhere(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: has_bf16)
    assert resolve_precision("auto", CUDA) == Precision(expected, "cuda")


def test_bf16_on_a_gpu_without_it_says_to_use_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(machine, "gpu_name", lambda index: "Tesla V100")
    with pytest.raises(ValueError, match="Tesla V100 has no bf16 arithmetic; use --precision fp16"):
        resolve_precision("bf16", CUDA)


def test_only_fp16_scales_the_loss():
    assert Precision("fp16", "cpu").grad_scaler().is_enabled()
    assert not Precision("bf16", "cpu").grad_scaler().is_enabled()
    assert not Precision("fp32", "cpu").grad_scaler().is_enabled()


# ---- training under autocast -----------------------------------------------------------------


def _linear_output_dtypes(trainer: Trainer) -> list[torch.dtype]:
    """Record the output dtype of the first query projection at every call."""
    seen: list[torch.dtype] = []
    query = next(m for name, m in trainer.model.named_modules() if name.endswith("attention.self.query"))
    query.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    return seen


def test_bf16_on_the_cpu_trains_and_evaluates_under_autocast_with_fp32_master_weights(tmp_path):
    trainer = Trainer(tiny(tmp_path, precision="bf16"))
    seen = _linear_output_dtypes(trainer)
    record = trainer.train()
    assert seen and set(seen) == {torch.bfloat16}  # training steps and evaluation both
    assert record["precision"] == "bf16" and record["config"]["precision"] == "bf16"
    assert all(p.dtype is torch.float32 for p in trainer.model.parameters())
    moments = [t for state in trainer.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    assert moments and all(t.dtype is torch.float32 for t in moments)
    assert all(torch.isfinite(torch.tensor(v)) for v in record["metrics"].values())


def test_fp32_runs_without_autocast(tmp_path):
    trainer = Trainer(tiny(tmp_path, precision="auto"))
    seen = _linear_output_dtypes(trainer)
    record = trainer.train()
    assert set(seen) == {torch.float32} and record["precision"] == "fp32"


def test_the_demo_corpus_trains_under_bf16_as_under_fp32(tmp_path):
    """MiniLM's top layers on the demo corpus, 60 steps: bf16 learns what fp32 learns."""
    overall = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(tasks=["sst", "para", "sts"], plan="FFFFSS", data="demo", steps=60, batch_size=16,
                             max_length=48, eval_every=60, max_eval_examples=120, lr=2e-4, sampling="round_robin",
                             backend="torch", device="cpu", precision=precision, out_dir=str(tmp_path / precision), progress=False)
        trainer = Trainer(config)
        before = trainer.evaluate()["overall"]
        overall[precision] = trainer.train()["metrics"]["overall"]
        assert overall[precision] > before + 0.08, (precision, before, overall[precision])
    assert overall["bf16"] == pytest.approx(overall["fp32"], abs=0.03)


def test_an_overflowing_fp16_step_is_skipped_counted_and_training_goes_on(tmp_path):
    trainer = Trainer(tiny(tmp_path, precision="fp16", steps=5, eval_every=5))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # no overflow but the injected one
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    backward_calls = []

    def poison_third_step(grad: torch.Tensor) -> torch.Tensor:
        backward_calls.append(1)
        return torch.full_like(grad, float("inf")) if len(backward_calls) == 3 else grad

    param.register_hook(poison_third_step)
    updates = []
    real_step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (updates.append(trainer.state["step"]), real_step(*a, **k))[1]

    record = trainer.train()
    assert len(backward_calls) == 5
    assert updates == [0, 1, 3, 4]  # the optimizer never saw step 2's (0-based) gradients
    assert record["timing"]["skipped_steps"] == 1
    assert json.loads((tmp_path / "run" / "results.json").read_text())["timing"]["skipped_steps"] == 1
    assert torch.isfinite(param).all()
    assert trainer.scaler.get_scale() < 1.0  # the scale backed off after the overflow


def test_the_scaler_is_saved_and_restored_with_the_run(tmp_path):
    first = Trainer(tiny(tmp_path, precision="fp16", steps=3, eval_every=3))
    first.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)  # grows every clean step
    first.train()
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["scaler"]
    resumed = Trainer(tiny(tmp_path, precision="fp16", steps=6, eval_every=3))
    assert resumed.scaler.get_scale() == 65536.0  # a fresh scaler's
    assert resumed._try_resume()
    assert resumed.scaler.get_scale() == saved["scale"] == first.scaler.get_scale() != 65536.0
