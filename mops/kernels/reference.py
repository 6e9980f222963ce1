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


def adamw_scalars(
    step: int | torch.Tensor,
    lr: float | torch.Tensor,
    *,
    count: int,
    beta1: float,
    beta2: float,
    weight_decay: float,
    correct_bias: bool,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(step sizes (count,), decay lr * weight_decay) of one AdamW step, float64, computed on `device`.

    `step` is this update's step count (1 for the first): an int, or a device tensor that is 0-d
    (shared) or holds one count per tensor. `lr` is a float or a 0-d device tensor. Nothing is
    read back to the host, so a CUDA graph that replays the step reads the counts and the rate
    of that replay. The arithmetic is float64, like the host's, so a count or rate that lives on
    the device gives the step size a host float would, rounded once to the tensors' precision.
    """
    if isinstance(step, torch.Tensor):
        if step.dim() > 1 or step.dim() == 1 and step.numel() != count:
            raise ValueError(f"adamw_step: step must be an int, a 0-d tensor or one count per tensor ({count}), "
                             f"got shape {tuple(step.shape)}")
        steps = step.to(device=device, dtype=torch.float64).expand(count)  # (T,)
    else:
        steps = torch.full((count,), float(step), dtype=torch.float64, device=device)  # (T,)
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"adamw_step: lr must be a float or a one-element tensor, got shape {tuple(lr.shape)}")
        lr = lr.to(device=device, dtype=torch.float64).reshape(())
    if correct_bias:
        sizes = lr * torch.sqrt(1.0 - torch.pow(beta2, steps)) / (1.0 - torch.pow(beta1, steps))
    else:
        sizes = torch.zeros_like(steps) + lr
    return sizes, (lr * weight_decay if weight_decay != 0.0 else 0.0)


@torch.no_grad()
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
) -> None:
    """One in-place AdamW step over many tensors that share hyper-parameters.

    Moments:      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    Step size:    lr * sqrt(1 - b2^t) / (1 - b1^t)   ("efficient" bias correction, Kingma & Ba)
    Update:       p -= step_size * m / (sqrt(v) + eps)
    Decay:        p -= lr * weight_decay * p          (decoupled, after the Adam update)

    `step` (t) and `lr` may be device tensors (see `adamw_scalars`): then nothing waits for the
    device, and the step can be captured in a CUDA graph.
    """
    if not params:
        return
    sizes, decay = adamw_scalars(step, lr, count=len(params), beta1=beta1, beta2=beta2,
                                 weight_decay=weight_decay, correct_bias=correct_bias, device=params[0].device)
    apply_adamw(params, grads, exp_avgs, exp_avg_sqs, sizes, decay, beta1=beta1, beta2=beta2, eps=eps)


@torch.no_grad()
def apply_adamw(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    step_sizes: torch.Tensor,  # (T,) float64, one per tensor
    decay: torch.Tensor | float,  # lr * weight_decay
    *,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """`adamw_step` with its step sizes and decay already computed (the Triton launcher's fallback)."""
    # Multi-tensor (foreach) ops: the same math, a handful of launches for the whole list.
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denominators, eps)
    # p + m / ((sqrt(v) + eps) / -step_size): each tensor's step size comes from the device, so it
    # divides the denominators (one small op per tensor) rather than being a host scalar.
    torch._foreach_div_(denominators, list((-step_sizes).unbind()))
    torch._foreach_addcdiv_(params, exp_avgs, denominators)
    if isinstance(decay, torch.Tensor) or decay != 0.0:
        torch._foreach_mul_(params, 1.0 - decay)
