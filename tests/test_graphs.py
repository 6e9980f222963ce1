"""mops.multitask.training.graphs on the CPU: when graphs run, what one graph serves, and the runner's warm-up,
static inputs, replays and fallback, with a stand-in for CUDA's capture; on a GPU, a real graphed run.

The stand-in (`RecordingCapture`) keeps a CUDA graph's contract without a GPU. Capturing runs the
step's Python once and records every tensor operation it makes; then it undoes the capture's
writes to tensors that existed before it (weights, optimizer state, static inputs) and its draws
from the random generator, and fills every tensor the capture allocated with garbage, as a CUDA
capture leaves memory it has only recorded work for. A replay runs the recorded operations alone,
writing into the tensors the capture allocated: the step's Python never runs again, and only a
replay makes the outputs hold this call's results.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mops.minbert import Batch
from mops.multitask.training import graphs
from mops.multitask.training.graphs import GraphedSteps, load_table, resolve_graphs, shape_key

CUDA = torch.device("cuda", 0)
H100 = "NVIDIA H100 80GB HBM3"


def _tensors(value) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def _memory(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """All of a tensor's storage, as bytes."""
    return torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(tensor.untyped_storage())


class _Recorder(TorchDispatchMode):
    """Every operation a capture makes, with the memory it allocates and the earlier memory it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.operations: list[tuple] = []  # (op, args, kwargs, result), the tensors the capture saw
        self.allocated: dict[int, torch.Tensor] = {}  # memory first written by the capture
        self.overwritten: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # earlier memory: (it, its bytes before)

    def __torch_dispatch__(self, op, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if op is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("the step read a device value on the host while capturing")
        for i, argument in enumerate(op._schema.arguments):
            if argument.alias_info is not None and argument.alias_info.is_write:
                written = args[i] if i < len(args) else kwargs.get(argument.name)
                for tensor in _tensors(written):
                    key = _memory(tensor)
                    if key not in self.allocated and key not in self.overwritten:
                        self.overwritten[key] = (_bytes(tensor), _bytes(tensor).clone())
        result = op(*args, **kwargs)
        read = {_memory(t) for t in _tensors((args, kwargs))}
        for tensor in _tensors(result):
            if _memory(tensor) not in read and tensor.untyped_storage().nbytes():
                self.allocated[_memory(tensor)] = tensor
        self.operations.append((op, args, kwargs, result))
        return result


class RecordingCapture:
    """fn -> (replay, fn's outputs), as `graphs.CudaCapture`: the capture only records, the caller replays."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail, self.captures, self.replays = fail, 0, 0

    def __call__(self, fn):
        self.captures += 1
        if self.fail is not None:
            raise self.fail
        generator = torch.get_rng_state()
        recorder = _Recorder()
        with recorder:
            outputs = fn()
        for memory, before in recorder.overwritten.values():
            memory.copy_(before)
        torch.set_rng_state(generator)
        for tensor in recorder.allocated.values():
            _bytes(tensor).fill_(0xFF)  # NaN in every float format

        def replay():
            self.replays += 1
            with torch.no_grad():
                for op, args, kwargs, result in recorder.operations:
                    fresh = op(*args, **kwargs)
                    for kept, new in zip(_tensors(result), _tensors(fresh)):
                        if _memory(kept) != _memory(new):
                            kept.copy_(new)

        return replay, outputs


# ----------------------------------------------------------------------------- when graphs run


def test_off_and_the_cpu_mean_eager():
    assert not resolve_graphs("off", CUDA).enabled
    assert not resolve_graphs("auto", torch.device("cpu")).enabled


def test_on_on_the_cpu_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="needs a CUDA GPU.*use --cuda-graphs auto or off"):
        resolve_graphs("on", torch.device("cpu"))


def test_on_turns_graphs_on_except_where_a_step_cannot_be_captured():
    assert resolve_graphs("on", CUDA, precision="bf16").enabled
    fp16 = resolve_graphs("on", CUDA, precision="fp16")
    ddp = resolve_graphs("on", CUDA, distributed=True)
    assert not fp16.enabled and "fp16" in fp16.reason
    assert not ddp.enabled and "DistributedDataParallel" in ddp.reason


def test_auto_follows_the_committed_measurement():
    row = {"device": H100, "speedup": 1.3, "same_results": True, "source": "h100.json"}
    faster = resolve_graphs("auto", CUDA, device_name=H100, table={H100: row})
    assert faster.enabled and "1.30x" in faster.reason
    for changed in ({"speedup": 0.9}, {"speedup": 1.0}, {"same_results": False}):
        assert not resolve_graphs("auto", CUDA, device_name=H100, table={H100: {**row, **changed}}).enabled
    unmeasured = resolve_graphs("auto", CUDA, device_name="NVIDIA A100-SXM4-80GB", table={H100: row})
    assert not unmeasured.enabled and "no committed measurement" in unmeasured.reason


def test_the_committed_table_measures_no_gpu_yet_so_auto_is_off():
    assert load_table() == {}
    assert not resolve_graphs("auto", CUDA, device_name=H100).enabled


def test_a_malformed_table_row_names_the_file(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"rows": [{"device": H100, "speedup": "fast", "same_results": True}]}))
    with pytest.raises(ValueError, match=r"table\.json: row 0 needs a number 'speedup'"):
        load_table(path)


# ----------------------------------------------------------------------------- what one graph serves


def _batch(length: int, rows: int = 4) -> Batch:
    ids = torch.ones(rows, length, dtype=torch.long)
    return Batch(ids, torch.ones_like(ids), torch.zeros_like(ids))


def test_a_graph_serves_one_task_and_one_set_of_shapes():
    inputs = {"batch": _batch(32), "batch_b": None}
    labels = torch.zeros(4, dtype=torch.long)
    key = shape_key("sst", inputs, labels)
    assert key == shape_key("sst", {"batch": _batch(32), "batch_b": None}, torch.ones(4, dtype=torch.long))
    assert key != shape_key("para", inputs, labels)  # multitask plans: one graph per (task, shape)
    assert key != shape_key("sst", {"batch": _batch(48), "batch_b": None}, labels)
    assert key != shape_key("sst", {"batch": _batch(32), "batch_b": _batch(32)}, labels)
    assert key != shape_key("sst", inputs, labels.float())


def test_inputs_of_another_kind_are_refused_by_path():
    with pytest.raises(TypeError, match=r"\.batch is a str"):
        shape_key("sst", {"batch": "text"})


# ----------------------------------------------------------------------------- the runner


def _doubling_step(calls: list):
    def step(task, inputs):
        calls.append(task)
        return {"twice": inputs["x"] * 2}
    return step


def test_warm_up_then_one_capture_then_replays_from_static_buffers():
    """Two eager calls, one capture, then replays: the step's Python runs three times in all, and
    each later call is served by a replay reading that call's input from the static buffers."""
    calls, capture = [], RecordingCapture()
    runner = GraphedSteps(_doubling_step(calls), "training", capture, warmup=2)
    results = [runner("sst", {"x": torch.full((3,), float(i))})["twice"].clone() for i in range(5)]
    assert [r.tolist() for r in results] == [[2.0 * i] * 3 for i in range(5)]  # every call saw its own input
    assert capture.captures == 1 and runner.stats() == {"graphs": 1, "eager_shapes": 0}
    assert len(calls) == 3 and capture.replays == 3  # the capture's call is answered by a replay too
    out3, out4 = runner("sst", {"x": torch.ones(3)}), runner("sst", {"x": torch.zeros(3)})
    assert out3 is out4  # replays write the graph's outputs in place
    assert len(calls) == 3 and capture.replays == 5
    runner("sst", {"x": torch.ones(5)})  # another shape: warms up on its own
    assert capture.captures == 1 and len(calls) == 4


def test_each_call_writes_the_steps_state_once_capture_included():
    """A training step writes state that outlives it (weights, optimizer moments): the capture
    leaves it untouched and the replay after it makes that call's write, so a graphed run of
    calls leaves the state an eager run would."""
    total, calls = torch.zeros(2), []

    def accumulate(task, inputs):
        calls.append(task)
        total.add_(inputs["x"])
        return {"total": total * 1}

    capture = RecordingCapture()
    runner = GraphedSteps(accumulate, "training", capture, warmup=1)
    seen = [runner("sst", {"x": torch.full((2,), float(i))})["total"].tolist() for i in range(1, 6)]
    assert seen == [[1.0] * 2, [3.0] * 2, [6.0] * 2, [10.0] * 2, [15.0] * 2]
    assert total.tolist() == [15.0] * 2 and len(calls) == 2 and capture.replays == 4


def test_a_failed_capture_leaves_that_shape_eager_with_one_message():
    calls, said, cleared = [], [], []
    capture = RecordingCapture(fail=RuntimeError("operation not permitted when stream is capturing"))
    runner = GraphedSteps(_doubling_step(calls), "training", capture, warmup=1, report=said.append,
                          on_failure=lambda: cleared.append(True))
    for _ in range(4):
        out = runner("para", {"x": torch.ones(2, 16)})
        assert torch.equal(out["twice"], torch.full((2, 16), 2.0))
    assert capture.captures == 1 and cleared == [True] and runner.stats() == {"graphs": 0, "eager_shapes": 1}
    assert len(said) == 1
    assert said[0] == ("cuda graphs: capturing the training step of para at input shapes (2, 16) failed with "
                       "RuntimeError: operation not permitted when stream is capturing; this shape runs eagerly "
                       "from now on")


def test_a_warm_up_is_required():
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        GraphedSteps(lambda task: None, "training", RecordingCapture(), warmup=0)


# ----------------------------------------------------------------------------- in the trainer


@pytest.mark.parametrize("symmetric_pairs", [False, True], ids=["pairs-as-given", "symmetric-pairs"])
def test_a_graphed_run_trains_and_evaluates_as_an_eager_one(tmp_path, monkeypatch, symmetric_pairs):
    """The trainer through the runner (the stand-in capture, graphs forced on): the same weights and
    metrics as eager, every training and evaluation shape captured, from the same seed, and every
    step the eager run made is a replay or an eager warm-up of the graphed one. Symmetric pairs hand
    the evaluation graphs both orders of each batch."""
    from test_trainer import tiny

    from mops.multitask.training import trainer as trainer_module

    ran = Counter()

    def counted(method):
        def run(self, *args, **kwargs):
            ran[method.__name__] += 1
            return method(self, *args, **kwargs)
        return run

    for name in ("_step", "_predict"):
        monkeypatch.setattr(trainer_module.Trainer, name, counted(getattr(trainer_module.Trainer, name)))
    # Lengths padded to 16 on at most 32 tokens: few shapes, each seen often enough to be captured.
    settings = dict(tasks=["sst", "sts"], steps=12, eval_every=3, max_train_examples=16, batch_size=8, pad_multiple=16,
                    symmetric_pairs=symmetric_pairs)
    eager = trainer_module.Trainer(tiny(tmp_path, out_dir=str(tmp_path / "eager"), **settings))
    eager_record = eager.train()
    eager_ran = ran.total()
    ran.clear()
    made = []
    monkeypatch.setattr(trainer_module, "resolve_graphs", lambda *a, **k: graphs.GraphsDecision(True, "on"))
    monkeypatch.setattr(trainer_module, "CudaCapture", lambda: made.append(RecordingCapture()) or made[-1])
    graphed = trainer_module.Trainer(tiny(tmp_path, out_dir=str(tmp_path / "graphed"), **settings))
    record = graphed.train()
    made_graphs = {runner: record["cuda_graphs"][runner]["graphs"] for runner in ("training", "evaluation")}
    assert made_graphs["training"] >= 1 and made_graphs["evaluation"] >= 1
    [capture] = made  # one capture (one memory pool) serves both runners
    assert capture.captures == sum(made_graphs.values())
    assert capture.replays > capture.captures
    assert ran.total() - capture.captures + capture.replays == eager_ran  # a capture's call is answered by a replay
    assert record["metrics"] == eager_record["metrics"]
    for (name, a), (_, b) in zip(eager.model.state_dict().items(), graphed.model.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: real graph capture and replay")
def test_on_a_gpu_real_graphs_train_to_the_eager_runs_weights(tmp_path):
    """Real capture and replay (`CudaCapture`, the GPU's kernels and bf16 where it has it, dropout on): after
    a few steps a graphed run holds the eager run's weights and metrics. The kernels are
    deterministic and a replay launches the eager step's kernels on the same inputs, so the bits agree."""
    from test_trainer import tiny

    from mops.multitask.training.trainer import Trainer

    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"  # fp16's loss scaling is never captured
    settings = dict(tasks=["sst", "sts"], steps=12, eval_every=3, max_train_examples=16, batch_size=8,
                    device="cuda", backend="auto", precision=precision)
    runs = {}
    for setting in ("off", "on"):
        trainer = Trainer(tiny(tmp_path, out_dir=str(tmp_path / setting), cuda_graphs=setting, **settings))
        runs[setting] = trainer.train(), trainer.model.state_dict()
    (eager, eager_weights), (graphed, graphed_weights) = runs["off"], runs["on"]
    assert not eager["cuda_graphs"]["enabled"] and graphed["cuda_graphs"]["enabled"]
    assert graphed["cuda_graphs"]["training"]["graphs"] >= 1 and graphed["cuda_graphs"]["evaluation"]["graphs"] >= 1
    assert graphed["cuda_graphs"]["training"]["eager_shapes"] == 0  # every training shape was captured
    assert graphed["metrics"] == eager["metrics"]
    assert graphed_weights.keys() == eager_weights.keys()
    for name, value in eager_weights.items():
        assert torch.equal(graphed_weights[name], value), name


def test_on_on_the_cpu_stops_the_trainer_before_training(tmp_path):
    from test_trainer import tiny

    from mops.multitask.training.trainer import Trainer

    with pytest.raises(ValueError, match="cuda_graphs 'on' needs a CUDA GPU"):
        Trainer(tiny(tmp_path, cuda_graphs="on"))
    record = Trainer(tiny(tmp_path, cuda_graphs="auto", steps=2, eval_every=2)).train()
    assert record["cuda_graphs"] == {"enabled": False, "reason": "no CUDA graphs on cpu"}
    assert Path(tmp_path / "run" / "results.json").is_file()
