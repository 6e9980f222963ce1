"""backend="auto" reads a committed per-GPU table; tools.kernel_table makes that table from benchmark files.

No GPU is needed: a CUDA device's name is looked up through `mops.common.machine.gpu_name`,
which these tests replace, and `torch.device("cuda", 0)` can be named without a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mops.kernels.dispatch
from mops.common import machine
from mops.kernels import dispatch
from mops.kernels.dispatch import Choice, resolve_backend, resolve_for_device, resolved_backends
from tools import kernel_table

H100 = "NVIDIA H100 80GB HBM3"
H100_BENCH = Path(__file__).parent / "fixtures" / "h100-2026-11-26-bench.json"  # ../shared/gpu's, copied
# The second H100 measurement: `make gpu-check`'s benchmarks, committed with its summary.
H100_CHECK = "nvidia-h100-80gb-hbm3-20261126-152324/benchmarks.json"
H100_CHECK_BENCH = Path(__file__).parents[1] / "results" / H100_CHECK
OPS = ("attention", "layer_norm", "bias_gelu", "adamw")


@pytest.fixture
def gpu_named(monkeypatch):
    """Pretend CUDA device 0 is called `name`."""

    def fake(name):
        monkeypatch.setattr(machine, "gpu_name", lambda index: name)

    return fake


# ----------------------------------------------------------------------------- the committed table


def test_committed_table_is_the_generators_output_for_the_h100_runs():
    committed = json.loads(dispatch.TABLE_PATH.read_text())
    assert committed["rows"] == kernel_table.measured_rows([H100_BENCH, H100_CHECK_BENCH])


def test_the_first_h100_run_alone_chose_triton_for_adamw():
    rows = {r["op"]: r for r in kernel_table.measured_rows([H100_BENCH])}
    assert {op: r["backend"] for op, r in rows.items()} == {
        "attention": "torch", "layer_norm": "torch", "bias_gelu": "torch", "adamw": "triton",
    }
    # ../shared/gpu's figures: AdamW 1.05x torch-fused; attention 0.53x SDPA, layer norm 0.32x, GELU 0.51x
    assert [rows[op]["ratio"] for op in OPS] == pytest.approx([0.534, 0.32, 0.506, 1.045], abs=1e-3)


def test_h100_runs_pytorch_for_every_op_since_the_second_run():
    """The GPU check measured Triton's AdamW at 0.70x fused PyTorch; that file is the later one, so
    its groups replace the first run's and no op keeps a Triton win."""
    choices = {op: dispatch.choose(op, H100) for op in OPS}
    assert {op: c.backend for op, c in choices.items()} == dict.fromkeys(OPS, "torch")
    assert [choices[op].ratio for op in OPS] == pytest.approx([0.414, 0.353, 0.668, 0.703], abs=1e-3)
    assert all(c.measured and c.source == H100_CHECK for c in choices.values())
    assert choices["adamw"].group == "adamw step fp32 bert-base"
    assert choices["attention"].group.endswith("dropout 0.1")  # the worst of its groups


def test_unknown_gpu_runs_pytorch_unmeasured():
    assert dispatch.choose("attention", "NVIDIA GeForce RTX 4090") == Choice("torch", None, None, False)
    assert dispatch.choose("adamw_step", H100) == dispatch.choose("adamw", H100)  # the function's name works too
    with pytest.raises(ValueError, match="op must be one of"):
        dispatch.choose("softmax", H100)


# ----------------------------------------------------------------------------- resolving a backend


def test_auto_on_cpu_tensors_is_torch_whatever_the_table(gpu_named):
    gpu_named(H100)
    x = torch.zeros(2, 3)
    for op in ("attention", "layer_norm", "bias_gelu", "adamw_step"):
        assert resolve_backend("auto", x, op=op) == "torch"
    assert resolved_backends("auto", "cpu") == dict.fromkeys(OPS, "torch")


def test_auto_on_a_gpu_follows_its_table_rows(gpu_named, monkeypatch, tmp_path):
    gpu_named(H100)
    path = kernel_table.write_table(kernel_table.measured_rows([H100_BENCH]), tmp_path / "table.json")
    read = dispatch.load_table
    monkeypatch.setattr(dispatch, "load_table", lambda: read(path))  # a table with a Triton row: the first run's
    assert resolved_backends("auto", "cuda:0") == {
        "attention": "torch", "layer_norm": "torch", "bias_gelu": "torch", "adamw": "triton",
    }
    assert resolve_for_device("auto", torch.device("cuda", 0), "adamw_step") == "triton"


def test_auto_on_an_unmeasured_gpu_is_torch(gpu_named):
    gpu_named("NVIDIA A100-SXM4-80GB")
    assert resolved_backends("auto", "cuda:0") == dict.fromkeys(OPS, "torch")


def test_forced_backends_ignore_the_table(gpu_named, monkeypatch):
    gpu_named(H100)
    assert resolved_backends("torch", "cuda:0") == dict.fromkeys(OPS, "torch")
    assert resolved_backends("triton", "cuda:0") == dict.fromkeys(OPS, "triton")
    assert resolved_backends("torch", "cpu") == dict.fromkeys(OPS, "torch")
    monkeypatch.setattr(mops.kernels.dispatch, "interpreter_enabled", lambda: True)
    assert resolved_backends("triton", "cpu") == dict.fromkeys(OPS, "triton")
    monkeypatch.setattr(mops.kernels.dispatch, "interpreter_enabled", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolved_backends("triton", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolved_backends("fast", "cpu")


# ----------------------------------------------------------------------------- making the table


def _bench(group, impl, median, device="GPU A"):
    return {"group": group, "name": f"test[{impl}]", "stats": {"median": median, "mean": median},
            "extra_info": {"impl": impl, "device": device}}


def _write(path, benchmarks):
    path.write_text(json.dumps({"benchmarks": benchmarks, "machine_info": {}, "version": "5.0"}))
    return path


def test_ratio_is_against_the_fastest_pytorch_path_and_ignores_copies(tmp_path):
    f = _write(tmp_path / "a.json", [
        _bench("adamw step fp32", "triton", 2.0), _bench("adamw step fp32", "torch", 3.4),
        _bench("adamw step fp32", "torch-fused", 2.1),
        _bench("layer_norm fwd+bwd", "triton", 1.0), _bench("layer_norm fwd+bwd", "torch", 0.5),
        _bench("layer_norm fwd+bwd", "copy", 0.1),  # a bandwidth ceiling, not a PyTorch path
        _bench("train-step-gpu-bert-base-32x128", "triton", 9.0),  # not an op
    ])
    rows = kernel_table.measured_rows([f])
    assert rows == [
        {"device": "GPU A", "op": "layer_norm", "backend": "torch", "ratio": 0.5, "source": "a.json",
         "group": "layer_norm fwd+bwd"},
        {"device": "GPU A", "op": "adamw", "backend": "triton", "ratio": 1.05, "source": "a.json",
         "group": "adamw step fp32"},
    ]


def test_triton_needs_a_win_in_every_group(tmp_path):
    f = _write(tmp_path / "b.json", [
        _bench("attention L128", "triton", 1.0), _bench("attention L128", "sdpa", 1.5),  # 1.5x
        _bench("attention L512", "triton", 1.0), _bench("attention L512", "sdpa", 0.9),  # 0.9x
        _bench("bias_gelu big", "triton", 1.0), _bench("bias_gelu big", "torch", 1.0),  # a tie is no win
        _bench("attention L128", "triton", 1.0, device="GPU B"), _bench("attention L128", "sdpa", 2.0, device="GPU B"),
    ])
    rows = {(r["device"], r["op"]): r for r in kernel_table.measured_rows([f])}
    assert rows[("GPU A", "attention")]["backend"] == "torch"
    assert rows[("GPU A", "attention")]["ratio"] == 0.9 and rows[("GPU A", "attention")]["group"] == "attention L512"
    assert rows[("GPU A", "bias_gelu")]["backend"] == "torch"
    assert rows[("GPU B", "attention")]["backend"] == "triton" and rows[("GPU B", "attention")]["ratio"] == 2.0


def test_a_later_file_wins_for_the_same_group(tmp_path):
    old = _write(tmp_path / "old.json", [_bench("adamw step", "triton", 3.0), _bench("adamw step", "torch", 2.0)])
    new = _write(tmp_path / "new.json", [_bench("adamw step", "triton", 1.0), _bench("adamw step", "torch", 2.0)])
    (row,) = kernel_table.measured_rows([old, new])
    assert (row["backend"], row["ratio"], row["source"]) == ("triton", 2.0, "new.json")


def test_a_file_that_is_not_a_benchmark_says_so(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(ValueError, match="bad.json: not a pytest-benchmark JSON"):
        kernel_table.measured_rows([bad])


def test_write_table_merges_and_is_read_back(tmp_path):
    path = tmp_path / "table.json"
    kernel_table.write_table(kernel_table.measured_rows([H100_BENCH]), path)
    other = {"device": "GPU A", "op": "adamw", "backend": "torch", "ratio": 0.9, "source": "a.json", "group": "g"}
    kernel_table.write_table([other], path)  # another device: the H100 rows stay
    newer = dict(other, backend="triton", ratio=1.2, source="b.json")
    kernel_table.write_table([newer], path)  # same device and op: replaced
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) == 5 and newer in rows and other not in rows
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"], "no temporary file left behind"
    table = dispatch.load_table(path)
    assert dispatch.choose("adamw", "GPU A", table) == Choice("triton", 1.2, "b.json", True, "g")
    assert dispatch.choose("adamw", H100, table).backend == "triton"
    with pytest.raises(ValueError, match="bad row"):
        kernel_table.write_table([dict(other, op="softmax")], path)


def test_a_bad_table_row_names_the_file(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"rows": [{"device": "X", "op": "attention", "backend": "cuda", "ratio": 1.0,
                                          "source": "s", "group": "g"}]}))
    with pytest.raises(ValueError, match="table.json: row 0"):
        dispatch.load_table(path)


def test_device_rows_say_what_auto_runs_and_why():
    rows = {r["op"]: r for r in dispatch.device_rows(H100)}
    assert list(rows) == list(OPS)
    assert rows["adamw"]["backend"] == "torch" and rows["adamw"]["ratio"] == 0.703 and rows["adamw"]["note"] == ""
    assert rows["attention"]["source"] == H100_CHECK
    unknown = dispatch.device_rows("NVIDIA L4")
    assert all(r["backend"] == "torch" and r["ratio"] is None and "no measurement" in r["note"] for r in unknown)
    cpu = dispatch.device_rows(None)
    assert all(r["backend"] == "torch" and "CPU" in r["note"] for r in cpu)
