"""mops.kernels.layer_norm (add & norm) against its PyTorch twin: values, every gradient, determinism.

Tolerances: in float32 the kernel is held directly to a float64 reference. In float16 and
bfloat16 it is judged the way FlashAttention's tests judge theirs: its error against the
float64 reference may be at most twice the PyTorch twin's own error at the same precision
(plus a tiny absolute floor), so the bar is set by what the precision allows, not by hand.
"""

from __future__ import annotations

import random

import pytest
import torch

import mops.kernels.dispatch
from mops.kernels import reference
from mops.kernels.layer_norm import MAX_WIDTH
from mops.kernels.rowwise import backward_grid, row_tile

CUDA = torch.cuda.is_available()
# Where the Triton path runs: the GPU when there is one, else the CPU interpreter (conftest.py).
DEVICE = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
EPS = 1e-5

# (x shape, residual shape or None); row counts drawn once from a fixed seed.
_rng = random.Random(1234)
CASES = [
    ((_rng.randint(2, 24), 384), "same"),
    ((2, _rng.randint(3, 9), 768), "same"),  # 3-D, BERT's (B, L, H)
    ((_rng.randint(2, 24), 1000), None),  # width not a multiple of 16
    ((_rng.randint(2, 24), 1024), "same"),
    ((_rng.randint(2, 24), 768), None),
    ((1, 768), "same"),  # one row
    ((1, 1000), None),
    ((3, 8192), "same"),  # wide, few rows
    ((3, 5, 384), (5, 384)),  # residual broadcast over the batch (position embeddings)
    ((2, 3, 1000), (2, 1, 1000)),  # a broadcast the kernel does not read in place
]
CASE_IDS = [f"{'x'.join(map(str, s))}-{'nores' if r is None else 'res' if r == 'same' else 'bres'}" for s, r in CASES]


def _make(shape, res_shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = shape[-1]
    x = torch.randn(shape, generator=g) * 2 + 0.5
    w = 1 + 0.5 * torch.randn(width, generator=g)
    b = 0.5 * torch.randn(width, generator=g)
    r = None
    if res_shape is not None:
        r = torch.randn(shape if res_shape == "same" else res_shape, generator=g)
    dy = torch.randn(shape, generator=g)
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(w), cast(b), cast(r), cast(dy)


def _forward_backward(fn, x, w, b, r, dy):
    """Output and gradients (dx, dw, db[, dr]) of fn on fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) + ((r,) if r is not None else ())]
    y = fn(leaves[0], leaves[1], leaves[2], leaves[3] if r is not None else None)
    grads = torch.autograd.grad(y, leaves, dy)
    return y.detach(), list(grads)


def _triton(x, w, b, r):
    return mops.kernels.layer_norm(x, w, b, EPS, residual=r, backend="triton")


def _twin(x, w, b, r):
    return reference.layer_norm(x, w, b, EPS, residual=r)


def _reference64(x, w, b, r, dy):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return _forward_backward(_twin, d(x), d(w), d(b), d(r), d(dy))


def _check_case(shape, res_shape, dtype, device):
    x, w, b, r, dy = _make(shape, res_shape, dtype, device)
    y, grads = _forward_backward(_triton, x, w, b, r, dy)
    y64, grads64 = _reference64(x, w, b, r, dy)
    names = ["y", "dx", "dweight", "dbias"] + (["dresidual"] if r is not None else [])
    assert y.dtype == x.dtype and y.shape == x.shape
    for name, got, want in zip(names[1:], grads, (x, w, b, r)):
        assert got.dtype == want.dtype and got.shape == want.shape, name
    if r is not None and r.shape == x.shape:
        assert torch.equal(grads[0], grads[3]), "d residual must equal dx"
    kernel_out = [y] + grads
    ref_out = [y64] + grads64
    if dtype == torch.float32:
        for name, got, want in zip(names, kernel_out, ref_out):
            scale = want.abs().max().item()
            err = (got.double() - want).abs().max().item()
            assert err <= 1e-6 * scale + 1e-8, f"{name}: max error {err:.3e} (scale {scale:.3e})"
        return
    _, twin_grads = _forward_backward(_twin, x, w, b, r, dy)
    twin_out = [_twin(x, w, b, r)] + twin_grads
    for name, got, twin, want in zip(names, kernel_out, twin_out, ref_out):
        err = (got.double() - want).abs().max().item()
        twin_err = (twin.double() - want).abs().max().item()
        assert err <= 2 * twin_err + 1e-5, f"{name}: kernel error {err:.3e} > 2 x PyTorch's {twin_err:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape,res_shape", CASES, ids=CASE_IDS)
def test_matches_reference(shape, res_shape, dtype):
    _check_case(shape, res_shape, dtype, DEVICE)


def test_dweight_dbias_are_deterministic():
    """Two backward passes give the same dweight and dbias bits. Under the interpreter the programs run one
    after another, so atomic sums would agree too: that the kernels use none is checked on their
    sm_90a binaries (test_kernel_resources.py::test_deterministic_kernels_use_no_atomics)."""
    x, w, b, r, dy = _make((45, 768), "same", torch.float32, DEVICE, seed=3)
    if not CUDA:  # the interpreter's grid: several programs, each summing several row tiles
        block_n, rows, _ = row_tile(768, MAX_WIDTH)
        programs, per_program = backward_grid(-(-45 // rows), x.device)
        assert programs > 1 and per_program > 1
    _, first = _forward_backward(_triton, x, w, b, r, dy)
    _, second = _forward_backward(_triton, x, w, b, r, dy)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_frozen_weight_and_frozen_input():
    """Only the gradients asked for are computed, and they match the full backward."""
    x, w, b, r, dy = _make((6, 384), "same", torch.float32, DEVICE, seed=5)
    _, full = _forward_backward(_triton, x, w, b, r, dy)
    xg = x.clone().requires_grad_()
    y = _triton(xg, w, b, r)  # weight, bias, residual frozen
    (dx,) = torch.autograd.grad(y, [xg], dy)
    assert torch.equal(dx, full[0])
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    y = _triton(x, wg, bg, r)  # input frozen
    dw, db = torch.autograd.grad(y, [wg, bg], dy)
    assert torch.equal(dw, full[1]) and torch.equal(db, full[2])


def test_auto_uses_twin_on_cpu():
    x, w, b, r, _ = _make((4, 384), "same", torch.float32, "cpu")
    assert torch.equal(mops.kernels.layer_norm(x, w, b, EPS, residual=r), _twin(x, w, b, r))


def test_triton_on_cpu_without_interpreter_says_so(monkeypatch):
    monkeypatch.setattr(mops.kernels.dispatch, "interpreter_enabled", lambda: False)
    x, w, b, _, _ = _make((2, 384), None, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        mops.kernels.layer_norm(x, w, b, EPS, backend="triton")


def test_bad_weight_shape_is_refused():
    x, w, b, _, _ = _make((2, 384), None, torch.float32, DEVICE)
    with pytest.raises(ValueError, match=r"weight must have shape \(384,\)"):
        mops.kernels.layer_norm(x, w[:100], b, EPS, backend="triton")


BIG = [((4096, 768), "same"), ((16, 128, 1024), "same"), ((8, 128, 384), (128, 384)), ((257, 4096), None)]
BIG_IDS = ["4096x768-res", "16x128x1024-res", "8x128x384-bres", "257x4096-nores"]


@needs_cuda
@pytest.mark.parametrize("shape,res_shape", CASES + BIG, ids=CASE_IDS + BIG_IDS)
def test_matches_reference_cuda_bf16(shape, res_shape):
    _check_case(shape, res_shape, torch.bfloat16, "cuda")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("shape,res_shape", BIG, ids=BIG_IDS)
def test_matches_reference_cuda_big(shape, res_shape, dtype):
    _check_case(shape, res_shape, dtype, "cuda")


@needs_cuda
def test_deterministic_cuda_bf16_large():
    x, w, b, r, dy = _make((16384, 768), "same", torch.bfloat16, "cuda", seed=7)
    _, first = _forward_backward(_triton, x, w, b, r, dy)
    _, second = _forward_backward(_triton, x, w, b, r, dy)
    for a, c in zip(first, second):
        assert torch.equal(a, c)
