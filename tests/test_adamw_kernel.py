"""kernels.adamw_step (one launch over many tensors) against its PyTorch twin, over several steps.

In float32 the kernel and the twin do the same operations in the same order, so they may
differ only by rounding (fused multiply-adds, vectorised CPU code): a few units in the last
place of each value, relative to the size of the terms that make it.
"""

from __future__ import annotations

import math

import pytest
import torch

import mops.kernels.adamw
import mops.kernels.dispatch
from mops import kernels
from mops.kernels import reference
from mops.minbert import AdamW

CUDA = torch.cuda.is_available()
# Where the Triton path runs: the GPU when there is one, else the CPU interpreter (conftest.py).
DEVICE = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

BLOCK = mops.kernels.adamw.BLOCK
# Sizes around the block (one element, one block exactly, one past it, many blocks, 2-D).
SHAPES = [(1,), (17,), (BLOCK,), (BLOCK + 1,), (3, 1000), (2 * BLOCK + 123,), (768,), (5, 7, 11)]
ULP = torch.finfo(torch.float32).eps


def _state(shapes, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    exp_avgs = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    exp_avg_sqs = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    return params, exp_avgs, exp_avg_sqs


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g).to(p.device, p.dtype) for p in params]


def _assert_close_ulps(got, want, scale, ulps=8):
    """|got - want| <= ulps * eps32 * (|want| + scale), element by element."""
    bound = ulps * ULP * (want.abs() + scale)
    err = (got.double() - want.double()).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"max error {err.max().item():.3e} is {worst:.2f} x the bound"


@pytest.mark.parametrize("correct_bias", [True, False], ids=["corrected", "uncorrected"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05], ids=["nodecay", "decay"])
def test_matches_reference_over_steps(weight_decay, correct_bias):
    lr = 1e-2
    hyper = dict(lr=lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=weight_decay, correct_bias=correct_bias)
    params, ms, vs = _state(SHAPES, torch.float32, DEVICE, seed=0)
    ref_params, ref_ms, ref_vs = [p.clone() for p in params], [m.clone() for m in ms], [v.clone() for v in vs]
    start = [p.clone() for p in params]
    for step in range(1, 5):
        grads = _grads(params, seed=step)
        prev_ms, prev_vs = [m.clone() for m in ref_ms], [v.clone() for v in ref_vs]
        kernels.adamw_step(params, grads, ms, vs, step=step, backend="triton", **hyper)
        reference.adamw_step(ref_params, grads, ref_ms, ref_vs, step=step, **hyper)
        for p, rp, m, rm, pm, v, rv, pv, g in zip(params, ref_params, ms, ref_ms, prev_ms, vs, ref_vs, prev_vs, grads):
            # each moment is a sum of two terms; rounding is relative to the larger of them
            _assert_close_ulps(m, rm, scale=pm.abs() + g.abs())
            _assert_close_ulps(v, rv, scale=pv + g * g)
            # the Adam move is at most a few lr (m / sqrt(v) <= 1 / sqrt(1 - beta2) only at
            # step 1 without bias correction, about 3.2); its rounding costs ulps of that
            _assert_close_ulps(p, rp, scale=10 * lr)
    moved = [(p - s).abs().max().item() for p, s in zip(params, start)]
    assert min(moved) > 0.1 * lr, "every tensor, the 1-element one included, must have been updated"


def test_one_element_by_hand():
    """p = 1, g = 0.5, m = v = 0, step 1, lr 0.1, betas (0.9, 0.999), eps 1e-8, decay 0.01:
    m = 0.1 * 0.5 = 0.05;  v = 0.001 * 0.25 = 0.00025
    step_size = 0.1 * sqrt(0.001) / 0.1 = 0.0316227766
    update = 0.0316227766 * 0.05 / (0.0158113883 + 1e-8) = 0.0999999368
    p = 1 - 0.0999999368 = 0.9000000632;  then p -= 0.1 * 0.01 * p  ->  0.8991000631
    """
    p = torch.tensor([1.0, 7.0], device=DEVICE)
    g = torch.tensor([0.5, 0.0], device=DEVICE)
    m, v = torch.zeros(2, device=DEVICE), torch.zeros(2, device=DEVICE)
    kernels.adamw_step(
        [p], [g], [m], [v], step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
        correct_bias=True, backend="triton",
    )
    assert m[0].item() == pytest.approx(0.05, rel=1e-6)
    assert v[0].item() == pytest.approx(0.00025, rel=1e-6)
    assert p[0].item() == pytest.approx(0.8991000631, rel=1e-6)
    # zero gradient: no Adam move, only the decay: 7 * (1 - 0.001)
    assert p[1].item() == pytest.approx(6.993, rel=1e-6)


def test_tables_follow_changing_tensors():
    """A cached address table must not be reused for different tensors or sizes."""
    hyper = dict(step=1, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, correct_bias=True)
    for shapes in ([(100,), (BLOCK + 5,)], [(100,), (BLOCK + 5,)], [(100,), (37,)]):
        params, ms, vs = _state(shapes, torch.float32, DEVICE, seed=11)
        ref = [p.clone() for p in params], [m.clone() for m in ms], [v.clone() for v in vs]
        grads = _grads(params, seed=12)
        kernels.adamw_step(params, grads, ms, vs, backend="triton", **hyper)
        reference.adamw_step(ref[0], grads, ref[1], ref[2], **hyper)
        for p, rp in zip(params, ref[0]):
            _assert_close_ulps(p, rp, scale=0.1)


def test_new_gradients_of_the_same_sizes_reuse_the_block_table():
    """zero_grad(set_to_none=True) gives every step new gradient tensors: a new address table, the
    same block table, and the step still right."""
    import mops.kernels.adamw as adamw

    adamw.clear_cache()
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, correct_bias=True)
    params, ms, vs = _state([(100,), (BLOCK + 5,)], torch.float32, DEVICE, seed=13)
    ref = [p.clone() for p in params], [m.clone() for m in ms], [v.clone() for v in vs]
    kept = []
    for step in (1, 2):
        grads = _grads(params, seed=20 + step)
        kept.append(grads)  # alive, so the second step's gradients cannot reuse the first's memory
        kernels.adamw_step(params, grads, ms, vs, backend="triton", step=step, **hyper)
        reference.adamw_step(ref[0], grads, ref[1], ref[2], step=step, **hyper)
    assert (len(adamw._tables), len(adamw._blocks)) == (2, 1)
    for p, rp in zip(params, ref[0]):
        _assert_close_ulps(p, rp, scale=0.1)


def test_tensors_the_kernel_does_not_take_still_step():
    """float64 and non-contiguous tensors go through the twin inside the same call."""
    hyper = dict(step=1, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, correct_bias=True)
    p64 = torch.randn(50, dtype=torch.float64, device=DEVICE)
    pt = torch.randn(30, 20, device=DEVICE).t()  # non-contiguous
    p32 = torch.randn(300, device=DEVICE)
    params = [p64, pt, p32]
    grads = [torch.randn_like(p) for p in params]
    ms, vs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    ref = [p.clone() for p in params], [m.clone() for m in ms], [v.clone() for v in vs]
    kernels.adamw_step(params, grads, ms, vs, backend="triton", **hyper)
    reference.adamw_step(ref[0], grads, ref[1], ref[2], **hyper)
    assert torch.equal(params[0], ref[0][0]) and torch.equal(params[1], ref[0][1])
    _assert_close_ulps(params[2], ref[0][2], scale=0.1)


def test_optimizer_with_triton_backend_matches_torch_backend():
    """mops.minbert.optim.AdamW over two groups and three steps, the kernel beside the twin."""
    g = torch.Generator().manual_seed(0)
    shapes = [(65, 33), (65,), (3, 65), (3,)]
    model = [torch.nn.Parameter(torch.randn(s, generator=g).to(DEVICE)) for s in shapes]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in model]
    groups = lambda ps: [  # noqa: E731
        {"params": [ps[0], ps[2]], "weight_decay": 0.01},
        {"params": [ps[1], ps[3]], "weight_decay": 0.0},
    ]
    opt = AdamW(groups(model), lr=1e-3, backend="triton")
    opt_twin = AdamW(groups(twin), lr=1e-3, backend="torch")
    for _ in range(3):
        for p, q in zip(model, twin):
            p.grad = torch.randn(p.shape, generator=g).to(DEVICE)
            q.grad = p.grad.clone()
        opt.step()
        opt_twin.step()
    for a, b in zip(model, twin):
        _assert_close_ulps(a.detach(), b.detach(), scale=1e-2)


def test_auto_uses_twin_on_cpu():
    params, ms, vs = _state([(10,)], torch.float32, "cpu", seed=1)
    ref = [p.clone() for p in params], [m.clone() for m in ms], [v.clone() for v in vs]
    grads = _grads(params, seed=2)
    hyper = dict(step=1, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, correct_bias=True)
    kernels.adamw_step(params, grads, ms, vs, **hyper)
    reference.adamw_step(ref[0], grads, ref[1], ref[2], **hyper)
    assert torch.equal(params[0], ref[0][0])


def test_triton_on_cpu_without_interpreter_says_so(monkeypatch):
    monkeypatch.setattr(mops.kernels.dispatch, "interpreter_enabled", lambda: False)
    params, ms, vs = _state([(10,)], torch.float32, "cpu", seed=1)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.adamw_step(
            params, _grads(params, 2), ms, vs, step=1, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6,
            weight_decay=0.0, correct_bias=True, backend="triton",
        )


@needs_cuda
def test_many_tensors_cuda():
    """BERT-like list: 200 tensors, large and small, fp32, several steps."""
    shapes = [(768, 768), (768,), (3072, 768), (3072,), (768, 3072), (2, 768), (512, 768)] * 28 + [(30522, 768)]
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, correct_bias=True)
    params, ms, vs = _state(shapes, torch.float32, "cuda", seed=0)
    ref = [p.clone() for p in params], [m.clone() for m in ms], [v.clone() for v in vs]
    for step in range(1, 4):
        grads = _grads(params, seed=step)
        kernels.adamw_step(params, grads, ms, vs, step=step, backend="triton", **hyper)
        reference.adamw_step(ref[0], grads, ref[1], ref[2], step=step, **hyper)
    for p, rp, m, rm in zip(params, ref[0], ms, ref[1]):
        _assert_close_ulps(p, rp, scale=10 * hyper["lr"])
        _assert_close_ulps(m, rm, scale=1.0)


@needs_cuda
def test_bf16_params_fp32_states_cuda():
    """bf16 parameters and grads, fp32 moments: the fp32 math, rounded once to bf16."""
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, correct_bias=True)
    params, ms, vs = _state(SHAPES, torch.bfloat16, "cuda", seed=0)
    ref_params = [p.float() for p in params]
    ref_ms, ref_vs = [m.clone() for m in ms], [v.clone() for v in vs]
    grads = _grads(params, seed=1)
    kernels.adamw_step(params, grads, ms, vs, step=1, backend="triton", **hyper)
    reference.adamw_step(ref_params, [g.float() for g in grads], ref_ms, ref_vs, step=1, **hyper)
    for p, rp, m, rm in zip(params, ref_params, ms, ref_ms):
        assert p.dtype == torch.bfloat16 and m.dtype == torch.float32
        # one rounding to bf16 (half a bf16 ulp, 2^-8 relative) of the fp32 result
        bound = 2.0**-8 * rp.abs() + 8 * ULP * 10 * hyper["lr"]
        assert ((p.float() - rp).abs() <= bound).all()
        _assert_close_ulps(m, rm, scale=1.0)


def test_one_launch_per_call(monkeypatch):
    calls = []
    kernel = mops.kernels.adamw._adamw_kernel

    class Counting:
        def __getitem__(self, grid):
            calls.append(grid)
            return kernel[grid]

    monkeypatch.setattr(mops.kernels.adamw, "_adamw_kernel", Counting())
    params, ms, vs = _state(SHAPES, torch.float32, DEVICE, seed=0)
    kernels.adamw_step(
        params, _grads(params, 1), ms, vs, step=1, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6,
        weight_decay=0.0, correct_bias=True, backend="triton",
    )
    assert len(calls) == 1
    assert calls[0] == (sum(math.ceil(math.prod(s) / BLOCK) for s in SHAPES),)


# ----------------------------------------------------------------------------- counts and rate on the device


def test_device_counts_and_rate_give_the_steps_of_host_numbers():
    """Steps 1..4 with the count and the rate as device tensors (a (T,) vector of counts, a 0-d rate):
    the twin gives exactly its host-number steps, the kernel the same to rounding."""
    hyper = dict(beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.05, correct_bias=True)
    params, ms, vs = _state(SHAPES, torch.float32, DEVICE, seed=3)
    host = [p.clone() for p in params], [m.clone() for m in ms], [v.clone() for v in vs]
    twin = [p.clone() for p in params], [m.clone() for m in ms], [v.clone() for v in vs]
    counts = torch.zeros(len(SHAPES), device=DEVICE)
    rate = torch.zeros((), dtype=torch.float64, device=DEVICE)
    for step, lr in zip(range(1, 5), (1e-2, 3e-3, 7e-3, 1e-3)):
        grads = _grads(params, seed=40 + step)
        counts += 1
        rate.fill_(lr)
        kernels.adamw_step(params, grads, ms, vs, step=counts, lr=rate, backend="triton", **hyper)
        reference.adamw_step(twin[0], grads, twin[1], twin[2], step=counts, lr=rate, **hyper)
        reference.adamw_step(host[0], grads, host[1], host[2], step=step, lr=lr, **hyper)
        for p, tp, hp in zip(params, twin[0], host[0]):
            assert torch.equal(tp, hp)
            _assert_close_ulps(p, hp, scale=10 * lr)


def test_tensors_at_different_counts_step_together():
    """One call whose tensors sit at counts 1, 5 and 30 equals three calls, one per count."""
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, correct_bias=True)
    shapes, counts = [(100,), (BLOCK + 3,), (7, 9)], [1, 5, 30]
    params, ms, vs = _state(shapes, torch.float32, DEVICE, seed=5)
    ms = [torch.rand(p.shape, device=DEVICE) for p in params]  # moments a run would have built
    vs = [torch.rand(p.shape, device=DEVICE) for p in params]
    apart = [p.clone() for p in params], [m.clone() for m in ms], [v.clone() for v in vs]
    grads = _grads(params, seed=6)
    kernels.adamw_step(params, grads, ms, vs, step=torch.tensor(counts, device=DEVICE), backend="triton", **hyper)
    for i, count in enumerate(counts):
        reference.adamw_step([apart[0][i]], [grads[i]], [apart[1][i]], [apart[2][i]], step=count, **hyper)
    for p, ap in zip(params, apart[0]):
        _assert_close_ulps(p, ap, scale=10 * hyper["lr"])


def test_the_launch_is_the_same_at_every_step(monkeypatch):
    """What the host passes the kernel does not change from step to step (a CUDA graph replays it
    as captured), while the count and the rate it reads do."""
    calls = []
    real = mops.kernels.adamw.launch
    monkeypatch.setattr(mops.kernels.adamw, "launch", lambda *args, **kwargs: (calls.append((args, kwargs)),
                                                                          real(*args, **kwargs))[1])
    params, ms, vs = _state([(100,), (BLOCK + 3,)], torch.float32, DEVICE, seed=8)
    counts = torch.zeros(2, device=DEVICE)
    rate = torch.zeros((), dtype=torch.float64, device=DEVICE)
    moved = []
    for lr in (1e-2, 2e-2):
        counts += 1
        rate.fill_(lr)
        before = params[0].clone()
        kernels.adamw_step(params, _grads(params, 9), ms, vs, step=counts, lr=rate, beta1=0.9, beta2=0.999,
                           eps=1e-6, weight_decay=0.01, correct_bias=True, backend="triton")
        moved.append((params[0] - before).abs().max().item())
    host_side = [(tuple((a.dtype, tuple(a.shape)) if isinstance(a, torch.Tensor) else a for a in args),
                  sorted(kwargs.items())) for args, kwargs in calls]
    assert len(host_side) == 2 and host_side[0] == host_side[1]
    assert moved[1] > 1.5 * moved[0]  # the second step read the doubled rate


def test_a_count_tensor_of_the_wrong_length_is_refused():
    params, ms, vs = _state([(10,), (3,)], torch.float32, DEVICE, seed=1)
    with pytest.raises(ValueError, match=r"one count per tensor \(2\)"):
        kernels.adamw_step(params, _grads(params, 2), ms, vs, step=torch.ones(3, device=DEVICE), lr=1e-2,
                           beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, correct_bias=True, backend="triton")
