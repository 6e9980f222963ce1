"""The Triton ops inside `torch.autocast` against their PyTorch twins inside the same autocast.

For each op and input dtypes: the output's dtype and every gradient's dtype equal the twin's,
and the values are as close to a float64 reference as the twin's own (the kernel tests' bounds).
What the twins do (kernels/autocast.py has the table): attention (SDPA) computes in the
autocast dtype on CPU and CUDA; layer_norm is an fp32 op under CUDA autocast and untouched by
CPU autocast; bias_gelu (add, then gelu) is untouched by both, so a bf16 activation plus an
fp32 bias is fp32.

On the CPU the kernels run under Triton's interpreter with CPU autocast (bfloat16 and float16).
The interpreter computes bfloat16 `tl.dot` wrongly, so bf16 attention on the CPU is checked for
dtypes only; its values are checked under fp16 autocast here and under bf16 on a GPU.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

import mops.kernels.dispatch
from mops import kernels
from mops.kernels import reference

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: CUDA autocast policies differ from the CPU's")
# CPU autocast around Triton kernels means CPU tensors, which only the interpreter runs.
needs_interpreter = pytest.mark.skipif(not mops.kernels.dispatch.interpreter_enabled(),
                                       reason="CPU autocast around Triton kernels needs TRITON_INTERPRET=1 (a CPU-only machine)")
DEVICE = "cuda" if CUDA else "cpu"  # where the Triton kernels run in this session
if not CUDA and not mops.kernels.dispatch.interpreter_enabled():
    pytest.skip("no GPU and TRITON_INTERPRET is not set: the Triton kernels cannot run", allow_module_level=True)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
AUTOCAST_DTYPES = pytest.mark.parametrize("amp", [BF16, F16], ids=["bf16", "fp16"])
EPS = 1e-5


def _run(fn, inputs, dy_seed, device, amp):
    """fn(*inputs) inside autocast, and the gradient of each input for a fixed random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    with torch.autocast(device, dtype=amp):
        out = fn(*leaves)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(dy_seed)).to(device=device, dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, dy)
    return out.detach(), list(grads), dy


def _reference64(fn, inputs, dy):
    """fn on float64 copies of `inputs` (already rounded as the op sees them), and its gradients."""
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out.detach(), list(torch.autograd.grad(out, leaves, dy.double()))


def _assert_same_dtypes(got, twin, names):
    for name, g, t in zip(names, got, twin):
        assert g.dtype == t.dtype, f"{name}: the Triton op gives {g.dtype}, its twin {t.dtype}"
        assert g.shape == t.shape, f"{name}: shape {tuple(g.shape)} against the twin's {tuple(t.shape)}"


def _assert_as_close_as_twin(got, twin, ref, names, floor=1e-5):
    """Each result's error against the float64 reference is at most twice the twin's, plus a floor.

    Except bfloat16 results under the interpreter: it converts fp32 to bf16 by truncation, not
    by rounding to nearest as compiled Triton and PyTorch do, so its last step alone can cost one
    bf16 ulp (at most 2^-7 of the value) where the twin's costs half of one. There each element
    is held to that: |got - ref| <= 2^-7 |ref| + floor.
    """
    for name, g, t, r in zip(names, got, twin, ref):
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        if g.dtype == BF16 and g.device.type == "cpu":
            excess = (g.double() - r).abs() - (2.0**-7 * r.abs() + floor)
            assert excess.max().item() <= 0, f"{name}: more than one bf16 ulp from the reference"
            continue
        err = (g.double() - r).abs().max().item()
        twin_err = (t.double() - r).abs().max().item()
        assert err <= 2 * twin_err + floor, f"{name}: error {err:.3e} > 2 x the twin's {twin_err:.3e} + {floor}"


# ----------------------------------------------------------------------------- layer_norm


def _layer_norm_inputs(x_dtype, res_dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(3, 7, 384, generator=g) * 2 + 0.5).to(device, x_dtype)
    w = (1 + 0.5 * torch.randn(384, generator=g)).to(device)  # parameters stay fp32 under autocast
    b = (0.5 * torch.randn(384, generator=g)).to(device)
    inputs = [x, w, b]
    if res_dtype is not None:
        inputs.append(torch.randn(3, 7, 384, generator=g).to(device, res_dtype))
    return inputs


def _ln_triton(x, w, b, r=None):
    return mops.kernels.layer_norm(x, w, b, EPS, residual=r, backend="triton")


def _ln_twin(x, w, b, r=None):
    return reference.layer_norm(x, w, b, EPS, residual=r)


def check_layer_norm(x_dtype, res_dtype, device, amp):
    inputs = _layer_norm_inputs(x_dtype, res_dtype, device)
    names = ["y", "dx", "dweight", "dbias", "dresidual"][: len(inputs) + 1]
    y, grads, dy = _run(_ln_triton, inputs, 1, device, amp)
    y_twin, grads_twin, _ = _run(_ln_twin, inputs, 1, device, amp)
    _assert_same_dtypes([y] + grads, [y_twin] + grads_twin, names)
    # The twin's float64 twin: what both compute, without rounding (x + residual exact).
    y64, grads64 = _reference64(_ln_twin, inputs, dy)
    _assert_as_close_as_twin([y] + grads, [y_twin] + grads_twin, [y64] + grads64, names)
    return y.dtype


# (x dtype, residual dtype or None); "amp" stands for the autocast dtype.
LN_CASES = [("amp", F32), ("amp", "amp"), (F32, None), ("amp", None), (F32, F32)]
LN_IDS = ["x-amp+res-fp32", "x-amp+res-amp", "x-fp32", "x-amp", "x-fp32+res-fp32"]


def _resolve(dtype, amp):
    return amp if dtype == "amp" else dtype


@needs_interpreter
@AUTOCAST_DTYPES
@pytest.mark.parametrize("x_dtype,res_dtype", LN_CASES, ids=LN_IDS)
def test_layer_norm_under_cpu_autocast(x_dtype, res_dtype, amp):
    """CPU autocast leaves layer_norm alone: the output has x + residual's promoted dtype."""
    x_dtype, res_dtype = _resolve(x_dtype, amp), _resolve(res_dtype, amp)
    out = check_layer_norm(x_dtype, res_dtype, "cpu", amp)
    assert out == (x_dtype if res_dtype is None else torch.promote_types(x_dtype, res_dtype))


@needs_cuda
@AUTOCAST_DTYPES
@pytest.mark.parametrize("x_dtype,res_dtype", LN_CASES, ids=LN_IDS)
def test_layer_norm_under_cuda_autocast(x_dtype, res_dtype, amp):
    """CUDA autocast runs layer_norm in fp32: the output is fp32 whatever the inputs."""
    out = check_layer_norm(_resolve(x_dtype, amp), _resolve(res_dtype, amp), "cuda", amp)
    assert out == F32


# ----------------------------------------------------------------------------- bias_gelu


def check_bias_gelu(x_dtype, bias_dtype, device, amp):
    g = torch.Generator().manual_seed(2)
    inputs = [(2.5 * torch.randn(5, 9, 768, generator=g)).to(device, x_dtype),
              (0.5 * torch.randn(768, generator=g)).to(device, bias_dtype)]
    names = ["y", "dx", "dbias"]
    y, grads, dy = _run(lambda x, b: mops.kernels.bias_gelu(x, b, backend="triton"), inputs, 3, device, amp)
    y_twin, grads_twin, _ = _run(reference.bias_gelu, inputs, 3, device, amp)
    _assert_same_dtypes([y] + grads, [y_twin] + grads_twin, names)
    y64, grads64 = _reference64(reference.bias_gelu, inputs, dy)
    _assert_as_close_as_twin([y] + grads, [y_twin] + grads_twin, [y64] + grads64, names)
    return y.dtype


GELU_CASES = [("amp", F32), (F32, F32), ("amp", "amp")]
GELU_IDS = ["x-amp+bias-fp32", "x-fp32+bias-fp32", "x-amp+bias-amp"]


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=needs_interpreter),
                                    pytest.param("cuda", marks=needs_cuda)])
@AUTOCAST_DTYPES
@pytest.mark.parametrize("x_dtype,bias_dtype", GELU_CASES, ids=GELU_IDS)
def test_bias_gelu_under_autocast(x_dtype, bias_dtype, amp, device):
    """No autocast policy for add or gelu on either device: x + bias promotes (the model's bf16
    activation plus fp32 bias is fp32)."""
    x_dtype, bias_dtype = _resolve(x_dtype, amp), _resolve(bias_dtype, amp)
    assert check_bias_gelu(x_dtype, bias_dtype, device, amp) == torch.promote_types(x_dtype, bias_dtype)


# ----------------------------------------------------------------------------- attention


def _attention_inputs(dtypes, device, B=2, H=2, L=45, D=32, seed=4):
    g = torch.Generator().manual_seed(seed)
    qkv = [torch.randn(B, L, H, D, generator=g).to(device, dt).transpose(1, 2) for dt in dtypes]  # (B, H, L, D) views
    lengths = torch.tensor([L, (2 * L) // 3])[:B]
    mask = (torch.arange(L)[None, :] < lengths[:, None]).to(device)  # (B, L)
    return qkv, mask


def check_attention(dtypes, device, amp, check_values):
    (q, k, v), mask = _attention_inputs(dtypes, device)
    names = ["out", "dq", "dk", "dv"]
    fn = lambda q, k, v: mops.kernels.attention(q, k, v, mask, backend="triton")  # noqa: E731
    twin_fn = lambda q, k, v: reference.attention(q, k, v, mask)  # noqa: E731
    out, grads, do = _run(fn, [q, k, v], 5, device, amp)
    out_twin, grads_twin, _ = _run(twin_fn, [q, k, v], 5, device, amp)
    _assert_same_dtypes([out] + grads, [out_twin] + grads_twin, names)
    assert out.dtype == amp, "attention computes in the autocast dtype, as SDPA does"
    assert [g.dtype for g in grads] == list(dtypes), "each gradient comes back in its input's dtype"
    if not check_values:
        return
    # Both paths see q, k, v rounded to the autocast dtype: the reference starts from those values.
    rounded = [t.to(amp) for t in (q, k, v)]
    out64, grads64 = _reference64(lambda q, k, v: reference.attention(q, k, v, mask), rounded, do)
    # FlashAttention's yardstick, as in test_attention: 3 x the twin's error plus a quarter ulp.
    ulp = 2.0**-10 if amp == F16 else 2.0**-7
    for name, g, t, r in zip(names, [out] + grads, [out_twin] + grads_twin, [out64] + grads64):
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        err = (g.double() - r).abs().max().item()
        twin_err = (t.double() - r).abs().max().item()
        bound = 3 * twin_err + 0.25 * ulp * max(1.0, r.abs().max().item())
        assert err <= bound, f"{name}: error {err:.3e} > bound {bound:.3e} (twin's {twin_err:.3e})"


ATTN_CASES = [(F32, F32, F32), ("amp", "amp", "amp"), (F32, "amp", F32)]
ATTN_IDS = ["qkv-fp32", "qkv-amp", "mixed"]


@needs_interpreter
@pytest.mark.parametrize("dtypes", ATTN_CASES, ids=ATTN_IDS)
def test_attention_under_cpu_autocast_fp16(dtypes):
    check_attention([_resolve(d, F16) for d in dtypes], "cpu", F16, check_values=True)


@needs_interpreter
@pytest.mark.parametrize("dtypes", ATTN_CASES, ids=ATTN_IDS)
def test_attention_under_cpu_autocast_bf16_dtypes(dtypes):
    """Dtypes only: the interpreter's bf16 tl.dot is wrong, so bf16 values are checked on a GPU."""
    check_attention([_resolve(d, BF16) for d in dtypes], "cpu", BF16, check_values=False)


@needs_cuda
@AUTOCAST_DTYPES
@pytest.mark.parametrize("dtypes", ATTN_CASES, ids=ATTN_IDS)
def test_attention_under_cuda_autocast(dtypes, amp):
    check_attention([_resolve(d, amp) for d in dtypes], "cuda", amp, check_values=True)


def test_attention_without_autocast_keeps_fp32():
    """Outside autocast nothing is cast: fp32 in, fp32 out, the exact (ieee) path."""
    (q, k, v), mask = _attention_inputs([F32] * 3, DEVICE)
    out = mops.kernels.attention(q, k, v, mask, backend="triton")
    assert out.dtype == F32
    assert (out - reference.attention(q, k, v, mask)).abs().max().item() < 1e-5


# ----------------------------------------------------------------------------- inside the Functions


@pytest.mark.parametrize("op", ["attention", "layer_norm", "bias_gelu"])
def test_kernels_launch_with_autocast_off(op, monkeypatch):
    """Forward and backward launch their kernels with autocast disabled, whatever the caller's region."""
    import mops.kernels.launches

    seen = []
    original = mops.kernels.launches.launch

    def spy(name, *args, **kwargs):
        seen.append((name, torch.is_autocast_enabled(DEVICE)))
        return original(name, *args, **kwargs)

    for module in ("attention", "layer_norm", "bias_gelu"):  # mops.kernels.attention is also a function's name
        monkeypatch.setattr(sys.modules[f"mops.kernels.{module}"], "launch", spy)
    if op == "attention":
        (q, k, v), mask = _attention_inputs([F32] * 3, DEVICE, L=20)
        inputs, fn = [q, k, v], lambda q, k, v: mops.kernels.attention(q, k, v, mask, backend="triton")
    elif op == "layer_norm":
        inputs, fn = _layer_norm_inputs(F32, F32, DEVICE), _ln_triton
    else:
        inputs, fn = [torch.randn(4, 384, device=DEVICE), torch.randn(384, device=DEVICE)], lambda x, b: mops.kernels.bias_gelu(x, b, backend="triton")
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    with torch.autocast(DEVICE, dtype=BF16):
        out = fn(*leaves)
        out.float().sum().backward()  # backward inside the region too: the harder case
    assert seen, "no kernel was launched"
    assert not any(enabled for _, enabled in seen), f"launched with autocast on: {[n for n, e in seen if e]}"


# ----------------------------------------------------------------------------- adamw_step


def test_adamw_step_is_unaffected_by_autocast():
    """An optimizer step runs outside autocast on fp32 master weights; inside a region it is the same step."""
    hyper = dict(step=1, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, correct_bias=True)
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).to(DEVICE) for s in [(33, 7), (100,)]]
    grads = [torch.randn(p.shape, generator=g).to(DEVICE) for p in params]
    results = []
    for region in (False, True):
        ps, ms, vs = [p.clone() for p in params], [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        with torch.autocast(DEVICE, dtype=BF16, enabled=region):
            kernels.adamw_step(ps, grads, ms, vs, backend="triton", **hyper)
        assert all(t.dtype == F32 for t in ps + ms + vs)
        results.append(ps)
    for outside, inside in zip(*results):
        assert torch.equal(outside, inside)
    assert not math.isclose(results[0][0].sum().item(), params[0].sum().item())
