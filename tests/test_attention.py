"""mops.kernels.attention (Triton) against its PyTorch twin and a float64 reference.

Values and the three gradients on shapes that include L = 1, odd lengths, batch 1, head dims
32 / 64 / 128 (and one that is not a power of two), transposed (B, L, H, D) views, and masks
of several kinds. Error bounds follow FlashAttention's tests: the kernel's error against a
float64 reference must stay within a small multiple of the twin's own error at the same input
precision; float32 inputs are held to a direct tight bound.

On the CPU the kernels run through Triton's interpreter (the root conftest sets
TRITON_INTERPRET=1); with a GPU the same tests run on CUDA, plus the bfloat16 / larger ones.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import mops.kernels.dispatch
from mops.kernels import dispatch, reference
from mops.kernels.attention import _draw_seed, attention, attention_dropout_mask, attention_with_seed

attention_module = importlib.import_module("mops.kernels.attention")  # `mops.kernels.attention` names the function
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
requires_cuda = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
if not ON_GPU and not mops.kernels.dispatch.interpreter_enabled():
    pytest.skip("no GPU and TRITON_INTERPRET is not set: the Triton kernels cannot run", allow_module_level=True)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
MASK_KINDS = ("none", "ones", "lengths", "len1", "holes")


# ----------------------------------------------------------------------------- helpers


def make_qkv(B, H, L, D, dtype, layout, gen, device=DEVICE):
    """q, k, v of shape (B, H, L, D); layout "blhd" gives transposed views of (B, L, H, D) as the model does."""
    out = []
    for _ in range(3):
        if layout == "blhd":
            t = torch.randn(B, L, H, D, generator=gen).to(device=device, dtype=dtype).transpose(1, 2)
        else:
            t = torch.randn(B, H, L, D, generator=gen).to(device=device, dtype=dtype)
        out.append(t)
    return out


def make_mask(kind, B, L, gen, device=DEVICE):
    """A (B, L) padding mask (1 = real token) of the given kind, or None."""
    if kind == "none":
        return None
    if kind == "ones":
        return torch.ones(B, L, device=device)
    if kind in ("lengths", "len1", "empty"):
        lengths = torch.randint(1, L + 1, (B,), generator=gen)
        lengths[0] = max(1, (2 * L) // 3)  # at least one sequence padded when L > 1
        if kind == "len1":
            lengths[-1] = 1
        mask = (torch.arange(L)[None, :] < lengths[:, None]).float()
        if kind == "empty":
            mask[0] = 0.0  # a sequence with no real token at all
        return mask.to(device)
    if kind == "holes":
        mask = (torch.rand(B, L, generator=gen) > 0.3).float()
        mask[:, 0] = 1.0
        mask[0, (2 * L) // 3 + 1 :] = 0.0  # holes, then trailing padding
        return mask.to(device)
    raise ValueError(kind)


def math_attention(q, k, v, mask, scale, keep=None, p=0.0, dtype=torch.float64):
    """Plain attention; rows with no real key give 0 (as the kernel defines them).

    In float64 it is the reference. In a half dtype it is the yardstick of FlashAttention's
    tests: every matmul in that dtype, the softmax in float32 then rounded to it.
    """
    q, k, v = (t.to(dtype) for t in (q, k, v))
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    s = (q @ k.transpose(-1, -2)).to(stats) * scale  # (B, H, L, L)
    if mask is not None:
        real = (mask != 0)[:, None, None, :]  # (B, 1, 1, L)
        has_real = real.any(-1, keepdim=True)  # (B, 1, 1, 1)
        s = s.masked_fill(~real & has_real, float("-inf"))
        probs = torch.softmax(s, -1) * has_real
    else:
        probs = torch.softmax(s, -1)
    if keep is not None:
        probs = probs * keep / (1.0 - p)
    return probs.to(dtype) @ v


def run(fn, q, k, v, do):
    """fn(q, k, v) and its gradients for the upstream gradient `do`; inputs keep their layout."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def check_against_reference(got, twin, ref, dtype):
    """got / twin / ref: (out, dq, dk, dv) tuples; ref in float64."""
    for name, g, t, r in zip(("out", "dq", "dk", "dv"), got, twin, ref):
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        err = max_err(g, r)
        scale = max(1.0, r.abs().max().item())
        if dtype == F32:
            bound = 1e-5 * scale
        else:
            # A small multiple of PyTorch's own error at this precision, plus a floor of a
            # fraction of one unit in the last place at the output's magnitude.
            ulp = 2.0**-10 if dtype == F16 else 2.0**-7
            bound = 3.0 * max_err(t, r) + 0.25 * ulp * scale
        assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e} (twin error {max_err(t, r):.3e})"


def compare(B, H, L, D, kind, dtype, layout, seed, sm_scale=None, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = make_qkv(B, H, L, D, dtype, layout, gen, device)
    if layout == "blhd" and H > 1 and L > 1:
        assert not q.is_contiguous()
    mask = make_mask(kind, B, L, gen, device)
    do = torch.randn(B, H, L, D, generator=gen).to(device=device, dtype=dtype)
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale

    got = run(lambda q, k, v: attention(q, k, v, mask, sm_scale=sm_scale, backend="triton"), q, k, v, do)
    twin = run(lambda q, k, v: reference.attention(q, k, v, mask, sm_scale=sm_scale), q, k, v, do)
    ref = run(lambda q, k, v: math_attention(q, k, v, mask, scale), q, k, v, do.double())
    assert got[0].dtype == dtype and got[0].shape == (B, H, L, D)
    check_against_reference(got, twin, ref, dtype)


# ----------------------------------------------------------------------------- values and gradients

CASES = [
    # (B, H, L, D, mask kind, dtype, layout)
    (1, 2, 1, 32, "none", F32, "bhld"),
    (2, 2, 1, 64, "ones", F32, "blhd"),
    (1, 2, 77, 64, "none", F32, "blhd"),
    (2, 2, 77, 32, "lengths", F32, "blhd"),
    (3, 2, 129, 64, "holes", F32, "bhld"),
    (2, 2, 130, 32, "len1", F32, "blhd"),
    (2, 2, 64, 64, "ones", F32, "bhld"),
    (2, 1, 40, 128, "lengths", F32, "blhd"),
    (2, 2, 33, 48, "holes", F32, "bhld"),  # head dim that is not a power of two
    (2, 2, 77, 64, "lengths", F16, "blhd"),
    (1, 2, 129, 32, "holes", F16, "bhld"),
    (2, 2, 50, 64, "len1", F16, "bhld"),
]


@pytest.mark.parametrize("B,H,L,D,kind,dtype,layout", CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_matches_twin(B, H, L, D, kind, dtype, layout):
    compare(B, H, L, D, kind, dtype, layout, seed=L * 1000 + D)


@pytest.mark.parametrize("draw", range(3))
def test_matches_twin_random_shapes(draw):
    gen = torch.Generator().manual_seed(100 + draw)
    B = int(torch.randint(1, 4, (1,), generator=gen))
    L = int(torch.randint(1, 141, (1,), generator=gen))
    D = (32, 64)[int(torch.randint(0, 2, (1,), generator=gen))]
    kind = MASK_KINDS[int(torch.randint(0, len(MASK_KINDS), (1,), generator=gen))]
    layout = ("bhld", "blhd")[draw % 2]
    compare(B, 2, L, D, kind, F32, layout, seed=draw)


def test_explicit_scale():
    compare(2, 2, 45, 32, "lengths", F32, "bhld", seed=7, sm_scale=0.3)


def test_backward_is_deterministic():
    """Two backward passes give the same dQ, dK and dV bits. Under the interpreter the programs run one
    after another, so atomic sums would agree too: that the kernels use none is checked on their
    sm_90a binaries (test_kernel_resources.py::test_deterministic_kernels_use_no_atomics)."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = make_qkv(2, 2, 70, 32, F32, "bhld", gen)
    mask = make_mask("holes", 2, 70, gen)
    do = torch.randn(2, 2, 70, 32, generator=gen).to(DEVICE)
    fn = lambda q, k, v: attention(q, k, v, mask, backend="triton")  # noqa: E731
    first, second = run(fn, q, k, v, do), run(fn, q, k, v, do)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_expanded_upstream_gradient_and_bool_mask():
    """out.sum().backward() hands the kernel a stride-0 dO; a bool mask works like a float one."""
    B, H, L, D = 2, 2, 37, 32
    gen = torch.Generator().manual_seed(4)
    q, k, v = make_qkv(B, H, L, D, F32, "blhd", gen)
    mask = make_mask("holes", B, L, gen).bool()
    do = torch.ones(1, device=DEVICE).expand(B, H, L, D)
    assert do.stride() == (0, 0, 0, 0)
    got = run(lambda q, k, v: attention(q, k, v, mask, backend="triton"), q, k, v, do)
    twin = run(lambda q, k, v: reference.attention(q, k, v, mask), q, k, v, do)
    ref = run(lambda q, k, v: math_attention(q, k, v, mask, 1.0 / math.sqrt(D)), q, k, v, do.double())
    check_against_reference(got, twin, ref, F32)


# ----------------------------------------------------------------------------- padding


def test_padding_rows_finite_with_extreme_values():
    """Padding positions hold huge values: every output and gradient stays finite, real rows stay right."""
    B, H, L, D = 3, 2, 70, 32
    gen = torch.Generator().manual_seed(11)
    q, k, v = make_qkv(B, H, L, D, F32, "blhd", gen)
    mask = make_mask("len1", B, L, gen)
    pad = (mask == 0)[:, None, :, None]  # (B, 1, L, 1)
    q, k, v = (torch.where(pad, torch.full_like(t, 1e4), t) for t in (q, k, v))
    do = torch.randn(B, H, L, D, generator=gen).to(DEVICE)
    do = do.masked_fill(pad, 0.0)  # as in BERT: nothing downstream reads padding rows
    got = run(lambda q, k, v: attention(q, k, v, mask, backend="triton"), q, k, v, do)
    ref = run(lambda q, k, v: math_attention(q, k, v, mask, 1.0 / math.sqrt(D)), q, k, v, do.double())
    real = ~pad
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        rows = real.expand_as(g)
        assert max_err(g[rows], r[rows]) <= 1e-5 * max(1.0, r[rows].abs().max().item()), name


def test_fully_masked_sequence_gives_zero_and_finite_gradients():
    B, H, L, D = 3, 2, 50, 32
    gen = torch.Generator().manual_seed(12)
    q, k, v = make_qkv(B, H, L, D, F32, "bhld", gen)
    mask = make_mask("empty", B, L, gen)
    assert mask[0].sum() == 0 and mask[1:].sum(1).min() > 0
    do = torch.randn(B, H, L, D, generator=gen).to(DEVICE)
    got = run(lambda q, k, v: attention(q, k, v, mask, backend="triton"), q, k, v, do)
    for name, g in zip(("out", "dq", "dk", "dv"), got):
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        assert torch.equal(g[0], torch.zeros_like(g[0])), f"{name}: the empty sequence must give exactly 0"
    ref = run(lambda q, k, v: math_attention(q, k, v, mask, 1.0 / math.sqrt(D)), q, k, v, do.double())
    twin = run(lambda q, k, v: reference.attention(q, k, v, mask), q, k, v, do)
    check_against_reference(got, twin, ref, F32)


# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_rate(p):
    B, H, L = 2, 3, 200
    keep = attention_dropout_mask(1234, B, H, L, p, DEVICE)
    assert keep.shape == (B, H, L, L) and keep.dtype == torch.bool
    n = keep.numel()
    rate = keep.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) < 4 * sigma, f"keep rate {rate:.5f}, expected {1 - p} +- {4 * sigma:.5f}"
    # every (batch, head) slice draws its own numbers, and rows are not copies of each other
    flat = keep.reshape(B * H, L, L)
    for i in range(1, B * H):
        assert not torch.equal(flat[0], flat[i])
    assert not torch.equal(flat[0, 0], flat[0, 1])
    # the mask is a function of the seed
    assert torch.equal(keep, attention_dropout_mask(1234, B, H, L, p, DEVICE))
    assert not torch.equal(keep, attention_dropout_mask(1235, B, H, L, p, DEVICE))


@pytest.mark.parametrize(
    "B,H,L,D,kind,p,layout",
    [(2, 2, 77, 32, "lengths", 0.1, "blhd"), (1, 2, 129, 64, "holes", 0.3, "bhld"), (2, 2, 1, 32, "none", 0.5, "bhld")],
)
def test_dropout_matches_twin_fed_the_same_mask(B, H, L, D, kind, p, layout):
    """Forward and all gradients match the twin given the materialised keep-mask, so the
    backward regenerates exactly the mask the forward used."""
    gen = torch.Generator().manual_seed(L + D)
    q, k, v = make_qkv(B, H, L, D, F32, layout, gen)
    mask = make_mask(kind, B, L, gen)
    do = torch.randn(B, H, L, D, generator=gen).to(DEVICE)
    seed = 987654
    keep = attention_dropout_mask(seed, B, H, L, p, DEVICE)
    scale = 1.0 / math.sqrt(D)

    got = run(lambda q, k, v: attention_with_seed(q, k, v, mask, None, p, seed), q, k, v, do)
    twin = run(lambda q, k, v: reference.attention(q, k, v, mask, dropout_p=p, dropout_mask=keep), q, k, v, do)
    ref = run(lambda q, k, v: math_attention(q, k, v, mask, scale, keep, p), q, k, v, do.double())
    check_against_reference(got, twin, ref, F32)
    # and the mask really matters: another seed gives other values
    other = attention_with_seed(q, k, v, mask, None, p, seed + 1)
    assert max_err(other, got[0]) > 1e-3


def test_dropout_seed_comes_from_torch_generator():
    B, H, L, D, p = 2, 2, 40, 32, 0.2
    gen = torch.Generator().manual_seed(5)
    q, k, v = make_qkv(B, H, L, D, F32, "bhld", gen)
    mask = make_mask("lengths", B, L, gen)
    do = torch.randn(B, H, L, D, generator=gen).to(DEVICE)
    fn = lambda q, k, v: attention(q, k, v, mask, dropout_p=p, backend="triton")  # noqa: E731

    torch.manual_seed(0)
    first = run(fn, q, k, v, do)
    torch.manual_seed(0)
    again = run(fn, q, k, v, do)
    torch.manual_seed(1)
    other = run(fn, q, k, v, do)
    for a, b, c in zip(first, again, other):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    torch.manual_seed(3)
    seed = _draw_seed(DEVICE)
    assert seed.device.type == DEVICE and seed.dtype == torch.int64 and seed.shape == (1,)
    torch.manual_seed(3)
    out = attention(q, k, v, mask, dropout_p=p, backend="triton")
    assert torch.equal(out, attention_with_seed(q, k, v, mask, None, p, seed))


def _recorded_launches(monkeypatch) -> list[tuple]:
    """Every attention launch from now on, as (name, grid, args, kwargs)."""
    calls = []
    real = attention_module.launch

    def spy(name, kernel, grid, *args, **kwargs):
        calls.append((name, grid, args, kwargs))
        return real(name, kernel, grid, *args, **kwargs)

    monkeypatch.setattr(attention_module, "launch", spy)
    return calls


def _host_side(call) -> tuple:
    """What the host hands a launch, tensors reduced to their dtype and shape: a CUDA graph replays
    exactly this (its tensors sit at fixed addresses), so it must not change from call to call."""
    name, grid, args, kwargs = call
    described = tuple((a.dtype, tuple(a.shape)) if isinstance(a, torch.Tensor) else a for a in args)
    return name, grid, described, tuple(sorted(kwargs.items()))


def test_dropout_seed_lives_on_the_device_and_each_backward_regenerates_its_forward_mask(monkeypatch):
    """Two calls on the same inputs: the host passes identical launch arguments (what a replayed graph
    does), yet the masks differ, because the seed is drawn on the device and read by the kernels
    from memory; each call's gradients are the twin's fed the mask of that call's seed."""
    B, H, L, D, p = 2, 2, 37, 32, 0.3
    gen = torch.Generator().manual_seed(21)
    q, k, v = make_qkv(B, H, L, D, F32, "blhd", gen)
    mask = make_mask("holes", B, L, gen)
    do = torch.randn(B, H, L, D, generator=gen).to(DEVICE)
    calls = _recorded_launches(monkeypatch)
    fn = lambda q, k, v: attention(q, k, v, mask, dropout_p=p, backend="triton")  # noqa: E731
    first = run(fn, q, k, v, do)
    first_calls = list(calls)
    calls.clear()
    second = run(fn, q, k, v, do)
    assert [c[0] for c in first_calls] == ["attention.fwd", "attention.delta", "attention.dkdv", "attention.dq"]
    assert [_host_side(c) for c in first_calls] == [_host_side(c) for c in calls]
    assert not torch.equal(first[0], second[0])
    for got, launches in ((first, first_calls), (second, calls)):
        position = {"attention.fwd": 7, "attention.dkdv": 10, "attention.dq": 9}  # SEED among the arguments
        seeds = [args[position[name]] for name, _, args, _ in launches if name in position]
        assert len({seed.data_ptr() for seed in seeds}) == 1  # the backward reads the forward's seed tensor
        keep = attention_dropout_mask(seeds[0], B, H, L, p, DEVICE)
        twin = run(lambda q, k, v, keep=keep: reference.attention(q, k, v, mask, dropout_p=p, dropout_mask=keep),
                   q, k, v, do)
        ref = run(lambda q, k, v, keep=keep: math_attention(q, k, v, mask, 1.0 / math.sqrt(D), keep, p),
                  q, k, v, do.double())
        check_against_reference(got, twin, ref, F32)


def test_an_int_seed_and_its_tensor_give_one_mask():
    B, H, L, p = 1, 2, 50, 0.4
    as_int = attention_dropout_mask(77, B, H, L, p, DEVICE)
    as_tensor = attention_dropout_mask(torch.tensor([77], device=DEVICE), B, H, L, p, DEVICE)
    assert torch.equal(as_int, as_tensor) and not as_int.all()


def test_a_bad_seed_tensor_is_refused():
    q = torch.randn(1, 2, 8, 16, device=DEVICE)
    for bad in (torch.tensor([1.0], device=DEVICE), torch.tensor([1, 2], device=DEVICE)):
        with pytest.raises(ValueError, match="seed tensor must be one int64"):
            attention_with_seed(q, q, q, None, None, 0.1, bad)


# ----------------------------------------------------------------------------- dispatch and errors


def test_triton_on_cpu_without_interpreter_says_so(monkeypatch):
    monkeypatch.setattr(mops.kernels.dispatch, "interpreter_enabled", lambda: False)
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        attention(q, q, q, backend="triton")


def test_auto_on_cpu_uses_the_twin():
    gen = torch.Generator().manual_seed(0)
    q, k, v = make_qkv(2, 2, 9, 16, F32, "bhld", gen, device="cpu")
    mask = make_mask("lengths", 2, 9, gen, device="cpu")
    assert torch.equal(attention(q, k, v, mask), reference.attention(q, k, v, mask))


def test_bad_inputs_are_refused():
    q = torch.randn(1, 2, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="same"):
        attention(q, q[:, :, :4], q, backend="triton")
    with pytest.raises(ValueError, match="attention_mask"):
        attention(q, q, q, torch.ones(1, 7, device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, q, q, dropout_p=1.0, backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        attention(q, q.double(), q, backend="triton")


# ----------------------------------------------------------------------------- GPU only

GPU_CASES = [
    # (B, H, L, D, mask kind, layout)
    (4, 12, 512, 64, "lengths", "blhd"),
    (3, 4, 257, 128, "holes", "bhld"),
    (2, 4, 200, 32, "len1", "blhd"),
    (1, 2, 1, 64, "none", "bhld"),
    (2, 4, 384, 64, "ones", "bhld"),
]


@requires_cuda
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("B,H,L,D,kind,layout", GPU_CASES)
def test_gpu_matches_twin(B, H, L, D, kind, layout, dtype):
    compare(B, H, L, D, kind, dtype, layout, seed=L + D, device="cuda")


@requires_cuda
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_gpu_fully_masked_sequence(dtype):
    gen = torch.Generator().manual_seed(1)
    B, H, L, D = 3, 4, 300, 64
    q, k, v = make_qkv(B, H, L, D, dtype, "blhd", gen, "cuda")
    mask = make_mask("empty", B, L, gen, "cuda")
    do = torch.randn(B, H, L, D, generator=gen).to(device="cuda", dtype=dtype)
    got = run(lambda q, k, v: attention(q, k, v, mask, backend="triton"), q, k, v, do)
    for g in got:
        assert torch.isfinite(g).all() and torch.equal(g[0], torch.zeros_like(g[0]))


@requires_cuda
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_gpu_dropout_matches_twin_fed_the_same_mask(dtype):
    B, H, L, D, p = 4, 4, 300, 64, 0.1
    gen = torch.Generator().manual_seed(2)
    q, k, v = make_qkv(B, H, L, D, dtype, "blhd", gen, "cuda")
    mask = make_mask("lengths", B, L, gen, "cuda")
    do = torch.randn(B, H, L, D, generator=gen).to(device="cuda", dtype=dtype)
    seed = 4242
    keep = attention_dropout_mask(seed, B, H, L, p, "cuda")
    rate = keep.float().mean().item()
    assert abs(rate - (1 - p)) < 4 * math.sqrt(p * (1 - p) / keep.numel())
    got = run(lambda q, k, v: attention_with_seed(q, k, v, mask, None, p, seed), q, k, v, do)
    # the yardstick: the same math with every matmul in the input dtype (the twin's plain-math
    # path computes in float32, which would measure rounding of the output only)
    twin = run(lambda q, k, v: math_attention(q, k, v, mask, 1.0 / math.sqrt(D), keep, p, dtype), q, k, v, do)
    ref = run(lambda q, k, v: math_attention(q, k, v, mask, 1.0 / math.sqrt(D), keep, p), q, k, v, do.double())
    check_against_reference(got, twin, ref, dtype)


@requires_cuda
@pytest.mark.parametrize("pinned", ["triton", "torch"])
def test_gpu_auto_follows_the_dispatch_table_and_fp32_is_exact(monkeypatch, pinned):
    """With a table pinned to each backend for this GPU, auto runs exactly that one."""
    compare(2, 4, 130, 64, "holes", F32, "blhd", seed=9, device="cuda")
    q = torch.randn(1, 2, 16, 32, device="cuda")
    table = {(torch.cuda.get_device_name(q.device), "attention"): dispatch.Choice(pinned, 2.0, "pinned", True)}
    monkeypatch.setattr(dispatch, "load_table", lambda path=None: table)
    assert mops.kernels.dispatch.resolve_backend("auto", q, op="attention") == pinned
