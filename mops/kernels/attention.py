"""Fused masked attention: (B, H, L, D) queries, keys and values, a (B, L) padding mask.

Forward (flash style). One program per (query block, batch * head) walks the key blocks of
its sequence, keeping a running row maximum and row sum in fp32 (online softmax), so the
(L, L) score matrix never reaches memory. It saves each row's log-sum-exp (base 2) for the
backward.

Backward. A preprocess kernel computes delta = rowsum(dO * O) per query row. Then one program
per key block accumulates dK and dV over all query blocks, and one program per query block
accumulates dQ over the key blocks. Both recompute the probabilities from the saved
log-sum-exp. Every program owns the block it writes: no atomics, deterministic results.

Padding. The (B, L) mask masks keys: padding queries still attend to the real keys, exactly
as in the PyTorch twin. Each sequence's key length (index of its last real token + 1) is
computed once; key blocks wholly past it are never loaded, so the work follows the real
lengths. Inside a block the mask is applied element by element, so masks with holes are
right. A sequence with no real token at all has every row fully masked: its output is
defined as 0 and its gradients are 0.

Dropout. As BERT trains it: on the probabilities, kept ones scaled by 1 / (1 - p). The keep
mask is never stored: element (b, h, i, j) is kept when a uniform number from Philox, keyed by
the seed and b * H + h with counter i * L + j, is >= p. The seed is a one-element int64 tensor
on q's device, drawn there by torch's generator of that device (so `torch.manual_seed` makes
runs reproducible) and read by the kernels from memory: no launch argument changes from call to
call, and a CUDA graph that replays the call draws a new seed each replay (the generator's
offset advances on every replay). The backward reads the same seed tensor and regenerates the
forward's mask exactly. `attention_dropout_mask` materialises the same mask for tests.

Launches. Block sizes come from `attention_blocks` (a per-architecture table; tuning is an opt-in
whose choices are saved), and every launch goes through `launches.launch`, so tests can count the
compiled variants. `LAUNCHED_KERNELS` maps each launch name to its kernel, for whatever compiles
the launches offline (`mops.kernels.resources`).

Cost. Padding query rows are computed like real ones (the twin defines their values), so a
sequence costs L x (its key length) score entries rather than L x L, in forward and backward.
"""

from __future__ import annotations

import math

import torch

from mops.kernels import autocast, reference
from mops.kernels.attention_blocks import Config, config_for
from mops.kernels.dispatch import resolve_backend
from mops.kernels.launches import launch

try:
    import triton
    import triton.language as tl
except ImportError:  # macOS, Windows: the PyTorch twin runs, backend='triton' is refused
    triton = None

LOG2E = 1.4426950408889634  # log2(e): the kernels work with exp2 and base-2 log-sum-exp


# ----------------------------------------------------------------------------- kernels

if triton is not None:  # where Triton cannot be installed, the PyTorch twin runs

    @triton.jit
    def _dropout_keep(seed, bh, rows, cols, L, dropout_p):
        """Keep-mask for query rows `rows` x key columns `cols` (broadcastable int32 blocks) of head `bh`.

        The (batch * head) index sits in the upper 32 bits of Philox's 64-bit key and the position
        i * L + j is the counter, so every element of the (B, H, L, L) mask has its own number.
        """
        key = seed.to(tl.int64) + (bh.to(tl.int64) << 32)
        return tl.rand(key, rows * L + cols) >= dropout_p


    @triton.jit
    def _program(H, SEED, HAS_DROPOUT: tl.constexpr):
        """(block, batch * head, batch, head, dropout seed) of this program: the block along L is
        grid axis 0, b * H + h axis 1."""
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        off_b = bh // H
        off_h = bh % H
        seed = tl.load(SEED) if HAS_DROPOUT else 0  # read from memory: the same launch serves every step
        return pid, bh, off_b, off_h, seed


    @triton.jit
    def _key_length(KV_LEN, off_b, L, HAS_MASK: tl.constexpr):
        """Sequence off_b's last real token + 1: 0 for an all-padding sequence, L without a mask."""
        if HAS_MASK:
            kv_len = tl.load(KV_LEN + off_b)
        else:
            kv_len = L
        return kv_len


    @triton.jit
    def _real_keys(MASK, off_b, L, offs_n, in_range, HAS_MASK: tl.constexpr):
        """Which keys `offs_n` of sequence off_b are real tokens (within `in_range`)."""
        if HAS_MASK:
            real = tl.load(MASK + off_b * L + offs_n, mask=in_range, other=0) != 0
        else:
            real = in_range
        return real


    @triton.jit
    def _key_block(
        q, k_base, v_base, MASK, off_b, start_n, kv_len, L, offs_d, d_ok,
        stride_kl, stride_kd, stride_vl, stride_vd, qk_scale,
        HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """The key block at start_n, as the forward and dQ stream it past their query block: its key
        positions, k and v (BLOCK_N, BLOCK_D), and the scores q k^T * qk_scale (BLOCK_M, BLOCK_N),
        -inf at padding keys and keys past kv_len."""
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_range = offs_n < kv_len
        kv_mask = in_range[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kl + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vl + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        valid = _real_keys(MASK, off_b, L, offs_n, in_range, HAS_MASK)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        return offs_n, k, v, tl.where(valid[None, :], s, float("-inf"))


    @triton.jit
    def _query_block(
        q_base, do_base, LSE, DELTA, row_base, start_m, L, offs_d, d_ok,
        stride_ql, stride_qd, stride_dol, stride_dod,
        BLOCK_M: tl.constexpr,
    ):
        """The query block at start_m, as the backward reads it: its rows, q and dO (BLOCK_M, BLOCK_D),
        and the rows' saved log-sum-exp and delta (BLOCK_M,); rows past L get lse = +inf (P = 0)."""
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < L
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dol + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
        return offs_m, q, do, lse, delta


    @triton.jit
    def _attn_fwd_kernel(
        Q, K, V, O, LSE, MASK, KV_LEN, SEED,
        stride_qb, stride_qh, stride_ql, stride_qd, stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd, stride_ob, stride_oh, stride_ol, stride_od,
        H, L, qk_scale, dropout_p, drop_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_MASK: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_m, bh, off_b, off_h, seed = _program(H, SEED, HAS_DROPOUT)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        row_ok = offs_m < L

        q_ptrs = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
        q = tl.load(q_ptrs + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
        v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
        kv_len = _key_length(KV_LEN, off_b, L, HAS_MASK)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max (base 2)
        l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum of exp2(s - m_i), before dropout
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, kv_len, BLOCK_N):
            offs_n, k, v, s = _key_block(q, k_base, v_base, MASK, off_b, start_n, kv_len, L, offs_d, d_ok,
                                         stride_kl, stride_kd, stride_vl, stride_vd, qk_scale,
                                         HAS_MASK, DOT_PRECISION, BLOCK_N)  # s: (BLOCK_M, BLOCK_N)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no real key yet
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            if HAS_DROPOUT:
                keep = _dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], L, dropout_p)
                p = tl.where(keep, p, 0.0)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
            m_i = m_new

        empty = l_i == 0.0  # every key masked: output 0
        l_safe = tl.where(empty, 1.0, l_i)
        out = acc * (drop_scale / l_safe)[:, None]
        lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))  # +inf: P = 0 in the backward
        o_ptrs = O + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
        tl.store(o_ptrs + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od,
                 out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        tl.store(LSE + bh.to(tl.int64) * L + offs_m, lse, mask=row_ok)


    @triton.jit
    def _attn_bwd_delta_kernel(
        O, DO, DELTA,
        stride_ob, stride_oh, stride_ol, stride_od,
        stride_dob, stride_doh, stride_dol, stride_dod,
        H, L,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    ):
        """delta = rowsum(dO * O): the softmax backward's row term (dropout included, since O is)."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        off_b = bh // H
        off_h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        ok = (offs_m[:, None] < L) & (offs_d[None, :] < HEAD_DIM)
        o = tl.load(O + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
                    + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od, mask=ok, other=0.0)
        do = tl.load(DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
                     + offs_m[:, None] * stride_dol + offs_d[None, :] * stride_dod, mask=ok, other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + bh.to(tl.int64) * L + offs_m, delta, mask=offs_m < L)


    @triton.jit
    def _attn_bwd_dkdv_kernel(
        Q, K, V, DO, DK, DV, LSE, DELTA, MASK, KV_LEN, SEED,
        stride_qb, stride_qh, stride_ql, stride_qd, stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd, stride_dob, stride_doh, stride_dol, stride_dod,
        stride_dkb, stride_dkh, stride_dkl, stride_dkd, stride_dvb, stride_dvh, stride_dvl, stride_dvd,
        H, L, qk_scale, sm_scale, dropout_p, drop_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_MASK: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """dK, dV for one key block, summed over every query block (padding queries included)."""
        pid_n, bh, off_b, off_h, seed = _program(H, SEED, HAS_DROPOUT)
        start_n = pid_n * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        col_ok = offs_n < L

        kv_len = _key_length(KV_LEN, off_b, L, HAS_MASK)
        key_ok = _real_keys(MASK, off_b, L, offs_n, col_ok, HAS_MASK)
        # A key block wholly past the last real token gets zero gradients without any work.
        m_end = tl.where(start_n < kv_len, L, 0)

        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
                    + offs_n[:, None] * stride_kl + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
                    + offs_n[:, None] * stride_vl + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
        do_base = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
        row_base = bh.to(tl.int64) * L

        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start_m in range(0, m_end, BLOCK_M):
            offs_m, q, do, lse, delta = _query_block(q_base, do_base, LSE, DELTA, row_base, start_m, L,
                                                     offs_d, d_ok, stride_ql, stride_qd, stride_dol, stride_dod,
                                                     BLOCK_M)
            s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
            s_t = tl.where(key_ok[:, None], s_t, float("-inf"))
            p_t = tl.math.exp2(s_t - lse[None, :])  # 0 for masked keys and rows past L (lse = +inf)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # dO V^T, transposed
            if HAS_DROPOUT:
                keep_t = _dropout_keep(seed, bh, offs_m[None, :], offs_n[:, None], L, dropout_p)
                pd_t = tl.where(keep_t, p_t * drop_scale, 0.0)
                dp_t = tl.where(keep_t, dp_t * drop_scale, 0.0)
            else:
                pd_t = p_t
            dv = tl.dot(pd_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)

        dk = dk * sm_scale
        tl.store(DK + off_b.to(tl.int64) * stride_dkb + off_h.to(tl.int64) * stride_dkh
                 + offs_n[:, None] * stride_dkl + offs_d[None, :] * stride_dkd, dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + off_b.to(tl.int64) * stride_dvb + off_h.to(tl.int64) * stride_dvh
                 + offs_n[:, None] * stride_dvl + offs_d[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=kv_mask)


    @triton.jit
    def _attn_bwd_dq_kernel(
        Q, K, V, DO, DQ, LSE, DELTA, MASK, KV_LEN, SEED,
        stride_qb, stride_qh, stride_ql, stride_qd, stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd, stride_dob, stride_doh, stride_dol, stride_dod,
        stride_dqb, stride_dqh, stride_dql, stride_dqd,
        H, L, qk_scale, sm_scale, dropout_p, drop_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_MASK: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """dQ for one query block, summed over the key blocks up to the last real token."""
        pid_m, bh, off_b, off_h, seed = _program(H, SEED, HAS_DROPOUT)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        offs_m, q, do, lse, delta = _query_block(
            Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh,
            DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh,
            LSE, DELTA, bh.to(tl.int64) * L, pid_m * BLOCK_M, L, offs_d, d_ok,
            stride_ql, stride_qd, stride_dol, stride_dod, BLOCK_M,
        )
        k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
        v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
        kv_len = _key_length(KV_LEN, off_b, L, HAS_MASK)

        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, kv_len, BLOCK_N):
            offs_n, k, v, s = _key_block(q, k_base, v_base, MASK, off_b, start_n, kv_len, L, offs_d, d_ok,
                                         stride_kl, stride_kd, stride_vl, stride_vd, qk_scale,
                                         HAS_MASK, DOT_PRECISION, BLOCK_N)  # s: (BLOCK_M, BLOCK_N)
            p = tl.math.exp2(s - lse[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            if HAS_DROPOUT:
                keep = _dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], L, dropout_p)
                dp = tl.where(keep, dp * drop_scale, 0.0)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)

        dq = dq * sm_scale
        q_mask = (offs_m < L)[:, None] & d_ok[None, :]
        tl.store(DQ + off_b.to(tl.int64) * stride_dqb + off_h.to(tl.int64) * stride_dqh
                 + offs_m[:, None] * stride_dql + offs_d[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty), mask=q_mask)


    @triton.jit
    def _dropout_mask_kernel(
        OUT, SEED, H, L, dropout_p,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Write the keep-mask the attention kernels use, as int8, into a contiguous (B, H, L, L)."""
        bh = tl.program_id(2)
        seed = tl.load(SEED)
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], L, dropout_p)
        ptrs = OUT + bh.to(tl.int64) * L * L + offs_m[:, None] * L + offs_n[None, :]
        tl.store(ptrs, keep.to(tl.int8), mask=(offs_m[:, None] < L) & (offs_n[None, :] < L))


    # ----------------------------------------------------------------------------- block configurations

    _DELTA_BLOCK_M = 64
    # Launch name (as `launches.launch` records it) -> its kernel: what mops.kernels.resources compiles.
    LAUNCHED_KERNELS = {
        "attention.fwd": _attn_fwd_kernel,
        "attention.delta": _attn_bwd_delta_kernel,
        "attention.dkdv": _attn_bwd_dkdv_kernel,
        "attention.dq": _attn_bwd_dq_kernel,
        "attention.dropout_mask": _dropout_mask_kernel,
    }
else:
    LAUNCHED_KERNELS = {}


def _launch(name: str, grid_rows: str, q: torch.Tensor, args: tuple, **constexprs) -> None:
    """Launch kernel `name` over (blocks of `grid_rows` along L, B * H) with the configuration
    `attention_blocks.launch_config` picks for q's device, dtype, head dim and length (see kernels/attention_blocks.py)."""
    B, H, L, D = q.shape
    launch_name = f"attention.{name}"

    def run(config: Config) -> None:
        grid = (triton.cdiv(L, getattr(config, grid_rows)), B * H)
        launch(launch_name, LAUNCHED_KERNELS[launch_name], grid, *args, **constexprs, **config.meta())

    run(config_for(name, q.device, q.dtype, D, L, run))


# ----------------------------------------------------------------------------- launchers


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())  # type: ignore[return-value]


def _common(q: torch.Tensor, mask: torch.Tensor | None, dropout_p: float) -> dict:
    D = q.shape[-1]
    return {
        "HEAD_DIM": D,
        "BLOCK_D": max(16, triton.next_power_of_2(D)),
        "HAS_MASK": mask is not None,
        "HAS_DROPOUT": dropout_p > 0.0,
        "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
    }


def _forward(q, k, v, mask, kv_len, sm_scale, dropout_p, seed):  # seed: (1,) int64 on q's device
    B, H, L, D = q.shape
    o = torch.empty_like(q)  # keeps q's layout: a transposed (B, L, H, D) view stays one
    lse = torch.empty((B * H, L), device=q.device, dtype=torch.float32)
    mask_arg = mask if mask is not None else lse  # never read without HAS_MASK
    kv_arg = kv_len if kv_len is not None else lse
    seed_arg = seed if seed is not None else lse  # never read without HAS_DROPOUT
    args = (
        q, k, v, o, lse, mask_arg, kv_arg, seed_arg,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        H, L, sm_scale * LOG2E, dropout_p, 1.0 / (1.0 - dropout_p),
    )
    _launch("fwd", "BLOCK_M", q, args, **_common(q, mask, dropout_p))
    return o, lse


def _backward(do, q, k, v, o, lse, mask, kv_len, sm_scale, dropout_p, seed):
    B, H, L, D = q.shape
    common = _common(q, mask, dropout_p)
    delta = torch.empty_like(lse)
    launch(
        "attention.delta", _attn_bwd_delta_kernel, (triton.cdiv(L, _DELTA_BLOCK_M), B * H),
        o, do, delta, *_strides(o), *_strides(do), H, L,
        HEAD_DIM=D, BLOCK_D=common["BLOCK_D"], BLOCK_M=_DELTA_BLOCK_M,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mask_arg = mask if mask is not None else lse
    kv_arg = kv_len if kv_len is not None else lse
    seed_arg = seed if seed is not None else lse
    tail = (H, L, sm_scale * LOG2E, sm_scale, dropout_p, 1.0 / (1.0 - dropout_p))
    in_strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    _launch(
        "dkdv", "BLOCK_N", q,
        (q, k, v, do, dk, dv, lse, delta, mask_arg, kv_arg, seed_arg, *in_strides, *_strides(dk), *_strides(dv),
         *tail),
        **common,
    )
    _launch(
        "dq", "BLOCK_M", q,
        (q, k, v, do, dq, lse, delta, mask_arg, kv_arg, seed_arg, *in_strides, *_strides(dq), *tail),
        **common,
    )
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, kv_len, sm_scale, dropout_p, seed):
        with autocast.off(q.device.type):
            o, lse = _forward(q, k, v, mask, kv_len, sm_scale, dropout_p, seed)
        ctx.save_for_backward(q, k, v, o, lse, mask, kv_len, seed)  # the seed tensor: the backward's mask
        ctx.sm_scale, ctx.dropout_p = sm_scale, dropout_p
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse, mask, kv_len, seed = ctx.saved_tensors
        with autocast.off(q.device.type):
            dq, dk, dv = _backward(do, q, k, v, o, lse, mask, kv_len, ctx.sm_scale, ctx.dropout_p, seed)
        return dq, dk, dv, None, None, None, None, None


# ----------------------------------------------------------------------------- entry points


def _check_inputs(q, k, v, attention_mask, dropout_p) -> None:
    if q.dim() != 4:
        raise ValueError(f"attention: q must be (B, H, L, D), got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"attention: q, k and v must have the same (B, H, L, D) shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(
            f"attention: q, k and v must share one dtype among float16, bfloat16, float32; "
            f"got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[2] * q.shape[2] >= 2**31:
        raise ValueError(f"attention: the Triton kernel supports sequences up to 46340 tokens, got {q.shape[2]}")
    if q.shape[-1] > 256:
        raise ValueError(f"attention: the Triton kernel supports head dims up to 256, got {q.shape[-1]}")
    if attention_mask is not None:
        if attention_mask.shape != (q.shape[0], q.shape[2]):
            raise ValueError(
                f"attention: attention_mask must be (B, L) = {(q.shape[0], q.shape[2])}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if attention_mask.device != q.device:
            raise ValueError(f"attention: attention_mask is on {attention_mask.device}, q on {q.device}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")


def _prepare_mask(attention_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(B, L) int32 0/1 mask and (B,) int32 key lengths (last real token + 1, 0 when none)."""
    if attention_mask is None:
        return None, None
    real = attention_mask != 0  # (B, L)
    L = real.shape[1]
    positions = torch.arange(1, L + 1, device=real.device, dtype=torch.int32)
    kv_len = (real.to(torch.int32) * positions).amax(dim=1).to(torch.int32).contiguous()  # (B,)
    return real.to(torch.int32).contiguous(), kv_len


def _draw_seed(device: torch.device | str) -> torch.Tensor:  # (1,) int64
    """A dropout seed drawn on `device` by its torch generator (so `torch.manual_seed` fixes it):
    nothing reaches the host, and under CUDA-graph replay each replay draws anew."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


def _seed_tensor(seed: int | torch.Tensor, device: torch.device) -> torch.Tensor:  # (1,) int64
    """The seed as the kernels read it; an int (tests) becomes a tensor on `device`."""
    if not isinstance(seed, torch.Tensor):
        return torch.tensor([int(seed)], dtype=torch.int64, device=device)
    device = torch.device(device)
    elsewhere = seed.device.type != device.type or device.index is not None and seed.device.index != device.index
    if seed.numel() != 1 or seed.dtype != torch.int64 or elsewhere:
        raise ValueError(f"attention: a dropout seed tensor must be one int64 on {device}, "
                         f"got {seed.dtype} of shape {tuple(seed.shape)} on {seed.device}")
    return seed.reshape(1)


def attention_with_seed(
    q: torch.Tensor,  # (B, H, L, D)
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None,  # (B, L)
    sm_scale: float | None,
    dropout_p: float,
    seed: int | torch.Tensor,  # an int, or (1,) int64 on q's device
) -> torch.Tensor:  # (B, H, L, D)
    """The Triton path with an explicit dropout seed, so a run's dropout mask can be named: the one
    `attention_dropout_mask` gives for the same seed (tests compare against it).

    Under autocast, q, k and v are cast as autocast casts them for the twin's SDPA (see
    kernels/autocast.py); their gradients come back in their own dtypes.
    """
    dtype = autocast.cast_dtype("attention", q.device.type)
    q, k, v = autocast.cast(dtype, q), autocast.cast(dtype, k), autocast.cast(dtype, v)
    _check_inputs(q, k, v, attention_mask, dropout_p)
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    mask, kv_len = _prepare_mask(attention_mask)
    seed = _seed_tensor(seed, q.device) if dropout_p > 0.0 else None
    return _FlashAttention.apply(q, k, v, mask, kv_len, scale, float(dropout_p), seed)


def attention_dropout_mask(seed: int | torch.Tensor, B: int, H: int, L: int, p: float, device) -> torch.Tensor:
    """The (B, H, L, L) bool keep-mask the kernels use for `seed` and rate `p`: the kernels never
    store it, so this is how tests see which probabilities `attention_with_seed` dropped."""
    out = torch.empty((B, H, L, L), dtype=torch.int8, device=device)
    block = 64
    launch(
        "attention.dropout_mask", _dropout_mask_kernel, (triton.cdiv(L, block), triton.cdiv(L, block), B * H),
        out, _seed_tensor(seed, torch.device(device)), H, L, float(p), BLOCK_M=block, BLOCK_N=block,
    )
    return out.bool()


def attention(
    q: torch.Tensor,  # (B, H, L, D)
    k: torch.Tensor,  # (B, H, L, D)
    v: torch.Tensor,  # (B, H, L, D)
    attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token, 0 = padding
    sm_scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:  # (B, H, L, D)
    """softmax(q k^T * scale, padding keys masked) v, with dropout on the probabilities.

    Rows whose every key is padding (a sequence with no real token) come out as 0. Under
    `torch.autocast` both paths compute in the autocast dtype, as SDPA does.
    """
    if resolve_backend(backend, q, op="attention") == "torch":
        return reference.attention(q, k, v, attention_mask, sm_scale, dropout_p)
    seed = _draw_seed(q.device) if dropout_p > 0.0 else None
    return attention_with_seed(q, k, v, attention_mask, sm_scale, dropout_p, seed)
