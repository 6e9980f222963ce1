"""LayerNorm over the last dimension of x + residual (BERT's add & norm), fp32 statistics.

Forward (one program per tile of ROWS rows, the whole row in registers):
    h = x + residual;  mean, rstd = stats(h);  y = (h - mean) * rstd * w + b
    The (M,) fp32 mean and rstd are saved for the backward; h is not stored: the backward
    reads x and residual again. Over forward + backward that moves as many bytes as writing
    and re-reading h, the forward alone (inference) writes one (M, N) tensor less, and the
    memory held between the passes is x instead of h (in BERT the residual is the input of
    a linear layer, which keeps it alive anyway).

Backward (a fixed grid of G programs, about two per SM, each walking a fixed run of row tiles):
    xhat = (h - mean) * rstd;  g = w * dy
    dx = rstd * (g - xhat * mean(g * xhat) - mean(g))      (d residual is the same tensor)
    Each program sums dy * xhat and dy over its own rows into one row of a (2, G, N) fp32
    buffer; a second kernel sums over G in a fixed order and writes dweight and dbias in the
    weight's dtype. No atomics, so the same inputs give the same bits on every run.

A residual may broadcast over leading dimensions (BERT's position embeddings, (L, N)
against (B, L, N)): row r of the flattened input then reads residual row r % R.
"""

from __future__ import annotations

import torch

from mops.kernels import autocast, reference, rowwise
from mops.kernels.dispatch import resolve_backend
from mops.kernels.launches import launch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the torch path needs no Triton
    triton = None

# Widest row the kernels accept, and so their widest block: a row lives in one program's
# registers. Up to 8192 it fits (on sm_90, at most a few spilled bytes); 16384 runs correctly
# but spills.
MAX_WIDTH = 16384
# The blocks `sum_partials` launches with on a GPU (see its docstring for why).
SUM_PARTIALS_GPU_BLOCKS = {"BLOCK_G": 256, "BLOCK_C": 16}


if triton is not None:

    @triton.jit
    def _layer_norm_fwd(
        X, R, W, B, Y, Mean, Rstd,  # X, Y: (M, N); R: (R_ROWS, N); W, B: (N,); Mean, Rstd: (M,) fp32
        M, N, R_ROWS, eps,
        HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
        cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        row_ok = rows < M
        col_ok = cols < N
        mask = row_ok[:, None] & col_ok[None, :]  # (ROWS, BLOCK_N)
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        h = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            r_offs = (rows % R_ROWS).to(tl.int64)[:, None] * N + cols[None, :]
            h += tl.load(R + r_offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(h, axis=1) / N  # (ROWS,)
        centred = tl.where(mask, h - mean[:, None], 0.0)
        var = tl.sum(centred * centred, axis=1) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = centred * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(Mean + rows, mean, mask=row_ok)
        tl.store(Rstd + rows, rstd, mask=row_ok)

    @triton.jit
    def _layer_norm_bwd(
        X, R, W, DY, DX, Mean, Rstd, Partial,  # Partial: (2, G, N) fp32, [0] for dweight, [1] for dbias
        M, N, R_ROWS, G, num_tiles, tiles_per_program,
        HAS_RES: tl.constexpr, STORE_DX: tl.constexpr, NEED_DWDB: tl.constexpr,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < N
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        first = pid * tiles_per_program
        last = tl.minimum(first + tiles_per_program, num_tiles)
        for tile in range(first, last):
            rows = tile * ROWS + tl.arange(0, ROWS)
            row_ok = rows < M
            mask = row_ok[:, None] & col_ok[None, :]
            offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
            h = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_RES:
                r_offs = (rows % R_ROWS).to(tl.int64)[:, None] * N + cols[None, :]
                h += tl.load(R + r_offs, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
            rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
            if STORE_DX:
                wdy = w[None, :] * dy
                c1 = tl.sum(xhat * wdy, axis=1) / N
                c2 = tl.sum(wdy, axis=1) / N
                dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
                tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
            if NEED_DWDB:
                dw_acc += tl.sum(dy * xhat, axis=0)
                db_acc += tl.sum(dy, axis=0)
        if NEED_DWDB:
            p_offs = pid.to(tl.int64) * N + cols
            tl.store(Partial + p_offs, dw_acc, mask=col_ok)
            tl.store(Partial + G * N + p_offs, db_acc, mask=col_ok)

    @triton.jit
    def _sum_partials(
        Partial, Out,  # Partial: (K, G, N) fp32; Out: (K, N) in the parameter's dtype
        G, N,
        BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # Out[k] = sum over g of Partial[k, g], in one fixed order (tile by tile, then a tree).
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        k = tl.program_id(1).to(tl.int64)
        col_ok = cols < N
        base = Partial + k * G * N
        acc = tl.zeros([BLOCK_G, BLOCK_C], dtype=tl.float32)
        for g0 in range(0, G, BLOCK_G):
            gs = g0 + tl.arange(0, BLOCK_G)
            mask = (gs < G)[:, None] & col_ok[None, :]
            acc += tl.load(base + gs.to(tl.int64)[:, None] * N + cols[None, :], mask=mask, other=0.0)
        tl.store(Out + k * N + cols, tl.sum(acc, axis=0).to(Out.dtype.element_ty), mask=col_ok)

    # Launch name (as `launches.launch` records it) -> its kernel: what mops.kernels.resources compiles.
    LAUNCHED_KERNELS = {"layer_norm.fwd": _layer_norm_fwd, "layer_norm.bwd": _layer_norm_bwd,
                        "sum_partials": _sum_partials}
else:
    LAUNCHED_KERNELS = {}


def sum_partials(partial: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(K, G, N) fp32 partial sums -> (K, N) totals in `dtype`, the same bits on every run.

    On a GPU, narrow column blocks give ~100 programs for BERT's widths, so the few MB of
    partial sums are read by most of the GPU at once rather than by a handful of programs.
    The interpreter runs programs one after another, so there a few wide ones are faster.
    """
    slabs, programs, width = partial.shape
    out = torch.empty((slabs, width), dtype=dtype, device=partial.device)
    if partial.is_cuda:
        blocks = SUM_PARTIALS_GPU_BLOCKS
    else:
        blocks = {"BLOCK_G": triton.next_power_of_2(min(programs, 64)),
                  "BLOCK_C": min(1024, triton.next_power_of_2(width))}
    launch(
        "sum_partials", _sum_partials, (triton.cdiv(width, blocks["BLOCK_C"]), slabs),
        partial, out, programs, width, **blocks, num_warps=4,
    )
    return out


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None) -> None:
    if triton is None:
        raise RuntimeError("layer_norm: backend='triton' needs the `triton` package")
    if x.dim() == 0:
        raise ValueError("layer_norm: x must have at least one dimension (the normalised width)")
    width = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None or t.shape != (width,):
            got = None if t is None else tuple(t.shape)
            raise ValueError(f"layer_norm: {name} must have shape ({width},) to match x's last dimension, got {got}")
        if t.device != x.device:
            raise ValueError(f"layer_norm: {name} is on {t.device} but x is on {x.device}")
    if residual is not None and residual.device != x.device:
        raise ValueError(f"layer_norm: residual is on {residual.device} but x is on {x.device}")
    if width > MAX_WIDTH:
        raise ValueError(
            f"layer_norm: the Triton kernel keeps a row in registers and supports widths up to {MAX_WIDTH}, "
            f"got {width}; use backend='torch'"
        )


def _split_residual(x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Bring x and residual to one shape. Returns (x, residual, rows_broadcast).

    A residual equal in shape to x, or matching x's trailing dimensions (leading ones
    broadcast), is read in place by the kernels; any other broadcast is expanded here
    (autograd then sums its gradient).
    """
    shape = torch.broadcast_shapes(x.shape, residual.shape)
    if x.shape != shape:
        x = x.expand(shape)
    if residual.shape == shape:
        return x, residual, False
    trailing = list(residual.shape)
    while trailing and trailing[0] == 1:
        trailing.pop(0)
    if trailing and tuple(shape[len(shape) - len(trailing):]) == tuple(trailing):
        return x, residual, True
    return x, residual.expand(shape), False


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    @autocast.disabled
    def forward(ctx, x, weight, bias, residual, eps, rows_broadcast, out_dtype):
        width = x.shape[-1]
        x2 = x.reshape(-1, width).contiguous()  # (M, N)
        rows = x2.shape[0]
        if out_dtype is None:
            out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
        if residual is not None:
            r2 = residual.reshape(-1, width).contiguous()  # (R, N), R == M unless rows_broadcast
        else:
            r2 = None
        y = torch.empty((rows, width), dtype=out_dtype, device=x.device)
        mean = torch.empty(rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        if rows > 0:
            block_n, tile_rows, num_warps = rowwise.row_tile(width, MAX_WIDTH)
            grid = (triton.cdiv(rows, tile_rows),)
            launch(
                "layer_norm.fwd", _layer_norm_fwd, grid,
                x2, r2 if r2 is not None else x2, weight.contiguous(), bias.contiguous(), y, mean, rstd,
                rows, width, r2.shape[0] if r2 is not None else 1, eps,
                HAS_RES=r2 is not None, ROWS=tile_rows, BLOCK_N=block_n, num_warps=num_warps,
            )
        ctx.save_for_backward(x2, r2, weight, mean, rstd)
        ctx.x_shape = x.shape
        ctx.x_dtype = x.dtype
        ctx.bias_dtype = bias.dtype
        ctx.res_shape = None if residual is None else residual.shape
        ctx.res_dtype = None if residual is None else residual.dtype
        ctx.rows_broadcast = rows_broadcast
        return y.view(x.shape)

    @staticmethod
    @autocast.disabled
    def backward(ctx, dy):
        x2, r2, weight, mean, rstd = ctx.saved_tensors
        rows, width = x2.shape
        need_dx = ctx.needs_input_grad[0] or ctx.needs_input_grad[3]
        need_dwdb = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        dy2 = dy.reshape(rows, width).contiguous()
        dx = torch.empty((rows, width), dtype=dy2.dtype, device=dy2.device) if need_dx else None
        block_n, tile_rows, num_warps = rowwise.row_tile(width, MAX_WIDTH)
        num_tiles = triton.cdiv(rows, tile_rows)
        dweight = dbias = None
        if rows > 0 and (need_dx or need_dwdb):
            programs, per_program = rowwise.backward_grid(num_tiles, x2.device)
            partial = torch.empty((2, programs, width), dtype=torch.float32, device=x2.device) if need_dwdb else mean
            launch(
                "layer_norm.bwd", _layer_norm_bwd, (programs,),
                x2, r2 if r2 is not None else x2, weight.contiguous(), dy2, dx if dx is not None else dy2,
                mean, rstd, partial,
                rows, width, r2.shape[0] if r2 is not None else 1, programs, num_tiles, per_program,
                HAS_RES=r2 is not None, STORE_DX=need_dx, NEED_DWDB=need_dwdb,
                ROWS=tile_rows, BLOCK_N=block_n, num_warps=num_warps,
            )
            if need_dwdb:
                dweight, dbias = sum_partials(partial, weight.dtype)  # (2, N) -> two (N,) views
                dbias = dbias.to(ctx.bias_dtype)
        elif need_dwdb:
            dweight = torch.zeros_like(weight)
            dbias = torch.zeros_like(weight, dtype=ctx.bias_dtype)
        if need_dwdb and not ctx.needs_input_grad[1]:
            dweight = None
        if need_dwdb and not ctx.needs_input_grad[2]:
            dbias = None
        dx_out = dres = None
        if need_dx:
            if ctx.needs_input_grad[0]:
                dx_out = dx.view(ctx.x_shape).to(ctx.x_dtype)
            if ctx.needs_input_grad[3]:
                if ctx.rows_broadcast:
                    r_rows = r2.shape[0]
                    dres = dx.view(rows // r_rows, r_rows, width).sum(dim=0).view(ctx.res_shape)
                else:
                    dres = dx.view(ctx.res_shape)
                dres = dres.to(ctx.res_dtype)
        return dx_out, dweight, dbias, dres, None, None, None


def layer_norm(
    x: torch.Tensor,  # (..., N)
    weight: torch.Tensor,  # (N,)
    bias: torch.Tensor,  # (N,)
    eps: float,
    residual: torch.Tensor | None = None,  # (..., N)
    backend: str = "auto",
) -> torch.Tensor:
    """LayerNorm(x + residual) over the last dimension; under autocast with the twin's dtypes
    (on CUDA an fp32 output and fp32 weights, as autocast runs layer_norm; see kernels/autocast.py)."""
    if resolve_backend(backend, x, op="layer_norm") == "torch":
        return reference.layer_norm(x, weight, bias, eps, residual)
    _check(x, weight, bias, residual)
    dtype = autocast.cast_dtype("layer_norm", x.device.type)
    weight, bias = autocast.cast(dtype, weight), autocast.cast(dtype, bias)
    if dtype is not None and dtype != torch.float32:  # narrowing: round the inputs as the twin's cast would
        x, residual = autocast.cast(dtype, x), autocast.cast(dtype, residual)
    # Widening to float32 needs no copy of x and residual: the kernels read them in their own
    # dtype and add them in fp32 anyway. Only the output dtype changes.
    rows_broadcast = False
    if residual is not None:
        x, residual, rows_broadcast = _split_residual(x, residual)
    return _LayerNorm.apply(x, weight, bias, residual, float(eps), rows_broadcast, dtype)
