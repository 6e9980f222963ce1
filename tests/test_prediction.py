"""mops.multitask.training.prediction: a plan's activations from a per-piece calibration equal the saved-tensor
bytes of a real training step, and the estimated peak adds up; on a GPU it is checked against
the allocator's peak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mops.cli import main
from mops.minbert import BertModel, BertTokenizer
from mops.multitask.data.batching import Collator
from mops.multitask.data.tasks import make_tasks
from mops.multitask.sharing.lora import LoRAConfig
from mops.multitask.sharing.model import HeadConfig, MultitaskBert
from mops.multitask.sharing.plan import parse_plan
from mops.multitask.training.precision import Precision
from mops.multitask.training.prediction import (
    PROBES,
    Fit,
    adamw_step_buffer_bytes,
    measure_step_activations,
    piece_roles,
    predict,
    saved_tensor_bytes,
)

TASKS = ["sst", "para", "sts"]
DEMO_PLANS = ["FFFFFF", "FFFSSS", "F2S2I2", "F2S2[sst+para|sts]2", "SSSSSS", "IIIIII"]
ADAPTED_PLANS = ["LLLLLL", "BBBBBB", "FFFLLL", "FFBBSS", "FLLSSI,pooler=B", "BBL[sst+para|sts]4"]
FP32 = Precision("fp32", "cpu")


def test_the_fit_recovers_a_quadratic_in_length_and_a_fixed_part():
    truth = Fit(per_token=300.0, per_token_pair=7.0, fixed=1234.0)
    fitted = Fit.from_probes({(b, l): truth.bytes(b, l) for b, l in PROBES})
    assert fitted.bytes(32, 128) == truth.bytes(32, 128)
    assert fitted.bytes(8, 512) == truth.bytes(8, 512)


def test_saved_bytes_count_each_storage_once_and_no_parameter():
    weight = torch.nn.Parameter(torch.randn(100))
    x = torch.randn(100, requires_grad=True)
    with saved_tensor_bytes(exclude=[weight]) as saved:
        y = (x * weight).sum() + x.sin().sum() + x[10:].cos().sum()  # x saved three times, once as a view
    y.backward()
    assert saved[0] == 100 * 4


def test_roles_follow_the_frozen_prefix():
    roles = dict(piece_roles(parse_plan("FFSSII", TASKS, 6)))
    assert [roles[p] for p in ("embeddings", "layer.0", "layer.1", "layer.2", "layer.3", "pooler")] == [
        None, None, None, "first", "trainable", "trainable"]
    roles = dict(piece_roles(parse_plan("SF", TASKS, 2)))  # frozen above a trainable layer: gradients pass
    assert roles == {"embeddings": "first", "layer.0": "trainable", "layer.1": "through", "pooler": "through"}


def test_lora_and_bitfit_pieces_take_their_own_roles():
    roles = dict(piece_roles(parse_plan("FFFLLL", TASKS, 6)))
    assert [roles[p] for p in ("layer.2", "layer.3", "layer.4", "pooler")] == [
        None, "lora-first", "lora-trainable", "lora-trainable"]
    # the embeddings under L have no update: nothing below layer 0 trains, so layer 0 is first
    roles = dict(piece_roles(parse_plan("LSF", TASKS, 3)))
    assert roles == {"embeddings": None, "layer.0": "lora-first", "layer.1": "trainable", "layer.2": "through",
                     "pooler": "through"}
    roles = dict(piece_roles(parse_plan("BBS", TASKS, 3)))
    assert [roles[p] for p in ("embeddings", "layer.0", "layer.1", "layer.2")] == [
        "bitfit-first", "bitfit-trainable", "bitfit-trainable", "trainable"]


@pytest.fixture(scope="module")
def minilm():
    return BertModel.from_pretrained(backend="torch"), BertTokenizer.from_pretrained(), make_tasks(TASKS, "demo")


@pytest.mark.parametrize("pair_encoding", ["joint", "siamese"])
@pytest.mark.parametrize("plan_text", DEMO_PLANS + ADAPTED_PLANS)
def test_predicted_activations_are_a_real_steps_within_5_percent(minilm, plan_text, pair_encoding):
    pretrained, tokenizer, tasks = minilm
    model = MultitaskBert(pretrained, parse_plan(plan_text, TASKS, 6), tasks, HeadConfig(pair_encoding),
                          LoRAConfig(dropout=0.1))  # LoRA's dropout keeps a mask: the probes must see it too
    for task in tasks:
        siamese = task.pair and pair_encoding == "siamese"
        collate = Collator(tokenizer, 48, siamese, regression=task.kind == "regression")
        batch = collate(task.loader("train")[:16])
        inputs = {"batch": batch.inputs, "batch_b": batch.inputs_b, "prefix": None, "prefix_b": None}
        measured = measure_step_activations(model, task.name, inputs, batch.labels, FP32)
        length_b = batch.inputs_b.input_ids.shape[1] if siamese else None
        predicted = predict(model, 16, batch.inputs.input_ids.shape[1], FP32, "torch",
                            length_b=length_b).activation_bytes_per_task[task.name]
        assert predicted == pytest.approx(measured, rel=0.05), (task.name, predicted, measured)


def graph_saved_bytes(loss: torch.Tensor, exclude) -> int:
    """The bytes the autograd graph behind `loss` keeps for the backward, read from the graph itself
    (each node's saved tensors, each storage once, no parameter): a count independent of the
    saved-tensor hooks the prediction is calibrated with."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen, total, stack, visited = set(), 0, [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        saved = [getattr(node, name) for name in dir(node) if name.startswith("_saved_")]
        saved += list(getattr(node, "saved_tensors", ()))  # a custom Function's ctx.save_for_backward
        for value in saved:
            for tensor in value if isinstance(value, (tuple, list)) else [value]:
                pointer = tensor.untyped_storage().data_ptr() if isinstance(tensor, torch.Tensor) else 0
                if pointer and pointer not in skip and pointer not in seen:
                    seen.add(pointer)
                    total += tensor.untyped_storage().nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return total


@pytest.mark.parametrize("plan_text", DEMO_PLANS + ADAPTED_PLANS)
def test_predicted_activations_match_what_the_graph_itself_keeps(minilm, plan_text):
    """Checked against a count that shares nothing with the calibration: the saved tensors the
    autograd graph of a real step holds, read node by node."""
    pretrained, tokenizer, tasks = minilm
    model = MultitaskBert(pretrained, parse_plan(plan_text, TASKS, 6), tasks, HeadConfig("joint"),
                          LoRAConfig(dropout=0.1)).train()
    for task in tasks:
        batch = Collator(tokenizer, 48, False, regression=task.kind == "regression")(task.loader("train")[:16])
        inputs = {"batch": batch.inputs, "batch_b": None, "prefix": None, "prefix_b": None}
        loss = model.loss(task.name, model(task.name, **inputs), batch.labels)
        kept = graph_saved_bytes(loss, model.parameters())
        predicted = predict(model, 16, batch.inputs.input_ids.shape[1], FP32, "torch").activation_bytes_per_task
        assert predicted[task.name] == pytest.approx(kept, rel=0.05), (task.name, predicted[task.name], kept)


@pytest.mark.parametrize("head", [HeadConfig("joint", pooling="mean"), HeadConfig("joint", pooling="cls"),
                                  HeadConfig("joint", pooling="mean", cosine_tasks=("sts",), scale_regression=True)],
                         ids=["mean", "cls", "mean-cosine-scaled-targets"])
@pytest.mark.parametrize("plan_text", ["SSSSSS", "FFSSII", "FFFLLL", "FFFFFF"])
def test_weightless_pooling_and_cosine_heads_are_predicted_within_5_percent(minilm, plan_text, head):
    pretrained, tokenizer, tasks = minilm
    model = MultitaskBert(pretrained, parse_plan(plan_text, TASKS, 6), tasks, head)
    for task in tasks:
        siamese = head.siamese(task)
        batch = Collator(tokenizer, 48, siamese, regression=task.kind == "regression")(task.loader("train")[:16])
        inputs = {"batch": batch.inputs, "batch_b": batch.inputs_b, "prefix": None, "prefix_b": None}
        measured = measure_step_activations(model, task.name, inputs, batch.labels, FP32)
        predicted = predict(model, 16, batch.inputs.input_ids.shape[1], FP32, "torch",
                            length_b=batch.inputs_b.input_ids.shape[1] if siamese else None)
        assert predicted.activation_bytes_per_task[task.name] == pytest.approx(measured, rel=0.05), task.name
    assert "pooler" not in {name.split(".")[1] for name, _ in model.named_parameters() if name.startswith("pieces.")}


def test_bf16_activations_are_predicted_under_the_same_autocast(minilm):
    pretrained, tokenizer, tasks = minilm
    bf16 = Precision("bf16", "cpu")
    model = MultitaskBert(pretrained, parse_plan("FFSSII", TASKS, 6), tasks)
    batch = Collator(tokenizer, 48)(tasks[0].loader("train")[:16])
    inputs = {"batch": batch.inputs, "batch_b": None, "prefix": None, "prefix_b": None}
    measured = measure_step_activations(model, "sst", inputs, batch.labels, bf16)
    predicted = predict(model, 16, batch.inputs.input_ids.shape[1], bf16, "torch")
    assert predicted.activation_bytes_per_task["sst"] == pytest.approx(measured, rel=0.05)


def test_the_peak_adds_weights_gradients_adamw_activations_and_the_largest_transient(minilm):
    pretrained, _, tasks = minilm
    model = MultitaskBert(pretrained, parse_plan("FFSSII", TASKS, 6), tasks)
    p = predict(model, 32, 128, FP32)
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    assert (p.grads_bytes, p.optimizer_bytes) == (4 * trainable, 8 * trainable)
    assert p.activation_bytes == max(p.activation_bytes_per_task.values())
    assert p.activation_bytes_per_piece["layer.0"] == 0 < p.activation_bytes_per_piece["layer.2"]  # prefix: nothing kept
    assert p.transient_bytes == max(p.activation_bytes_per_piece.values())
    assert (p.optimizer_transient_bytes, p.library_bytes) == (p.grads_bytes, 0)  # foreach AdamW's buffers; no GPU
    held = p.weights_bytes + p.grads_bytes + p.optimizer_bytes
    assert p.peak_bytes == held + max(p.activation_bytes + p.transient_bytes, p.optimizer_transient_bytes)
    longer = predict(model, 32, 256, FP32)
    assert longer.activation_bytes > 2 * p.activation_bytes * 0.99  # at least linear in the length


def test_adamw_builds_step_buffers_on_the_pytorch_path_only():
    cpu = torch.device("cpu")
    assert adamw_step_buffer_bytes(4000, "torch", cpu) == adamw_step_buffer_bytes(4000, "auto", cpu) == 4000
    assert adamw_step_buffer_bytes(4000, "triton", cpu) == 0


def test_with_small_activations_the_optimizer_step_is_the_peak(minilm):
    pretrained, _, tasks = minilm
    model = MultitaskBert(pretrained, parse_plan("SSSSSS", TASKS, 6), tasks)
    p = predict(model, 1, 8, FP32)  # one short sentence: activations far below one copy of the gradients
    assert p.activation_bytes + p.transient_bytes < p.optimizer_transient_bytes == p.grads_bytes
    assert p.peak_bytes == p.weights_bytes + 2 * p.grads_bytes + p.optimizer_bytes


def test_plan_json_prints_the_prediction(capsys):
    with pytest.raises(SystemExit) as ended:
        main(["plan", "FFFSSS", "--batch-size", "8", "--length", "64", "--device", "cpu", "--json"])
    assert ended.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    for key in ("weights_bytes", "grads_bytes", "optimizer_bytes", "activation_bytes", "peak_bytes"):
        assert isinstance(printed[key], int) and printed[key] > 0, key
    assert (printed["plan"], printed["batch_size"], printed["length"], printed["precision"]) == ("FFFSSS", 8, 64, "fp32")


GPU_PLANS = ["FFFFFF", "FFFSSS", "SSSSSS"]


@pytest.fixture(scope="module")
def gpu_steps() -> dict[str, dict]:
    """Each plan's measured peak and prediction, from tests/gpu_peak_probe.py in a process of its own."""
    probe = subprocess.run([sys.executable, str(Path(__file__).with_name("gpu_peak_probe.py")), *GPU_PLANS],
                           cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    rows = [json.loads(line) for line in probe.stdout.splitlines() if line.startswith("{")]
    return {row["plan"]: row for row in rows}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the allocator's peak is a GPU figure")
@pytest.mark.parametrize("plan_text", GPU_PLANS)
def test_gpu_estimated_peak_is_within_10_percent_of_the_allocators(gpu_steps, plan_text):
    """MiniLM, bf16 autocast, batch 32 x 128, PyTorch AdamW: weights, gradients, AdamW state, the
    backward's or the optimizer's moment, and cuBLAS's workspaces against the allocator's peak."""
    row = gpu_steps[plan_text]
    predicted, measured = row["prediction"]["peak_bytes"], row["measured"]
    assert predicted == pytest.approx(measured, rel=0.10), (predicted, measured, row["prediction"])
