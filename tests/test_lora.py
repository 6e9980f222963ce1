"""LoRA (`L`) and BitFit (`B`) pieces: one frozen base shared by every task, per-task updates that
train, an untrained update that changes nothing, and both kernel backends computing the same."""

from __future__ import annotations

import math

import pytest
import torch
from test_multitask_model import CONFIG, LAYERS, NAMES, TASKS, make_batch, make_labels, optimizer_for, piece, train_step

from mops.minbert import BertModel
from mops.multitask.sharing.lora import LoRAConfig, LoRALinear
from mops.multitask.sharing.model import MultitaskBert
from mops.multitask.sharing.plan import parse_plan

LORA_PATHS = {  # target -> the LoRA module's path inside a layer copy
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attention_output": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense",
}  # fmt: skip
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernels run in this session


def build(plan: str, lora: LoRAConfig | None = None, backend: str = "torch", seed: int = 0) -> MultitaskBert:
    torch.manual_seed(seed)
    encoder = BertModel(CONFIG, backend=backend)
    torch.manual_seed(1)  # heads and LoRA down-projections
    return MultitaskBert(encoder, parse_plan(plan, NAMES, LAYERS), TASKS, lora=lora)


def lora_modules(module: torch.nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, LoRALinear)}


def randomise_updates(model: MultitaskBert, seed: int = 3) -> None:
    """Non-zero up-projections, as after training, so the updates change what the pieces compute."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# --- settings ---------------------------------------------------------------------------------


def test_lora_defaults_are_the_issues_settings():
    config = LoRAConfig()
    assert (config.rank, config.alpha, config.dropout, config.scaling) == (8, 16.0, 0.0, 2.0)
    assert config.targets == ("query", "key", "value", "attention_output", "intermediate", "output")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [({"rank": 0}, "rank must be a positive integer"), ({"dropout": 1.0}, "dropout must be in"),
     ({"targets": ("query", "pooler")}, "unknown lora target(s) pooler"), ({"targets": ()}, "(none)")],
)
def test_bad_lora_settings_are_refused(settings, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        LoRAConfig(**settings)


# --- what an L piece builds ---------------------------------------------------------------------


def test_l_copies_share_one_frozen_base_and_hold_their_own_updates():
    model = build("SLLS")
    for name in ("layer.1", "layer.2"):
        copies = [piece(model, task, name) for task in NAMES]
        bases = [{n: p for n, p in c.named_parameters() if "lora_" not in n} for c in copies]
        for n, p in bases[0].items():
            assert all(other[n] is p for other in bases[1:]), n  # one tensor, not equal copies
            assert not p.requires_grad, n
        updates = [lora_modules(c) for c in copies]
        assert sorted(updates[0]) == sorted(LORA_PATHS.values())
        for path in updates[0]:
            assert updates[0][path].lora_A is not updates[1][path].lora_A
            assert updates[0][path].lora_B.requires_grad and updates[0][path].lora_A.requires_grad


def test_lora_starts_with_a_kaiming_uniform_down_projection_and_a_zero_up_projection():
    model = build("LLLL", LoRAConfig(rank=4))
    for path, module in lora_modules(piece(model, "a", "layer.0")).items():
        fan_in = module.weight.shape[1]
        assert module.lora_A.shape == (4, fan_in) and module.lora_B.shape == (module.weight.shape[0], 4)
        assert torch.count_nonzero(module.lora_B) == 0
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)): nn.Linear's own initialisation
        assert module.lora_A.abs().max() <= bound and module.lora_A.abs().max() > bound / 2, path


def test_an_update_adds_its_scaled_low_rank_product_to_the_base():
    model = build("LLLL", LoRAConfig(rank=4, alpha=12.0))
    randomise_updates(model)
    module = lora_modules(piece(model, "a", "layer.0"))["attention.self.query"]
    x = torch.randn(2, 5, CONFIG.hidden_size)
    expected = x @ (module.weight + 3.0 * module.lora_B @ module.lora_A).T + module.bias
    torch.testing.assert_close(module(x), expected)
    torch.testing.assert_close(module.merged_weight(), module.weight + 3.0 * module.lora_B @ module.lora_A)


def test_only_the_named_targets_get_an_update_and_an_l_pooler_adapts_its_dense_layer():
    model = build("LLLL", LoRAConfig(targets=("query", "intermediate")))
    assert sorted(lora_modules(piece(model, "a", "layer.2"))) == ["attention.self.query", "intermediate.dense"]
    assert sorted(lora_modules(piece(model, "b", "pooler"))) == ["dense"]


def test_l_embeddings_are_frozen_without_an_update():
    model = build("LLLL")
    embeddings = piece(model, "a", "embeddings")
    assert not any(p.requires_grad for p in embeddings.parameters())
    assert all(p is q for p, q in zip(embeddings.parameters(), piece(model, "c", "embeddings").parameters()))


def test_an_l_piece_in_groups_gives_one_update_per_group():
    model = build("L[a+b|c]4")
    query = {task: lora_modules(piece(model, task, "layer.3"))["attention.self.query"] for task in NAMES}
    assert query["a"] is query["b"] and query["a"] is not query["c"]
    assert query["a"].weight is query["c"].weight


# --- what a B piece builds ----------------------------------------------------------------------


def test_b_copies_share_frozen_matrices_and_own_their_biases_and_norms():
    model = build("BBBB")
    for name in ("embeddings", "layer.0", "pooler"):
        copies = [dict(piece(model, task, name).named_parameters()) for task in NAMES]
        assert copies[0]
        for n, p in copies[0].items():
            if p.dim() >= 2:  # weight matrices and embedding tables
                assert all(other[n] is p for other in copies[1:]) and not p.requires_grad, n
            else:  # biases and layer-norm weights
                assert all(other[n] is not p and torch.equal(other[n], p) for other in copies[1:]), n
                assert p.requires_grad, n


# --- training: the base never moves, each update only on its own task's steps --------------------


@pytest.mark.parametrize("plan", ["LLBB", "L[a+b|c]B2L,emb=B,pooler=L"])
def test_a_step_on_one_task_moves_only_its_update_and_never_the_shared_base(plan):
    model = build(plan)
    optimizer = optimizer_for(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    updates = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "heads" not in n}
    for seed in range(2):  # two steps: the first moves B only (A's gradient is zero while B is)
        train_step(model, optimizer, "c", seed)
    params = dict(model.named_parameters())
    for n, before in frozen.items():
        assert torch.equal(params[n], before), n
    parsed = parse_plan(plan, NAMES, LAYERS)
    for n, before in updates.items():
        piece_name, key = n.split(".")[1].replace("_", "."), n.split(".")[2]
        reads = key == parsed.group_of(piece_name, "c")
        assert torch.equal(params[n], before) != reads, f"{n}: task c's steps {'missed' if reads else 'moved'} it"


def test_gradients_reach_an_l_update_right_above_the_frozen_prefix():
    model = build("FLSS")
    assert model.frozen_prefix == 2  # embeddings and layer.0; layer.1 runs with autograd
    loss = model.loss("a", model("a", make_batch(0)), make_labels("a"))
    loss.backward()
    update = lora_modules(piece(model, "a", "layer.1"))["attention.self.query"]
    assert update.lora_B.grad is not None and update.lora_B.grad.abs().sum() > 0
    assert update.weight.grad is None


# --- backends -----------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", ["LLLL", "BBLL,pooler=B"])
def test_the_triton_backend_computes_what_the_torch_backend_does(plan):
    models = {backend: build(plan, LoRAConfig(rank=4), backend) for backend in ("torch", "triton")}
    for model in models.values():
        randomise_updates(model)
        model.eval().to(DEVICE)
    grads = {}
    for backend, model in models.items():
        outputs = model("a", make_batch(2).to(DEVICE))
        model.loss("a", outputs, make_labels("a").to(DEVICE)).backward()
        grads[backend] = (outputs.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (out_torch, grads_torch), (out_triton, grads_triton) = grads["torch"], grads["triton"]
    torch.testing.assert_close(out_triton, out_torch)
    assert grads_torch.keys() == grads_triton.keys() and any("lora_A" in n for n in grads_torch)
    for n in grads_torch:
        torch.testing.assert_close(grads_triton[n], grads_torch[n], msg=lambda m: f"{n}: {m}")

