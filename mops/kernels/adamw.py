"""One AdamW step over many tensors: the math of mops.minbert.optim.AdamW, fused on CUDA.

The math is `mops.kernels.reference.adamw_step`, per element, in fp32:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p -= step_size * m / (sqrt(v) + eps)       step_size = lr sqrt(1 - b2^t) / (1 - b1^t) (or lr)
    p -= lr * weight_decay * p                 after the Adam update, on the updated p

The step count t and lr may live on the device (mops.minbert.optim.AdamW keeps them there): the step
sizes are computed on the device by `reference.adamw_scalars`, one per tensor, and the kernel
reads them from memory. No argument of the launch changes from one step to the next, so a CUDA
graph that captured the step replays it with each replay's counts and rate.

One launch covers every tensor of a call (per combination of dtypes). The launcher builds
two small device tables:

    table  (T, 5) int64   addresses of p, g, m, v and the element count of tensor i
    blocks (nb, 2) int32  for program b: which tensor, and which BLOCK-sized chunk of it

and program b turns the addresses back into typed pointers (an int64 -> pointer cast, which
compiled Triton and the CPU interpreter both support; under the interpreter the addresses
are those of the CPU tensors themselves, so the same kernel serves the tests). Chunks that
lie wholly inside their tensor take an unmasked path the compiler can vectorise; only the
last chunk of a tensor is masked. The block table is cached by the sizes (it lasts the run),
the address table by the addresses (it changes whenever a gradient is reallocated, and reaches
the GPU by an asynchronous copy from pinned memory, so rebuilding it never stalls the host);
any change of tensor, size or storage makes a new key.

Autocast: an optimizer step runs outside `torch.autocast`, on fp32 master weights (minBERT's
parameters stay fp32 under autocast), and neither path has an autocast policy: inside an
autocast region the step is the same as outside it.

Tensors the kernel does not take (float64, non-contiguous, or a grad/state whose layout
differs from its parameter) go through the PyTorch twin instead, so no input is refused.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from mops.kernels import reference
from mops.kernels.dispatch import resolve_backend
from mops.kernels.launches import launch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the torch path needs no Triton
    triton = None

BLOCK = 4096  # elements per program
_NUM_WARPS = 8  # 16 elements a thread: four 16-byte loads of each fp32 tensor
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CACHE_SIZE = 16


if triton is not None:

    @triton.jit
    def _adamw_kernel(
        TABLE, BLOCKS,  # (T, 5) int64, (num_blocks, 2) int32
        P_LIKE, G_LIKE, M_LIKE, V_LIKE,  # any tensor of each element type: only their pointer types are used
        NEG_STEP, NEG_DECAY,  # (T,) fp32: -step_size of tensor i; (1,) fp32: -lr * weight_decay
        beta1, beta2, one_minus_beta1, one_minus_beta2, eps,
        ALIGNED: tl.constexpr, HAS_DECAY: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        tensor = tl.load(BLOCKS + 2 * pid).to(tl.int64)
        chunk = tl.load(BLOCKS + 2 * pid + 1).to(tl.int64)
        row = TABLE + 5 * tensor
        p_ptr = tl.load(row).to(P_LIKE.dtype)
        g_ptr = tl.load(row + 1).to(G_LIKE.dtype)
        m_ptr = tl.load(row + 2).to(M_LIKE.dtype)
        v_ptr = tl.load(row + 3).to(V_LIKE.dtype)
        n = tl.load(row + 4)
        neg_step_size = tl.load(NEG_STEP + tensor)
        neg_decay = 0.0
        if HAS_DECAY:
            neg_decay = tl.load(NEG_DECAY)
        if ALIGNED:  # every address is a multiple of 16 bytes: allow vector loads
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            m_ptr = tl.multiple_of(m_ptr, 16)
            v_ptr = tl.multiple_of(v_ptr, 16)
        start = chunk * BLOCK
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            p = tl.load(p_ptr + offs).to(tl.float32)
            g = tl.load(g_ptr + offs).to(tl.float32)
            m = tl.load(m_ptr + offs).to(tl.float32)
            v = tl.load(v_ptr + offs).to(tl.float32)
            m = m * beta1 + one_minus_beta1 * g
            v = v * beta2 + one_minus_beta2 * (g * g)
            p = p + neg_step_size * tl.math.div_rn(m, tl.sqrt_rn(v) + eps)
            if HAS_DECAY:
                p = p + neg_decay * p
            tl.store(m_ptr + offs, m.to(M_LIKE.dtype.element_ty))
            tl.store(v_ptr + offs, v.to(V_LIKE.dtype.element_ty))
            tl.store(p_ptr + offs, p.to(P_LIKE.dtype.element_ty))
        else:
            mask = offs < n
            p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            m = m * beta1 + one_minus_beta1 * g
            v = v * beta2 + one_minus_beta2 * (g * g)
            p = p + neg_step_size * tl.math.div_rn(m, tl.sqrt_rn(v) + eps)
            if HAS_DECAY:
                p = p + neg_decay * p
            tl.store(m_ptr + offs, m.to(M_LIKE.dtype.element_ty), mask=mask)
            tl.store(v_ptr + offs, v.to(V_LIKE.dtype.element_ty), mask=mask)
            tl.store(p_ptr + offs, p.to(P_LIKE.dtype.element_ty), mask=mask)

    # Launch name (as `launches.launch` records it) -> its kernel: what mops.kernels.resources compiles.
    LAUNCHED_KERNELS = {"adamw.step": _adamw_kernel}
else:
    LAUNCHED_KERNELS = {}


# Least recently used first. Block tables depend on the sizes alone and last the whole run;
# address tables change whenever a gradient is reallocated (zero_grad(set_to_none=True) frees
# them every step), so they are rebuilt often and must cost no host-device synchronisation.
_blocks: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # (device, sizes, BLOCK) -> (num_blocks, 2)
_tables: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # (device, addresses, sizes) -> (T, 5)


def _kernel_takes(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> bool:
    return all(t.dtype in _KERNEL_DTYPES and t.is_contiguous() and t.device == p.device for t in (p, g, m, v)) and (
        g.shape == m.shape == v.shape == p.shape
    )


def _remember(cache: OrderedDict, key: tuple, build) -> torch.Tensor:
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = build()
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return hit


_captured: list[tuple[torch.Tensor, torch.Tensor]] = []  # (pinned source, device copy) of tables made in a CUDA graph


def _to_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host table on `device`. To a GPU through pinned memory, asynchronously: a copy from pageable
    memory would make the host wait for every kernel queued before it (the whole backward).

    A copy made while a CUDA graph is being captured is replayed from the same pinned block, into
    the same device block, at every replay: both are kept for the life of the process."""
    if device.type == "cuda":
        pinned = table.pin_memory()
        copy = pinned.to(device, non_blocking=True)  # torch keeps the pinned block until the copy ran
        if torch.cuda.is_current_stream_capturing():
            _captured.append((pinned, copy))
        return copy
    return table.to(device)


def _build_table(addresses: tuple[int, ...], sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    rows = [addresses[4 * i: 4 * i + 4] + (n,) for i, n in enumerate(sizes)]  # p, g, m, v, numel
    return _to_device(torch.tensor(rows, dtype=torch.int64), device)


def _build_blocks(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    chunks = [math.ceil(n / BLOCK) for n in sizes]
    tensor_index = torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.int32), torch.tensor(chunks))
    starts = torch.tensor([0] + chunks[:-1]).cumsum(0)
    chunk_index = torch.arange(sum(chunks)) - torch.repeat_interleave(starts, torch.tensor(chunks))
    return _to_device(torch.stack([tensor_index, chunk_index.to(torch.int32)], dim=1).contiguous(), device)


def _tables_for(tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]):
    """(table, blocks, aligned) for these tensors: `blocks` built once per distinct list of sizes,
    `table` once per distinct set of addresses."""
    addresses = tuple(t.data_ptr() for quad in tensors for t in quad)
    sizes = tuple(quad[0].numel() for quad in tensors)
    device = tensors[0][0].device
    table = _remember(_tables, (device, addresses, sizes), lambda: _build_table(addresses, sizes, device))  # (T, 5)
    blocks = _remember(_blocks, (device, sizes, BLOCK), lambda: _build_blocks(sizes, device))  # (num_blocks, 2)
    return table, blocks, all(a % 16 == 0 for a in addresses)


def clear_cache() -> None:
    """Drop the cached tables (small int tensors; they keep no reference to any parameter)."""
    _tables.clear()
    _blocks.clear()


def adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    step: int | torch.Tensor,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    correct_bias: bool,
    backend: str = "auto",
) -> None:
    """One AdamW step; `step` and `lr` as in `reference.adamw_step` (ints and floats, or device tensors)."""
    if not params:
        return
    if resolve_backend(backend, *params, op="adamw_step") == "torch":
        return reference.adamw_step(params, grads, exp_avgs, exp_avg_sqs, step=step, lr=lr, beta1=beta1,
                                    beta2=beta2, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
    if triton is None:
        raise RuntimeError("adamw_step: backend='triton' needs the `triton` package")
    if not (len(params) == len(grads) == len(exp_avgs) == len(exp_avg_sqs)):
        raise ValueError(
            f"adamw_step: params, grads, exp_avgs and exp_avg_sqs must have the same length, got "
            f"{len(params)}, {len(grads)}, {len(exp_avgs)}, {len(exp_avg_sqs)}"
        )
    device = params[0].device
    sizes, decay = reference.adamw_scalars(step, lr, count=len(params), beta1=beta1, beta2=beta2,
                                           weight_decay=weight_decay, correct_bias=correct_bias, device=device)
    groups: dict[tuple, list[int]] = {}  # (device, dtypes) -> indices of the tensors the kernel takes
    rest: list[int] = []
    for i, quad in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if not _kernel_takes(*quad):
            rest.append(i)
        elif quad[0].numel() > 0:
            groups.setdefault((quad[0].device,) + tuple(t.dtype for t in quad), []).append(i)
    if rest:
        reference.apply_adamw(*_pick((params, grads, exp_avgs, exp_avg_sqs), rest), _select(sizes, rest), decay,
                              beta1=beta1, beta2=beta2, eps=eps)
    if not groups:
        return
    neg_sizes = (-sizes).to(torch.float32)  # (T,): the kernel's arithmetic is fp32, as with host floats
    if isinstance(decay, torch.Tensor):
        neg_decay = (-decay).to(torch.float32).reshape(1)
    else:  # a fill, not a copy from the host
        neg_decay = torch.full((1,), -decay, dtype=torch.float32, device=device)
    for indices in groups.values():
        tensors = list(zip(*_pick((params, grads, exp_avgs, exp_avg_sqs), indices)))
        table, blocks, aligned = _tables_for(tensors)
        p0, g0, m0, v0 = tensors[0]
        launch(
            "adamw.step", _adamw_kernel, (blocks.shape[0],),
            table, blocks, p0, g0, m0, v0, _select(neg_sizes, indices), neg_decay,
            float(beta1), float(beta2), 1.0 - beta1, 1.0 - beta2, float(eps),
            ALIGNED=aligned, HAS_DECAY=weight_decay != 0.0, BLOCK=BLOCK, num_warps=_NUM_WARPS,
        )


def _pick(lists: tuple[list, ...], indices: list[int]) -> tuple[list, ...]:
    return tuple([items[i] for i in indices] for items in lists)


def _select(values: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """values[indices] without sending an index tensor to the device (a host-to-device copy)."""
    if indices == list(range(values.numel())):
        return values
    return torch.stack([values[i] for i in indices])
