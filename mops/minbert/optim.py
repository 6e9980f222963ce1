"""AdamW as the minBERT project describes it, one fused launch per group on CUDA.

Differences from `torch.optim.AdamW`, on purpose: the "efficient" bias correction folds both
corrections into the step size (so eps is not rescaled), and weight decay is applied after
the Adam update. With weight_decay=0 and a negligible eps the two coincide.

Capture-safe: each parameter's step count is a float32 tensor on its device (as in PyTorch's
capturable optimizers), advanced there, and the bias corrections are computed there; `lr` may be
a 0-d device tensor that the caller rewrites in place (a schedule). A step therefore never waits
for the device, and a CUDA graph that captured it advances the counts and reads the rate of each
replay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from mops import kernels


class AdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        backend: str = "auto",
    ) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError(f"lr must be a float or a one-element tensor, got shape {tuple(lr.shape)}")
        if not float(lr) >= 0.0:  # a tensor is read once, here
            raise ValueError(f"lr must be >= 0, got {float(lr)}")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for index, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{index}] must be in [0, 1), got {beta}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if backend not in kernels.BACKENDS:
            raise ValueError(f"backend must be one of {kernels.BACKENDS}, got {backend!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, defaults)
        self.backend = backend

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                for bucket, tensor in zip((params, grads, exp_avgs, exp_avg_sqs, steps),
                                          (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    bucket.append(tensor)
            if not params:
                continue
            torch._foreach_add_(steps, 1.0)
            beta1, beta2 = group["betas"]
            # One call for the group: each tensor brings its own count (tensors that skipped steps,
            # e.g. another task's head, are behind), so no host grouping by count is needed.
            kernels.adamw_step(
                params, grads, exp_avgs, exp_avg_sqs,
                step=torch.stack(steps), lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], correct_bias=group["correct_bias"], backend=self.backend,
            )
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Also takes checkpoints that kept the step count as an int, and puts every count on its
        parameter's device as float32."""
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device).reshape(())
