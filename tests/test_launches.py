"""mops.kernels.launches: every kernel launch is reported with the specialization Triton compiles for it.

The rule `argument_signature` states is checked against Triton's own specializer where the
installed Triton exposes it; the op-level tests then count variants the way a GPU run would
compile them (the interpreter compiles nothing, but the launches and their arguments are the same).
"""

from __future__ import annotations

import importlib

import pytest
import torch

import mops.kernels.dispatch
from mops import kernels
from mops.kernels.attention import attention_dropout_mask, attention_with_seed
from mops.kernels.launches import Specialization, argument_signature, record_launches

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
if not CUDA and not mops.kernels.dispatch.interpreter_enabled():
    pytest.skip("no GPU and TRITON_INTERPRET is not set: the Triton kernels cannot run", allow_module_level=True)

ATTENTION_KERNELS = {"attention.fwd", "attention.delta", "attention.dkdv", "attention.dq"}
# The modules whose launchers call `launch` (`mops.kernels.attention` etc. name the functions).
KERNEL_MODULES = [importlib.import_module(f"mops.kernels.{name}")
                  for name in ("attention", "layer_norm", "bias_gelu", "adamw")]


# ----------------------------------------------------------------------------- the rule


def _triton_specialize(value, specialize=True):
    native = pytest.importorskip("triton._C.libtriton").__dict__.get("native_specialize_impl")
    if native is None:
        pytest.skip("this Triton has no native_specialize_impl to compare with")
    from triton.backends.compiler import BaseBackend

    return native(BaseBackend, value, False, specialize, True)


def _as_triton_pair(signature: str):
    """"i32:16" -> ("i32", "D"), "=1" -> ("constexpr", 1), "fp32" -> ("fp32", None)."""
    if signature == "=1":
        return ("constexpr", 1)
    kind, _, divisible = signature.partition(":")
    return kind, "D" if divisible == "16" else ""


INTS = [0, 1, 2, 15, 16, 17, 48, 768, -16, 2**31 - 1, 2**31, 2**40, 2**63, 2**64 - 1]
TENSORS = [torch.zeros(8), torch.zeros(8)[1:], torch.zeros(8, dtype=torch.bfloat16), torch.zeros(8, dtype=torch.float16),
           torch.zeros(8, dtype=torch.int32), torch.zeros(8, dtype=torch.int8), torch.zeros(8, dtype=torch.bool),
           torch.zeros(8, dtype=torch.int64)]


@pytest.mark.parametrize("value", INTS + TENSORS, ids=lambda v: f"tensor-{v.dtype}-{v.data_ptr() % 16}"
                         if isinstance(v, torch.Tensor) else f"int-{v}")
def test_signature_rule_matches_triton(value):
    kind, key = _triton_specialize(value)
    ours = argument_signature(value)
    if kind == "constexpr":
        assert ours == "=1"
    else:
        assert _as_triton_pair(ours) == (kind, "D" if key == "D" else "")


def test_floats_bools_and_unspecialized_ints():
    assert argument_signature(0.5) == "fp32" and argument_signature(True) == "u1"
    assert argument_signature(1, specialize=False) == "i32"
    assert argument_signature(32, specialize=False) == "i32"
    assert _triton_specialize(32, specialize=False) == ("i32", None)


# ----------------------------------------------------------------------------- op level


def _attention_step(L, B=2, H=2, D=32, mask=False, seed=0):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    attention_mask = (torch.arange(L)[None, :] < torch.tensor([L, L // 2])[:, None]).to(DEVICE) if mask else None
    out = mops.kernels.attention(q, k, v, attention_mask, backend="triton")
    out.backward(torch.randn(B, H, L, D, generator=g).to(DEVICE))


def test_attention_lengths_that_are_multiples_of_16_share_one_variant_per_kernel():
    with record_launches() as log:
        for L in (32, 48, 64):
            _attention_step(L)
    by_kernel = log.by_kernel()
    assert set(by_kernel) == ATTENTION_KERNELS
    assert all(len(specs) == 1 for specs in by_kernel.values()), by_kernel
    assert len(log.launches) == 3 * 4  # every launch is recorded, distinct or not


def test_the_same_shape_again_adds_nothing():
    with record_launches() as first:
        _attention_step(48)
    with record_launches() as again:
        _attention_step(48)
        _attention_step(48)
    assert again.distinct() == first.distinct()


def test_a_length_off_the_16_grid_adds_one_variant_per_kernel():
    with record_launches() as log:
        with record_launches() as at48:
            _attention_step(48)
        with record_launches() as at40:
            _attention_step(40)
    assert all(len(specs) == 2 for specs in log.by_kernel().values())
    (fwd48,), (fwd40,) = at48.by_kernel()["attention.fwd"], at40.by_kernel()["attention.fwd"]
    changed = [(a, b) for a, b in zip(fwd48.signature, fwd40.signature) if a != b]
    assert changed == [("i32:16", "i32")], "only L's divisibility differs (strides H*L*D and L*D stay multiples of 16)"
    assert fwd48.constants == fwd40.constants


def test_mask_and_dtype_are_part_of_the_specialization():
    with record_launches() as log:
        _attention_step(48)
        _attention_step(48, mask=True)
    fwd = log.by_kernel()["attention.fwd"]
    assert sorted(dict(s.constants)["HAS_MASK"] for s in fwd) == [False, True]
    x, w, b = torch.randn(4, 384, device=DEVICE), torch.ones(384, device=DEVICE), torch.zeros(384, device=DEVICE)
    with record_launches() as log:
        mops.kernels.layer_norm(x, w, b, 1e-5, backend="triton")
        mops.kernels.layer_norm(x.half(), w, b, 1e-5, backend="triton")
    first, second = log.launches
    assert first.signature[0] == "*fp32:16" and second.signature[0] == "*fp16:16"


def test_dropout_seed_is_not_specialized():
    """The seed changes every step: it is `do_not_specialize`, so 1, 16 and 17 compile one variant."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 32, 32, generator=g).to(DEVICE)
    with record_launches() as log:
        for seed in (1, 16, 17):
            attention_with_seed(q, q, q, None, None, 0.1, seed)
    assert len(log.launches) == 3 and len(log.distinct()) == 1


def _rowwise_and_adamw_steps():
    """Layer norm and bias + GELU, forward and backward, and one AdamW step: every launcher but attention's."""
    x, w, b = torch.randn(6, 384, device=DEVICE), torch.ones(384, device=DEVICE), torch.zeros(384, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    mops.kernels.layer_norm(*leaves, 1e-5, backend="triton").sum().backward()
    mops.kernels.bias_gelu(leaves[0], leaves[2], backend="triton").sum().backward()
    kernels.adamw_step([w.clone()], [x[0].clone()], [torch.zeros(384, device=DEVICE)],
                       [torch.zeros(384, device=DEVICE)], step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6,
                       weight_decay=0.0, correct_bias=True, backend="triton")


def test_every_launcher_reports():
    with record_launches() as log:
        _rowwise_and_adamw_steps()
    assert set(log.by_kernel()) == {"layer_norm.fwd", "layer_norm.bwd", "sum_partials", "bias_gelu.fwd",
                                    "bias_gelu.bwd", "adamw.step"}
    spec = log.by_kernel()["layer_norm.fwd"].pop()
    assert isinstance(spec, Specialization)
    assert {"HAS_RES", "ROWS", "BLOCK_N", "num_warps"} <= set(dict(spec.constants))


def _noting(module, launched: dict):
    """`module.launch`, noting in `launched` the module and kernel of each launch name."""
    real = module.launch

    def noted(name, kernel, grid, *args, **kwargs):
        launched[name] = (module, kernel)
        return real(name, kernel, grid, *args, **kwargs)

    return noted


def test_each_launch_runs_the_kernel_its_module_lists_under_its_name(monkeypatch):
    """LAUNCHED_KERNELS, from which mops.kernels.resources compiles each recorded launch, names every
    launch of the ops and the kernel that launch runs."""
    launched = {}
    for module in KERNEL_MODULES:
        monkeypatch.setattr(module, "launch", _noting(module, launched))
    _attention_step(32, mask=True)
    attention_dropout_mask(5, 1, 2, 20, 0.1, DEVICE)
    _rowwise_and_adamw_steps()
    listed = {name: (module, kernel) for module in KERNEL_MODULES for name, kernel in module.LAUNCHED_KERNELS.items()}
    assert launched == listed


def test_recorders_nest_and_nothing_is_kept_outside():
    x, w, b = torch.randn(4, 384, device=DEVICE), torch.ones(384, device=DEVICE), torch.zeros(384, device=DEVICE)
    with record_launches() as outer:
        mops.kernels.layer_norm(x, w, b, 1e-5, backend="triton")
        with record_launches() as inner:
            mops.kernels.layer_norm(x, w, b, 1e-5, backend="triton")
    mops.kernels.layer_norm(x, w, b, 1e-5, backend="triton")  # after both blocks: recorded nowhere
    assert len(outer.launches) == 2 and len(inner.launches) == 1
    assert outer.distinct() == inner.distinct()
