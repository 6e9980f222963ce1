"""mops.multitask.training.graphs on the CPU: when graphs run, what one graph serves, and the runner's warm-up,
static inputs, replays and fallback, with a stand-in for CUDA's capture.

The stand-in (`ReplayingCapture`) runs the captured function while "capturing" and, at each
replay, runs it again on the same static input buffers, writing into the same output tensors:
the contract of a CUDA graph, checked without a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mops.minbert import Batch
from mops.multitask.training import graphs
from mops.multitask.training.graphs import GraphedSteps, load_table, resolve_graphs, shape_key

CUDA = torch.device("cuda", 0)
H100 = "NVIDIA H100 80GB HBM3"


class ReplayingCapture:
    executes = True  # it runs the function while capturing, so the runner does not replay after it

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail, self.captures = fail, 0

    def __call__(self, fn):
        self.captures += 1
        if self.fail is not None:
            raise self.fail
        outputs = fn()

        def replay():
            for buffer, fresh in zip(graphs.flatten(outputs), graphs.flatten(fn())):
                buffer[1].copy_(fresh[1])

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
    calls, capture = [], ReplayingCapture()
    runner = GraphedSteps(_doubling_step(calls), "training", capture, warmup=2)
    results = [runner("sst", {"x": torch.full((3,), float(i))})["twice"].clone() for i in range(5)]
    assert [r.tolist() for r in results] == [[2.0 * i] * 3 for i in range(5)]  # every call saw its own input
    assert capture.captures == 1 and runner.stats() == {"graphs": 1, "eager_shapes": 0}
    out3, out4 = runner("sst", {"x": torch.ones(3)}), runner("sst", {"x": torch.zeros(3)})
    assert out3 is out4  # replays write the graph's outputs in place
    runner("sst", {"x": torch.ones(5)})  # another shape: warms up on its own
    assert capture.captures == 1


def test_a_failed_capture_leaves_that_shape_eager_with_one_message():
    calls, said, cleared = [], [], []
    capture = ReplayingCapture(fail=RuntimeError("operation not permitted when stream is capturing"))
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
        GraphedSteps(lambda task: None, "training", ReplayingCapture(), warmup=0)


# ----------------------------------------------------------------------------- in the trainer


@pytest.mark.parametrize("symmetric_pairs", [False, True], ids=["pairs-as-given", "symmetric-pairs"])
def test_a_graphed_run_trains_and_evaluates_as_an_eager_one(tmp_path, monkeypatch, symmetric_pairs):
    """The trainer through the runner (the stand-in capture, graphs forced on): the same weights and
    metrics as eager, every training and evaluation shape captured, from the same seed. Symmetric
    pairs hand the evaluation graphs both orders of each batch."""
    from test_trainer import tiny

    from mops.multitask.training import trainer as trainer_module

    # Lengths padded to 16 on at most 32 tokens: few shapes, each seen often enough to be captured.
    settings = dict(tasks=["sst", "sts"], steps=12, eval_every=3, max_train_examples=16, batch_size=8, pad_multiple=16,
                    symmetric_pairs=symmetric_pairs)
    eager = trainer_module.Trainer(tiny(tmp_path, out_dir=str(tmp_path / "eager"), **settings))
    eager_record = eager.train()
    monkeypatch.setattr(trainer_module, "resolve_graphs", lambda *a, **k: graphs.GraphsDecision(True, "on"))
    monkeypatch.setattr(trainer_module, "CudaCapture", ReplayingCapture)
    graphed = trainer_module.Trainer(tiny(tmp_path, out_dir=str(tmp_path / "graphed"), **settings))
    record = graphed.train()
    assert record["cuda_graphs"]["training"]["graphs"] >= 1 and record["cuda_graphs"]["evaluation"]["graphs"] >= 1
    assert record["metrics"] == eager_record["metrics"]
    for (name, a), (_, b) in zip(eager.model.state_dict().items(), graphed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_on_on_the_cpu_stops_the_trainer_before_training(tmp_path):
    from test_trainer import tiny

    from mops.multitask.training.trainer import Trainer

    with pytest.raises(ValueError, match="cuda_graphs 'on' needs a CUDA GPU"):
        Trainer(tiny(tmp_path, cuda_graphs="on"))
    record = Trainer(tiny(tmp_path, cuda_graphs="auto", steps=2, eval_every=2)).train()
    assert record["cuda_graphs"] == {"enabled": False, "reason": "no CUDA graphs on cpu"}
    assert Path(tmp_path / "run" / "results.json").is_file()
