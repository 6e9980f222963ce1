"""The training step is capture-safe: it compiles whole, and replaying it draws new dropout masks.

A CUDA graph replays the kernels a step launched when it was captured, with the arguments it
had then; nothing the host computes per step reaches a replay. So the step (forward, loss,
backward, AdamW) must never wait for the device nor branch on a device value, and everything
that changes from step to step (dropout seeds, AdamW's counts, the learning rate) must be
drawn, counted or read on the device. On the CPU that is checked three ways:

- `torch.compile(fullgraph=True)` of the torch backend's step: a read of a device value or a
  branch on one is a graph break, and fullgraph makes a break an error; and one compiled graph
  serves every later step (a per-step host number would be baked in and force a recompile);
- replay-shaped runs: the same step function run again from the same static input buffers (as
  a replayed graph runs) draws a new dropout mask each time;
- every host read of a device value goes through one op, `aten._local_scalar_dense` (`.item()`,
  `float(t)`, `bool(t)`); a dispatch mode that watches for it (and for `equal` and `nonzero`,
  which also wait for a GPU) sees none in a step (compilation alone would not: a read whose value
  goes unused compiles without a break);
- with the Triton kernels (interpreter): two such runs make launches whose host-side arguments
  are identical, yet the masks differ.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from test_trainer import tiny
from torch.utils._python_dispatch import TorchDispatchMode

import mops.kernels.dispatch
from mops.multitask.training.graphs import resolve_graphs
from mops.multitask.training.trainer import Trainer

can_trace_backward = pytest.mark.skipif(not hasattr(torch._dynamo.config, "trace_autograd_ops"),
                                        reason="this torch cannot trace Tensor.backward() in a compiled function")
needs_interpreter = pytest.mark.skipif(not mops.kernels.dispatch.interpreter_enabled(),
                                       reason="the Triton kernels on the CPU need TRITON_INTERPRET=1")


class HostReads(TorchDispatchMode):
    """Records every op that hands a device value to the host (on a GPU: waits for the device)."""

    WAITING = (torch.ops.aten._local_scalar_dense, torch.ops.aten.equal, torch.ops.aten.is_nonzero,
               torch.ops.aten.nonzero)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in self.WAITING:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _one_task(tmp_path, **overrides) -> Trainer:
    settings = dict(tasks=["sst"], plan="SS", max_train_examples=16, eval_every=100)
    settings.update(overrides)
    return Trainer(tiny(tmp_path, **settings))


def _static_batch(trainer: Trainer):
    data = trainer.data[0]
    inputs, labels = trainer._inputs(data, "train", trainer._next_batch(data))
    return data.task.name, inputs, labels


@can_trace_backward
def test_the_step_compiles_whole_and_one_graph_serves_every_step(tmp_path):
    """Compiled (fullgraph) and eager steps from the same start on the same batches end at the same
    weights, while the schedule moves the rate and AdamW's counts grow: all inside one graph."""
    torch._dynamo.reset()
    # Padded to the longest allowed length: one shape, so one graph (a graph serves one padded shape).
    runs = [_one_task(tmp_path / name, dropout=0.0, head_dropout=0.0, weight_decay=0.01, pad_multiple=32)
            for name in ("a", "b")]
    batches = [_static_batch(runs[1]) for _ in range(4)]
    for trainer in runs:  # one eager step first: AdamW's state exists before the compiled steps
        trainer._step(*batches[0])
    compiled = torch.compile(runs[0]._step, fullgraph=True, backend="eager")
    try:
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            for i, batch in enumerate(batches[1:], start=1):
                progress = (i + 0.5) / 8  # warm-up and decay of a linear schedule: the rate changes
                for trainer in runs:
                    trainer.progress.fill_(progress)
                with torch._dynamo.config.patch(error_on_recompile=i > 1):
                    got = compiled(*batch)
                want = runs[1]._step(*batch)
                assert torch.equal(got, want), i
    finally:
        torch._dynamo.reset()
    counts = {state["step"].item() for state in runs[0].optimizer.state.values()}
    assert counts == {4.0}
    for (name, a), (_, b) in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().items()):
        assert torch.equal(a, b), name
    assert runs[0].ledger.read()["steps"] == 4


def test_the_watch_sees_every_kind_of_read():
    with HostReads() as reads:
        x = torch.ones(3).sum()
        x.item(), float(x), bool(x > 0), torch.equal(x, x)
    assert len(reads.seen) == 4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_step_reads_no_device_value(tmp_path, precision):
    """Forward, loss, backward, the schedule, AdamW and the ledger, twice: nothing read back."""
    trainer = _one_task(tmp_path, precision=precision, weight_decay=0.01)
    task, inputs, labels = _static_batch(trainer)
    with HostReads() as reads:
        for _ in range(2):
            trainer._step(task, inputs, labels)
    assert reads.seen == []


def test_fp16_loss_scaling_reads_the_device_which_is_why_it_is_never_graphed(tmp_path):
    trainer = _one_task(tmp_path, precision="fp16")
    task, inputs, labels = _static_batch(trainer)
    with HostReads() as reads:
        trainer._step(task, inputs, labels)
    assert reads.seen  # GradScaler.step reads whether a gradient overflowed
    assert not resolve_graphs("on", torch.device("cuda", 0), precision="fp16").enabled


def _replays(trainer: Trainer, times: int) -> list[float]:
    """Run the step `times` times on one set of static buffers at lr 0 (the linear schedule's start),
    so the weights stay put and only the dropout masks can change the loss."""
    task, inputs, labels = _static_batch(trainer)
    trainer.progress.fill_(0.0)
    return [trainer._step(task, inputs, labels).item() for _ in range(times)]


def test_replaying_the_step_draws_a_new_dropout_mask_each_time(tmp_path):
    trainer = _one_task(tmp_path / "dropout", dropout=0.3, head_dropout=0.3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    losses = _replays(trainer, 3)
    assert len(set(losses)) == 3, losses
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())  # lr 0: masks alone
    assert {state["step"].item() for state in trainer.optimizer.state.values()} == {3.0}  # counted on the device
    # the control: without dropout the same replays give one loss
    assert len(set(_replays(_one_task(tmp_path / "none", dropout=0.0, head_dropout=0.0), 3))) == 1


@needs_interpreter
def test_with_the_triton_kernels_every_replay_launches_alike_and_masks_differ(tmp_path, monkeypatch):
    """The whole step on the Triton kernels (attention with dropout, add & norm, bias + GELU, AdamW):
    the host hands the kernels the same arguments at every replay; the losses still differ."""
    launches: list[list] = []
    for name in ("attention", "layer_norm", "bias_gelu", "adamw"):
        module = importlib.import_module(f"mops.kernels.{name}")  # `mops.kernels.attention` names the function
        real = module.launch

        def spy(kernel_name, kernel, grid, *args, _real=real, **kwargs):
            described = tuple((a.dtype, tuple(a.shape)) if isinstance(a, torch.Tensor) else a for a in args)
            launches[-1].append((kernel_name, grid, described, sorted(kwargs.items())))
            return _real(kernel_name, kernel, grid, *args, **kwargs)

        monkeypatch.setattr(module, "launch", spy)
    trainer = _one_task(tmp_path, backend="triton", dropout=0.2, head_dropout=0.0, hidden_size=32, num_layers=1,
                        plan="S", max_length=24)
    task, inputs, labels = _static_batch(trainer)
    trainer.progress.fill_(0.0)
    losses = []
    for _ in range(3):
        launches.append([])
        with HostReads() as reads:
            loss = trainer._step(task, inputs, labels)
        assert reads.seen == []
        losses.append(loss.item())
    kinds = {kernel_name for kernel_name, *_ in launches[0]}
    assert {"attention.fwd", "attention.dkdv", "adamw.step", "layer_norm.fwd", "bias_gelu.fwd"} <= kinds
    assert launches[1] == launches[2]  # the first step also built AdamW's state
    assert len(set(losses)) == 3, losses
