"""Attention forward + backward at BERT-base shapes: the Triton kernel against PyTorch's SDPA.

bf16, B 32, H 12, L 512, D 64; each sequence's real length is drawn uniformly from 50-100 % of
L, and both implementations get the same (B, L) padding mask (SDPA as a boolean (B, 1, 1, L)
attn_mask). q, k, v are transposed views of (B, L, H, D), as the model passes them. Run with
`pytest --benchmark`; interpreter timings on the CPU mean nothing, so there is no CPU case.

Recorded in extra_info:
  tflops          useful FLOP/s (1e12): real query rows against real keys only, i.e.
                  forward 4 * H * D * sum_b len_b^2 (QK^T and PV), backward 2.5x the forward
                  (five matmuls against two), recomputation not counted. Both implementations
                  are credited the same FLOPs, so the ratio of their tflops is their speed ratio.
  peak_mem_mib    torch.cuda.max_memory_allocated over one step, inputs included.
  peak_extra_mib  the same less the memory held before the step (inputs and upstream grad).
The target is Triton >= 1.3x SDPA's tflops.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import requires_cuda, synchronize
from mops.kernels.attention import attention

B, H, L, D = 32, 12, 512, 64


def _useful_flops(lengths: torch.Tensor) -> float:
    forward = 4.0 * H * D * float((lengths.double() ** 2).sum())
    return forward * 3.5  # forward + backward (2.5x)


def _sdpa(q, k, v, mask, dropout_p):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=dropout_p)


def _triton(q, k, v, mask, dropout_p):
    return attention(q, k, v, mask, dropout_p=dropout_p, backend="triton")


@requires_cuda
@pytest.mark.parametrize("dropout_p", [0.0, 0.1], ids=["p0", "p0.1"])
@pytest.mark.parametrize("impl", ["triton", "sdpa"])
def test_bench_attention_fwd_bwd(benchmark, impl, dropout_p):
    torch.manual_seed(0)
    device, dtype = "cuda", torch.bfloat16
    lengths = torch.randint(L // 2, L + 1, (B,))
    mask = (torch.arange(L)[None, :] < lengths[:, None]).to(device)  # (B, L) bool
    # leaves of shape (B, L, H, D); the timed step takes the (B, H, L, D) views the model passes
    leaves = [torch.randn(B, L, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
    do = torch.randn(B, H, L, D, device=device, dtype=dtype)
    fn = _triton if impl == "triton" else _sdpa

    def step():
        q, k, v = (t.transpose(1, 2) for t in leaves)
        out = fn(q, k, v, mask, dropout_p)
        torch.autograd.grad(out, leaves, do)
        synchronize()

    for _ in range(3):  # compile and autotune outside the timings
        step()
    synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    peak = torch.cuda.max_memory_allocated()

    benchmark.group = f"attention fwd+bwd bf16 B{B} H{H} L{L} D{D} dropout {dropout_p}"
    benchmark.pedantic(step, rounds=30, iterations=1, warmup_rounds=2)
    if benchmark.stats is None:  # --benchmark-disable: the step ran once, nothing was timed
        return
    mean_s = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        {
            "impl": impl,
            "shape": {"B": B, "H": H, "L": L, "D": D},
            "dtype": "bfloat16",
            "dropout_p": dropout_p,
            "real_tokens_fraction": float(lengths.sum()) / (B * L),
            "flops_counted": "useful: real queries x real keys, fwd 4*H*D*sum(len^2), bwd 2.5x fwd",
            "tflops": _useful_flops(lengths) / mean_s / 1e12,
            "peak_mem_mib": peak / 2**20,
            "peak_extra_mib": (peak - before) / 2**20,
        }
    )
