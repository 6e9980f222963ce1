"""Task sampling: round-robin, proportional and annealed choices, and their resume-safe purity."""

from __future__ import annotations

import math
import random

import pytest

from mops.multitask.training.sampling import SAMPLINGS, task_at_step, task_weights

SIZES = [100, 300, 600]
STEPS = 20_000


def frequencies(sizes: list[int], sampling: str, progress: float, seed: int = 0, steps: int = STEPS) -> list[float]:
    counts = [0] * len(sizes)
    for step in range(steps):
        counts[task_at_step(step, sizes, sampling, seed, progress)] += 1
    return [count / steps for count in counts]


def assert_matches(observed: list[float], weights: list[float], steps: int = STEPS) -> None:
    """Observed frequencies within 5 binomial standard deviations of the weights."""
    for index, (seen, p) in enumerate(zip(observed, weights)):
        bound = 5 * math.sqrt(p * (1 - p) / steps)
        assert abs(seen - p) <= bound, f"task {index}: frequency {seen:.4f}, expected {p:.4f} +- {bound:.4f}"


def test_round_robin_cycles_through_the_tasks_in_order():
    picks = [task_at_step(step, [5, 1, 9], "round_robin", seed=3, progress=0.7) for step in range(7)]
    assert picks == [0, 1, 2, 0, 1, 2, 0]


def test_proportional_weights_are_the_data_shares():
    assert task_weights(SIZES, "proportional", 0.5) == pytest.approx([0.1, 0.3, 0.6])


def test_proportional_sampling_frequencies_match_the_data_sizes():
    assert_matches(frequencies(SIZES, "proportional", 0.0), [0.1, 0.3, 0.6])


def test_proportional_sampling_ignores_progress():
    picks = [task_at_step(step, SIZES, "proportional", 0, 0.0) for step in range(200)]
    assert picks == [task_at_step(step, SIZES, "proportional", 0, 0.9) for step in range(200)]


def test_annealed_weights_start_proportional():
    assert task_weights(SIZES, "annealed", 0.0) == pytest.approx(task_weights(SIZES, "proportional", 0.0))


@pytest.mark.parametrize("progress, alpha", [(0.0, 1.0), (0.25, 0.8), (0.5, 0.6), (1.0, 0.2)])
def test_annealed_weights_follow_size_to_the_power_alpha(progress, alpha):
    raw = [size**alpha for size in SIZES]
    assert task_weights(SIZES, "annealed", progress) == pytest.approx([w / sum(raw) for w in raw])


def test_annealed_weights_move_towards_uniform():
    sizes = [10, 10_000]
    spreads = [max(w) / min(w) for w in (task_weights(sizes, "annealed", p / 10) for p in range(11))]
    assert all(later < earlier for earlier, later in zip(spreads, spreads[1:]))
    assert spreads[0] == pytest.approx(1000)
    assert spreads[-1] == pytest.approx(1000**0.2)  # about 4: near uniform against 1000 to 1


def test_annealed_progress_is_clamped_to_the_run():
    assert task_weights(SIZES, "annealed", 1.5) == task_weights(SIZES, "annealed", 1.0)
    assert task_weights(SIZES, "annealed", -0.5) == task_weights(SIZES, "annealed", 0.0)


def test_annealed_sampling_at_the_start_picks_what_proportional_picks():
    picks = [task_at_step(step, SIZES, "annealed", 4, 0.0) for step in range(500)]
    assert picks == [task_at_step(step, SIZES, "proportional", 4, 0.0) for step in range(500)]


def test_annealed_sampling_frequencies_at_the_end_match_the_flattened_weights():
    assert_matches(frequencies(SIZES, "annealed", 1.0, seed=1), task_weights(SIZES, "annealed", 1.0))


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_the_task_at_a_step_is_the_same_however_the_run_got_there(sampling):
    # A resumed run asks for steps 300.. only, possibly after other random draws.
    whole = [task_at_step(step, SIZES, sampling, 7, step / 600) for step in range(600)]
    random.seed(12345)
    random.random()
    resumed = [task_at_step(step, SIZES, sampling, 7, step / 600) for step in range(300, 600)]
    assert resumed == whole[300:]
    assert [task_at_step(step, SIZES, sampling, 7, step / 600) for step in reversed(range(600))] == whole[::-1]


def test_the_seed_changes_the_random_choices():
    first = [task_at_step(step, SIZES, "proportional", 0, 0.0) for step in range(200)]
    assert first != [task_at_step(step, SIZES, "proportional", 1, 0.0) for step in range(200)]


@pytest.mark.parametrize("call", [
    lambda: task_at_step(0, SIZES, "uniform", 0, 0.0),
    lambda: task_weights(SIZES, "uniform", 0.0),
])  # fmt: skip
def test_an_unknown_sampling_is_refused(call):
    with pytest.raises(ValueError, match="sampling must be one of"):
        call()


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_a_task_without_training_examples_is_refused(sampling):
    with pytest.raises(ValueError, match="every task needs training examples"):
        task_at_step(0, [10, 0, 5], sampling, 0, 0.0)


def test_round_robin_weights_are_uniform():
    assert task_weights([10, 30, 60], "round_robin", 0.5) == [1 / 3, 1 / 3, 1 / 3]
