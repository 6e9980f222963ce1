"""mops.kernels.bias_gelu (exact erf GELU of x + bias) against its PyTorch twin: values, dx, dbias.

Tolerances as in the other kernel tests: float32 directly against a float64 reference;
float16/bfloat16 within twice the PyTorch twin's own error against that reference.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import mops.kernels.dispatch
from mops.kernels import reference
from mops.kernels.bias_gelu import MAX_BLOCK_N
from mops.kernels.rowwise import backward_grid, row_tile

CUDA = torch.cuda.is_available()
# Where the Triton path runs: the GPU when there is one, else the CPU interpreter (conftest.py).
DEVICE = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

_rng = random.Random(4321)
SHAPES = [
    (_rng.randint(2, 24), 384),
    (2, _rng.randint(3, 9), 768),  # 3-D, (B, L, I)
    (_rng.randint(2, 24), 1000),  # width not a multiple of 16
    (_rng.randint(2, 24), 1024),
    (_rng.randint(2, 12), 3072),  # BERT-base intermediate width: several column blocks
    (1, 768),  # one row
    (3, 8192),  # wide, few rows
]
IDS = ["x".join(map(str, s)) for s in SHAPES]


def _make(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2.5 * torch.randn(shape, generator=g)  # covers GELU's bend and both tails
    bias = 0.5 * torch.randn(shape[-1], generator=g)
    dy = torch.randn(shape, generator=g)
    return x.to(device, dtype), bias.to(device, dtype), dy.to(device, dtype)


def _forward_backward(fn, x, bias, dy):
    xg, bg = x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    y = fn(xg, bg)
    dx, dbias = torch.autograd.grad(y, (xg, bg), dy)
    return [y.detach(), dx, dbias]


def _triton(x, bias):
    return mops.kernels.bias_gelu(x, bias, backend="triton")


def _check(shape, dtype, device):
    x, bias, dy = _make(shape, dtype, device)
    got = _forward_backward(_triton, x, bias, dy)
    want = _forward_backward(reference.bias_gelu, x.double(), bias.double(), dy.double())
    for name, g, ref_t in zip(("y", "dx", "dbias"), got, (x, x, bias)):
        assert g.dtype == ref_t.dtype and g.shape == ref_t.shape, name
    if dtype == torch.float32:
        for name, g, w in zip(("y", "dx", "dbias"), got, want):
            scale = w.abs().max().item()
            err = (g.double() - w).abs().max().item()
            assert err <= 1e-6 * scale + 1e-8, f"{name}: max error {err:.3e} (scale {scale:.3e})"
        return
    twin = _forward_backward(reference.bias_gelu, x, bias, dy)
    for name, g, t, w in zip(("y", "dx", "dbias"), got, twin, want):
        err = (g.double() - w).abs().max().item()
        twin_err = (t.double() - w).abs().max().item()
        assert err <= 2 * twin_err + 1e-5, f"{name}: kernel error {err:.3e} > 2 x PyTorch's {twin_err:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_matches_reference(shape, dtype):
    _check(shape, dtype, DEVICE)


def test_exact_erf_not_tanh():
    """At u = 1 exact GELU is 0.5 (1 + erf(1/sqrt 2)) = 0.841345; the tanh form gives 0.841192."""
    x = torch.tensor([[1.0, -1.0, 0.0, 3.0]], device=DEVICE)
    y = mops.kernels.bias_gelu(x, torch.zeros(4, device=DEVICE), backend="triton")
    expected = [0.5 * u * (1 + math.erf(u / math.sqrt(2))) for u in (1.0, -1.0, 0.0, 3.0)]
    assert y[0].tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert abs(y[0, 0].item() - 0.841192) > 1e-4


def test_dbias_is_deterministic():
    """Two backward passes give the same dbias bits. Under the interpreter the programs run one
    after another, so atomic sums would agree too: that the kernels use none is checked on their
    sm_90a binaries (test_kernel_resources.py::test_deterministic_kernels_use_no_atomics)."""
    x, bias, dy = _make((57, 1000), torch.float32, DEVICE, seed=2)
    if not CUDA:  # the interpreter's grid: several programs, each summing several row tiles
        block_n, rows, _ = row_tile(1000, MAX_BLOCK_N)
        programs, per_program = backward_grid(-(-57 // rows), x.device, 1)
        assert programs > 1 and per_program > 1
    first = _forward_backward(_triton, x, bias, dy)
    second = _forward_backward(_triton, x, bias, dy)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_only_requested_gradients():
    x, bias, dy = _make((6, 384), torch.float32, DEVICE, seed=4)
    full = _forward_backward(_triton, x, bias, dy)
    xg = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(_triton(xg, bias), [xg], dy)
    bg = bias.clone().requires_grad_()
    (db,) = torch.autograd.grad(_triton(x, bg), [bg], dy)
    assert torch.equal(dx, full[1]) and torch.equal(db, full[2])


def test_auto_uses_twin_on_cpu():
    x, bias, _ = _make((4, 384), torch.float32, "cpu")
    assert torch.equal(mops.kernels.bias_gelu(x, bias), reference.bias_gelu(x, bias))


def test_triton_on_cpu_without_interpreter_says_so(monkeypatch):
    monkeypatch.setattr(mops.kernels.dispatch, "interpreter_enabled", lambda: False)
    x, bias, _ = _make((2, 384), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        mops.kernels.bias_gelu(x, bias, backend="triton")


def test_bad_bias_shape_is_refused():
    x, bias, _ = _make((2, 384), torch.float32, DEVICE)
    with pytest.raises(ValueError, match="bias must have shape"):
        mops.kernels.bias_gelu(x, bias[:10], backend="triton")


BIG = [(4096, 3072), (8, 128, 3072), (513, 1000)]
BIG_IDS = ["x".join(map(str, s)) for s in BIG]


@needs_cuda
@pytest.mark.parametrize("shape", SHAPES + BIG, ids=IDS + BIG_IDS)
def test_matches_reference_cuda_bf16(shape):
    _check(shape, torch.bfloat16, "cuda")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("shape", BIG, ids=BIG_IDS)
def test_matches_reference_cuda_big(shape, dtype):
    _check(shape, dtype, "cuda")
