"""PyTorch twins of every kernel: same signatures, plain PyTorch, the reference path.

The model uses these on the CPU (backend "torch"); the kernel tests measure the Triton
kernels against them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor,  # (B, H, L, D)
    k: torch.Tensor,  # (B, H, L, D)
    v: torch.Tensor,  # (B, H, L, D)
    attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token, 0 = padding
    sm_scale: float | None = None,
    dropout_p: float = 0.0,
    dropout_mask: torch.Tensor | None = None,  # (B, H, L, L) bool keep-mask, for tests
) -> torch.Tensor:  # (B, H, L, D)
    """softmax(q k^T * scale + mask) v, with dropout on the probabilities as BERT trains it.

    Without an explicit `dropout_mask` this is PyTorch's fused SDPA; with one it is the
    plain math, so a test can feed the exact mask a kernel used.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    key_keep = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (B, 1, 1, L)
    if dropout_mask is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_keep, dropout_p=dropout_p, scale=scale)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, L, L)
    if key_keep is not None:
        scores = scores.masked_fill(~key_keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no real key attends to nothing
    probs = probs * dropout_mask / (1.0 - dropout_p)
    return torch.matmul(probs, v.float()).to(q.dtype)


def layer_norm(
    x: torch.Tensor,  # (..., N)
    weight: torch.Tensor,  # (N,)
    bias: torch.Tensor,  # (N,)
    eps: float,
    residual: torch.Tensor | None = None,  # (..., N), added to x before normalising
) -> torch.Tensor:
    """LayerNorm(x + residual): BERT's add & norm in one call."""
    h = x if residual is None else x + residual
    return F.layer_norm(h, h.shape[-1:], weight, bias, eps)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU of x + bias, as BERT's feed-forward uses it."""
    return F.gelu(x + bias)


@torch.no_grad()
def adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    correct_bias: bool,
) -> None:
    """One in-place AdamW step over many tensors that share hyper-parameters and a step count.

    Moments:      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    Step size:    lr * sqrt(1 - b2^t) / (1 - b1^t)   ("efficient" bias correction, Kingma & Ba)
    Update:       p -= step_size * m / (sqrt(v) + eps)
    Decay:        p -= lr * weight_decay * p          (decoupled, after the Adam update)
    """
    step_size = lr
    if correct_bias:
        step_size = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
    # Multi-tensor (foreach) ops: the same math, a handful of launches for the whole list.
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denominators, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-step_size)
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
