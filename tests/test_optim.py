"""minBERT's AdamW: a hand-worked trajectory, agreement with torch.optim.AdamW where the math
coincides, and the arguments it refuses."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from mops.minbert import AdamW


def _hand_adamw(p, grads, lr, b1, b2, eps, wd, correct_bias=True):
    """The update rule written out in scalars, step by step."""
    m = v = 0.0
    trajectory = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t) if correct_bias else lr
        p = p - step_size * m / (math.sqrt(v) + eps)
        p = p - lr * wd * p
        trajectory.append(p)
    return trajectory


@pytest.mark.parametrize("correct_bias", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_matches_hand_computed_trajectory(correct_bias, weight_decay):
    grads = [0.5, -1.5, 2.0, 0.25]
    lr, b1, b2, eps = 0.1, 0.9, 0.99, 1e-6
    expected = _hand_adamw(1.0, grads, lr, b1, b2, eps, weight_decay, correct_bias)
    param = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = AdamW([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
    for g, want in zip(grads, expected):
        param.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert param.item() == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_first_step_by_hand():
    """Step 1 with bias correction moves each weight by lr * sign(g) (up to eps), then decays it."""
    param = torch.nn.Parameter(torch.tensor([2.0, -3.0], dtype=torch.float64))
    param.grad = torch.tensor([4.0, -0.5], dtype=torch.float64)
    AdamW([param], lr=0.01, eps=0.0, weight_decay=0.5).step()
    # 2.0 - 0.01 = 1.99, then * (1 - 0.01 * 0.5); -3.0 + 0.01 = -2.99, then the same decay
    assert param.tolist() == pytest.approx([1.99 * 0.995, -2.99 * 0.995], rel=1e-12)


def test_agrees_with_torch_adamw_without_decay():
    """With weight_decay=0 and eps=0, both bias corrections give the same update (they differ
    only in whether eps is scaled by sqrt(1 - beta2**t))."""
    torch.manual_seed(0)
    ours = torch.nn.Linear(7, 5).double()
    theirs = torch.nn.Linear(7, 5).double()
    theirs.load_state_dict(ours.state_dict())
    opt_ours = AdamW(ours.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=0.0, weight_decay=0.0)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=0.0, weight_decay=0.0)
    for step in range(10):
        x = torch.randn(16, 7, dtype=torch.float64)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_decoupled_decay_differs_from_torch_in_the_documented_way():
    """torch decays before the update, minBERT after: the gap is lr * wd * update."""
    ours = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    theirs = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    ours.grad = torch.tensor([1.0], dtype=torch.float64)
    theirs.grad = ours.grad.clone()
    AdamW([ours], lr=0.1, eps=0.0, weight_decay=0.5).step()
    torch.optim.AdamW([theirs], lr=0.1, eps=0.0, weight_decay=0.5).step()
    update = 0.1  # first step moves by lr
    assert ours.item() == pytest.approx((1.0 - update) * (1 - 0.05))
    assert theirs.item() == pytest.approx(1.0 * (1 - 0.05) - update)


def test_frozen_and_gradless_parameters_get_no_state():
    trained = torch.nn.Parameter(torch.ones(3))
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    unused = torch.nn.Parameter(torch.ones(3))
    opt = AdamW([trained, frozen, unused], lr=0.1)
    trained.grad = torch.ones(3)
    opt.step()
    assert set(opt.state) == {trained}
    assert torch.equal(frozen, torch.ones(3)) and torch.equal(unused, torch.ones(3))
    assert opt.state[trained]["step"] == 1


def three_steps_and_a_fresh_twin(seed: int) -> tuple[torch.nn.Parameter, AdamW, torch.nn.Parameter, AdamW]:
    """A parameter after three AdamW steps with its optimizer, and a copy of it with a fresh optimizer."""
    torch.manual_seed(seed)
    a = torch.nn.Parameter(torch.randn(4))
    opt = AdamW([a], lr=0.05, weight_decay=0.01)
    for _ in range(3):
        a.grad = torch.randn(4)
        opt.step()
    b = torch.nn.Parameter(a.detach().clone())
    return a, opt, b, AdamW([b], lr=0.05, weight_decay=0.01)


def assert_next_steps_equal(a: torch.nn.Parameter, opt: AdamW, b: torch.nn.Parameter, restored: AdamW) -> None:
    grad = torch.randn(4)
    a.grad, b.grad = grad, grad.clone()
    opt.step()
    restored.step()
    assert torch.equal(a, b)


def test_state_dict_round_trip_resumes_identically():
    a, opt, b, restored = three_steps_and_a_fresh_twin(seed=0)
    saved = io.BytesIO()  # through bytes, as a checkpoint on disk would be
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    restored.load_state_dict(torch.load(saved))
    assert_next_steps_equal(a, opt, b, restored)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1.0), "lr"),
        (dict(betas=(1.0, 0.999)), r"betas\[0\]"),
        (dict(betas=(0.9, -0.1)), r"betas\[1\]"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_invalid_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdamW([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_default_eps_is_1e_6():
    opt = AdamW([torch.nn.Parameter(torch.ones(1))])
    assert opt.defaults["eps"] == 1e-6 and opt.defaults["correct_bias"] is True


# ----------------------------------------------------------------------------- capture-safe state


def test_each_count_lives_on_the_device_and_a_parameter_that_skips_steps_keeps_its_own():
    """Two parameters in one group, the second without a gradient at step 2: after four steps
    their counts are 4 and 3 (float32 tensors beside the parameters), and each follows the
    hand-worked trajectory of its own gradients."""
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.99, 1e-6, 0.05
    a = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = AdamW([a, b], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    grads_a, grads_b = [0.5, -1.5, 2.0, 0.25], [0.3, None, -0.7, 1.1]
    for ga, gb in zip(grads_a, grads_b):
        a.grad = torch.tensor([ga], dtype=torch.float64)
        b.grad = None if gb is None else torch.tensor([gb], dtype=torch.float64)
        opt.step()
    for p, count in ((a, 4), (b, 3)):
        step = opt.state[p]["step"]
        assert isinstance(step, torch.Tensor) and step.dtype == torch.float32 and step.device == p.device
        assert step.item() == count
    assert a.item() == pytest.approx(_hand_adamw(1.0, grads_a, lr, b1, b2, eps, wd)[-1], rel=1e-12, abs=1e-15)
    assert b.item() == pytest.approx(_hand_adamw(1.0, [0.3, -0.7, 1.1], lr, b1, b2, eps, wd)[-1], rel=1e-12, abs=1e-15)


def test_a_rate_tensor_rewritten_in_place_gives_the_steps_of_host_rates():
    """The schedule writes the rate into one device tensor; the steps are those of host floats."""
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(5, 3))
    theirs = torch.nn.Parameter(ours.detach().clone())
    rate = torch.tensor(0.0, dtype=torch.float64)
    opt_ours = AdamW([ours], lr=rate, weight_decay=0.1)
    opt_theirs = AdamW([theirs], lr=0.0, weight_decay=0.1)
    for value in (1e-3, 5e-3, 2e-3, 0.0, 4e-3):
        rate.fill_(value)
        opt_theirs.param_groups[0]["lr"] = value
        grad = torch.randn(5, 3)
        ours.grad, theirs.grad = grad, grad.clone()
        opt_ours.step()
        opt_theirs.step()
        assert torch.equal(ours, theirs), value
    assert not torch.equal(ours, torch.zeros(5, 3))


def test_a_step_reads_nothing_back_from_the_device():
    """On the meta device every read of a value fails (`.item()`, `bool(t)`, printing): several steps
    with a rate tensor and decay run there, so none reads one."""
    params = [torch.nn.Parameter(torch.ones(3, device="meta")), torch.nn.Parameter(torch.ones(2, 4, device="meta"))]
    rate = torch.tensor(1e-3, device="meta")
    with pytest.raises(Exception, match="meta"):
        bool(rate > 0)  # the premise: a read on the meta device fails
    opt = AdamW(params, lr=1e-3, weight_decay=0.01)
    opt.param_groups[0]["lr"] = rate
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    assert all(opt.state[p]["step"].device.type == "meta" for p in params)


def test_checkpoints_that_kept_the_count_as_an_int_resume_identically():
    a, opt, b, restored = three_steps_and_a_fresh_twin(seed=1)
    old = copy.deepcopy(opt.state_dict())  # state_dict() shares the live per-parameter dicts
    old["state"][0]["step"] = 3  # how such checkpoints stored it
    restored.load_state_dict(old)
    assert restored.state[b]["step"].dtype == torch.float32 and restored.state[b]["step"].item() == 3
    assert_next_steps_equal(a, opt, b, restored)


def test_a_rate_tensor_must_hold_one_value():
    with pytest.raises(ValueError, match="one-element tensor"):
        AdamW([torch.nn.Parameter(torch.ones(1))], lr=torch.tensor([1e-3, 2e-3]))
    with pytest.raises(ValueError, match="lr must be >= 0"):
        AdamW([torch.nn.Parameter(torch.ones(1))], lr=torch.tensor(-1.0))
