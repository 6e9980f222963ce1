"""Exact erf GELU of x + bias, BERT's feed-forward activation.

    u = x + bias;  y = u * Phi(u) = 0.5 u (1 + erf(u / sqrt 2))
    dy/du = Phi(u) + u phi(u),  phi(u) = exp(-u^2 / 2) / sqrt(2 pi)

All arithmetic in fp32 (`tl.math.erf` is fp32/fp64 only). The forward saves x, not u or y,
and the backward recomputes u. The grid tiles (rows, columns) so that a program loads its
slice of the bias once and needs no per-element modulo. dbias is reduced without atomics:
each backward program sums dx over a fixed run of row tiles into one row of a (G, N) fp32
buffer, then `layer_norm.sum_partials` adds the G rows in a fixed order: the same bits on
every run.
"""

from __future__ import annotations

import torch

from mops.kernels import autocast, reference, rowwise
from mops.kernels.dispatch import resolve_backend
from mops.kernels.launches import launch
from mops.kernels.layer_norm import sum_partials  # the fixed-order column sum both backward passes end with

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the torch path needs no Triton
    triton = None

# Columns one program covers at most: a wider row takes several column blocks.
MAX_BLOCK_N = 1024


if triton is not None:
    # Kernels may read module globals only when they are constexpr.
    _SQRT1_2 = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
    _INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)

    @triton.jit
    def _bias_gelu_fwd(
        X, BIAS, Y,  # X, Y: (M, N); BIAS: (N,)
        M, N,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        mask = (rows < M)[:, None] & col_ok[None, :]
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        b = tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)
        u = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) + b[None, :]
        y = 0.5 * u * (1.0 + tl.math.erf(u * _SQRT1_2))
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _bias_gelu_bwd(
        X, BIAS, DY, DX, Partial,  # Partial: (G, N) fp32
        M, N, num_tiles, tiles_per_program,
        STORE_DX: tl.constexpr, NEED_DBIAS: tl.constexpr,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        b = tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        first = pid * tiles_per_program
        last = tl.minimum(first + tiles_per_program, num_tiles)
        for tile in range(first, last):
            rows = tile * ROWS + tl.arange(0, ROWS)
            mask = (rows < M)[:, None] & col_ok[None, :]
            offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
            u = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) + b[None, :]
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            cdf = 0.5 * (1.0 + tl.math.erf(u * _SQRT1_2))
            pdf = tl.exp(-0.5 * u * u) * _INV_SQRT_2PI
            dx = dy * (cdf + u * pdf)
            if STORE_DX:
                tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
            if NEED_DBIAS:
                acc += tl.sum(dx, axis=0)  # masked entries have dy = 0
        if NEED_DBIAS:
            tl.store(Partial + pid.to(tl.int64) * N + cols, acc, mask=col_ok)

    # Launch name (as `launches.launch` records it) -> its kernel: what mops.kernels.resources compiles.
    LAUNCHED_KERNELS = {"bias_gelu.fwd": _bias_gelu_fwd, "bias_gelu.bwd": _bias_gelu_bwd}
else:
    LAUNCHED_KERNELS = {}


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    @autocast.disabled
    def forward(ctx, x, bias):
        width = x.shape[-1]
        x2 = x.reshape(-1, width).contiguous()  # (M, N)
        rows = x2.shape[0]
        bias_c = bias.contiguous()
        y = torch.empty((rows, width), dtype=torch.promote_types(x.dtype, bias.dtype), device=x.device)
        if y.numel() > 0:
            block_n, tile_rows, num_warps = rowwise.row_tile(width, MAX_BLOCK_N)
            grid = (triton.cdiv(rows, tile_rows), triton.cdiv(width, block_n))
            launch(
                "bias_gelu.fwd", _bias_gelu_fwd, grid,
                x2, bias_c, y, rows, width, ROWS=tile_rows, BLOCK_N=block_n, num_warps=num_warps,
            )
        ctx.save_for_backward(x2, bias_c)
        ctx.x_shape = x.shape
        ctx.x_dtype = x.dtype
        return y.view(x.shape)

    @staticmethod
    @autocast.disabled
    def backward(ctx, dy):
        x2, bias = ctx.saved_tensors
        rows, width = x2.shape
        need_dx, need_dbias = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dy2 = dy.reshape(rows, width).contiguous()
        dx = torch.empty((rows, width), dtype=ctx.x_dtype, device=x2.device) if need_dx else None
        dbias = None
        if x2.numel() > 0:
            block_n, tile_rows, num_warps = rowwise.row_tile(width, MAX_BLOCK_N)
            column_blocks = triton.cdiv(width, block_n)
            num_tiles = triton.cdiv(rows, tile_rows)
            programs, per_program = rowwise.backward_grid(num_tiles, x2.device, column_blocks)
            partial = torch.empty((programs, width), dtype=torch.float32, device=x2.device) if need_dbias else dy2
            launch(
                "bias_gelu.bwd", _bias_gelu_bwd, (programs, column_blocks),
                x2, bias, dy2, dx if dx is not None else dy2, partial,
                rows, width, num_tiles, per_program,
                STORE_DX=need_dx, NEED_DBIAS=need_dbias, ROWS=tile_rows, BLOCK_N=block_n, num_warps=num_warps,
            )
            if need_dbias:
                dbias = sum_partials(partial[None], bias.dtype)[0]  # fixed-order sum over the G partial rows
        elif need_dbias:
            dbias = torch.zeros_like(bias)
        return (dx.view(ctx.x_shape) if need_dx else None), dbias


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """GELU(x + bias) in the promoted dtype of x and bias, with or without autocast, as the twin
    (autocast has no policy for add or gelu: a bf16 activation plus an fp32 bias gives fp32)."""
    if resolve_backend(backend, x, op="bias_gelu") == "torch":
        return reference.bias_gelu(x, bias)
    if triton is None:
        raise RuntimeError("bias_gelu: backend='triton' needs the `triton` package")
    if x.dim() == 0 or bias.shape != (x.shape[-1],):
        raise ValueError(
            "bias_gelu: bias must have shape (N,) with N = x.shape[-1]; "
            f"got x {tuple(x.shape)}, bias {tuple(bias.shape)}"
        )
    if bias.device != x.device:
        raise ValueError(f"bias_gelu: bias is on {bias.device} but x is on {x.device}")
    dtype = autocast.cast_dtype("bias_gelu", x.device.type)  # None under every current policy
    return _BiasGelu.apply(autocast.cast(dtype, x), autocast.cast(dtype, bias))
