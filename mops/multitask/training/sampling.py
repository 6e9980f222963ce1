"""Which task trains at each step: round-robin, proportional to data size, or annealed.

The choice at a step is a pure function of (seed, step, progress), so a resumed run picks
exactly the tasks the uninterrupted run would have picked, with no sampler state to save.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

SAMPLINGS = ("round_robin", "proportional", "annealed")


def task_weights(sizes: Sequence[int], sampling: str, progress: float) -> list[float]:
    """Sampling weights over tasks; `progress` in [0, 1] is the fraction of training done.

    `annealed` follows "BERT and PALs": p_i ∝ n_i^alpha with alpha = 1 - 0.8 * progress, so
    sampling starts proportional to data size and moves towards uniform.
    """
    if sampling == "round_robin":
        return [1.0 / len(sizes)] * len(sizes)  # uniform on average, in a fixed cycle
    if sampling == "proportional":
        alpha = 1.0
    elif sampling == "annealed":
        alpha = 1.0 - 0.8 * min(max(progress, 0.0), 1.0)
    else:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}; got {sampling!r}")
    raw = [size**alpha for size in sizes]
    total = sum(raw)
    return [w / total for w in raw]


def task_at_step(step: int, sizes: Sequence[int], sampling: str, seed: int, progress: float) -> int:
    """Index of the task that trains at `step` (0-based); an unknown sampling fails in task_weights."""
    if not sizes or any(size <= 0 for size in sizes):
        raise ValueError(f"every task needs training examples; sizes {list(sizes)}")
    if sampling == "round_robin":
        return step % len(sizes)
    weights = task_weights(sizes, sampling, progress)
    draw = random.Random(seed * 1_000_003 + step).random()
    cumulative = 0.0
    for index, weight in enumerate(weights):
        cumulative += weight
        if draw < cumulative:
            return index
    return len(sizes) - 1
