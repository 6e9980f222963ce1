"""minBERT with every attention, add & norm and bias + GELU on the Triton kernels matches the
PyTorch path on the embedded checkpoint, forward and gradients, in fp32 (on the GPU where there
is one, else through the interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch

from mops import kernels
from mops.minbert import BertModel, BertTokenizer

SENTENCES = ["The kernels must agree with the reference.", "Short one."]
PAIRS = ["A second sentence.", "Padding follows"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernels run in this session


def _count_calls(monkeypatch, name):
    """Count how often the Triton branch of kernels.<name> runs."""
    calls = []
    module = __import__(f"mops.kernels.{name}", fromlist=[name])
    real = kernels.dispatch.resolve_backend

    def spy(backend, *tensors, op="op"):
        chosen = real(backend, *tensors, op=op)
        if op == name and chosen == "triton":
            calls.append(op)
        return chosen

    monkeypatch.setattr(module, "resolve_backend", spy)
    return calls


@pytest.fixture(scope="module")
def batch():
    return BertTokenizer.from_pretrained()(SENTENCES, PAIRS).to(DEVICE)


def _run(backend, batch):
    torch.manual_seed(0)
    model = BertModel.from_pretrained(backend=backend).train().set_dropout(0.0).to(DEVICE)
    out = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    real = batch.attention_mask.bool()
    loss = (out["last_hidden_state"][real] ** 2).mean() + out["pooler_output"].sum()
    loss.backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


def test_triton_backend_matches_torch_backend(batch, monkeypatch):
    calls = {op: _count_calls(monkeypatch, op) for op in ("attention", "layer_norm", "bias_gelu")}
    ours, our_grads = _run("triton", batch)
    layers = BertModel.from_pretrained().config.num_hidden_layers
    # every layer's attention, both add & norms, the embeddings' norm, every feed-forward GELU
    assert len(calls["attention"]) == layers
    assert len(calls["layer_norm"]) == 2 * layers + 1
    assert len(calls["bias_gelu"]) == layers

    reference, ref_grads = _run("torch", batch)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(ours["last_hidden_state"][real], reference["last_hidden_state"][real], rtol=0, atol=2e-5)
    torch.testing.assert_close(ours["pooler_output"], reference["pooler_output"], rtol=0, atol=2e-5)
    # Each gradient is judged on its own scale, floored at a thousandth of the largest gradient:
    # the key biases' gradients are zero in exact arithmetic (softmax ignores a per-row shift),
    # so both paths hold only rounding noise there.
    largest = max(grad.abs().max() for grad in ref_grads.values())
    for name, grad in ref_grads.items():
        scale = torch.maximum(grad.abs().max(), 1e-3 * largest)
        torch.testing.assert_close(our_grads[name] / scale, grad / scale, rtol=0, atol=3e-5, msg=lambda m: f"{name}: {m}")
