"""One AdamW step over BERT-base's parameters (fp32, ~110M elements in ~200 tensors).

Entries: triton (kernels.adamw_step: one launch for every tensor), torch (the PyTorch twin:
a loop of in-place ops per tensor), torch-fused (torch.optim.AdamW(fused=True), a different
bias-correction and decay order but the same traffic, for context). Recorded in extra_info:
`GB/s` = moved_bytes / median time, where per element a step reads p, g, m, v and writes
p, m, v in fp32 (28 bytes), the same count for every entry; `peak_extra_bytes`, the peak
allocation over one step less what was held before it (the twin's sqrt(v) temporaries).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import peak_extra_bytes, requires_cuda, synchronize
from mops import kernels

ROUNDS, WARMUP = 30, 5
HYPER = dict(lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, correct_bias=True)


def bert_base_shapes(layers: int = 12, hidden: int = 768, intermediate: int = 3072) -> list[tuple[int, ...]]:
    shapes = [(30522, hidden), (512, hidden), (2, hidden), (hidden,), (hidden,)]  # embeddings + LayerNorm
    per_layer = [
        (hidden, hidden), (hidden,), (hidden, hidden), (hidden,), (hidden, hidden), (hidden,),  # q, k, v
        (hidden, hidden), (hidden,), (hidden,), (hidden,),  # attention output, LayerNorm
        (intermediate, hidden), (intermediate,), (hidden, intermediate), (hidden,), (hidden,), (hidden,),  # FFN
    ]
    return shapes + per_layer * layers + [(hidden, hidden), (hidden,)]  # pooler


def step_bytes(numel: int) -> int:
    """Read p, g, m, v; write p, m, v: 7 fp32 values per element."""
    return 7 * 4 * numel



@requires_cuda
@pytest.mark.parametrize("impl", ["triton", "torch", "torch-fused"])
def test_adamw_step_bert_base(benchmark, impl):
    g = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.randn(s, device="cuda", generator=g) * 0.02 for s in bert_base_shapes()]
    grads = [torch.randn(p.shape, device="cuda", generator=g) * 1e-3 for p in params]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    numel = sum(p.numel() for p in params)
    counter = {"step": 0}

    if impl == "torch-fused":
        leaves = [torch.nn.Parameter(p) for p in params]
        for leaf, grad in zip(leaves, grads):
            leaf.grad = grad
        opt = torch.optim.AdamW(leaves, lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"],
                                weight_decay=HYPER["weight_decay"], fused=True)

        def step():
            opt.step()
            synchronize()
    else:

        def step():
            counter["step"] += 1
            kernels.adamw_step(params, grads, exp_avgs, exp_avg_sqs, step=counter["step"], backend=impl, **HYPER)
            synchronize()

    step()  # compile / allocate state
    benchmark.group = "adamw step fp32 bert-base"
    benchmark.extra_info.update(impl=impl, tensors=len(params), elements=numel, moved_bytes=step_bytes(numel))
    benchmark.extra_info["peak_extra_bytes"] = peak_extra_bytes(step)
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    benchmark.extra_info["GB/s"] = round(step_bytes(numel) / benchmark.stats.stats.median / 1e9, 1)
