"""MultitaskBert: what each sharing choice builds, trains and keeps, on a tiny random encoder."""

from __future__ import annotations

import copy

import pytest
import torch

from mops.minbert import AdamW, Batch, BertConfig, BertModel
from mops.multitask.data.tasks import Task, score
from mops.multitask.sharing.model import CosineHead, HeadConfig, MultitaskBert, TaskHead, task_loss
from mops.multitask.sharing.plan import parse_plan

CONFIG = BertConfig(
    vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=64,
)  # fmt: skip
LAYERS = CONFIG.num_hidden_layers
PIECES = ["embeddings"] + [f"layer.{i}" for i in range(LAYERS)] + ["pooler"]  # bottom to top


def no_data(split: str) -> list:
    return []


TASKS = [
    Task("a", "classification", 3, "accuracy", False, no_data),
    Task("b", "regression", 1, "pearson", True, no_data),
    Task("c", "classification", 2, "accuracy", True, no_data),
]
NAMES = tuple(task.name for task in TASKS)


def pretrained(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(CONFIG, backend="torch")


def build(plan: str, head: HeadConfig | None = None, encoder: BertModel | None = None) -> MultitaskBert:
    encoder = encoder or pretrained()
    torch.manual_seed(1)  # head initialisation
    return MultitaskBert(encoder, parse_plan(plan, NAMES, LAYERS), TASKS, head)


def make_batch(seed: int, size: int = 4, length: int = 7) -> Batch:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, CONFIG.vocab_size, (size, length), generator=g)
    attention_mask = torch.ones(size, length, dtype=torch.long)
    attention_mask[1, length - 2 :] = 0  # one padded row
    input_ids[attention_mask == 0] = CONFIG.pad_token_id
    token_type_ids = torch.zeros(size, length, dtype=torch.long)
    token_type_ids[:, length // 2 :] = 1
    return Batch(input_ids, attention_mask, token_type_ids)


def make_labels(task: str, size: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if task == "b":
        return torch.rand(size, generator=g) * 5
    return torch.randint(0, {"a": 3, "c": 2}[task], (size,), generator=g)


def optimizer_for(model: MultitaskBert) -> AdamW:
    """AdamW over the trainable parameters, as the trainer builds it."""
    return AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)


def train_step(model: MultitaskBert, optimizer: AdamW, task: str, seed: int = 0) -> None:
    loss = model.loss(task, model(task, make_batch(seed)), make_labels(task))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def backward_once(model: MultitaskBert, task: str) -> None:
    model.loss(task, model(task, make_batch(0)), make_labels(task)).backward()


def piece(model: MultitaskBert, task: str, name: str) -> torch.nn.Module:
    return model.stack(task)[PIECES.index(name)]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def same(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, saved[name]) for name, p in module.named_parameters())


# --- frozen pieces ---------------------------------------------------------------------------


FROZEN_PLAN = "FSFS"  # frozen at the bottom (embeddings, layer.0) and above a trainable layer (layer.2)
FROZEN = ["embeddings", "layer.0", "layer.2"]
TRAINABLE = ["layer.1", "layer.3", "pooler"]


def test_frozen_pieces_do_not_require_grad_and_trainable_ones_do():
    model = build(FROZEN_PLAN)
    for name in FROZEN:
        assert not any(p.requires_grad for p in piece(model, "a", name).parameters()), name
    for name in TRAINABLE:
        assert all(p.requires_grad for p in piece(model, "a", name).parameters()), name


def test_frozen_pieces_get_no_gradient():
    model = build(FROZEN_PLAN)
    backward_once(model, "a")
    for name in FROZEN:
        assert all(p.grad is None for p in piece(model, "a", name).parameters()), name
    for name in TRAINABLE:  # while the trainable ones do
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in piece(model, "a", name).parameters()), name


def test_frozen_pieces_get_no_optimizer_state():
    model = build(FROZEN_PLAN)
    optimizer = optimizer_for(model)
    for task in NAMES:
        train_step(model, optimizer, task)
    for name in FROZEN:
        assert not any(p in optimizer.state for p in piece(model, "a", name).parameters()), name
    for name in TRAINABLE:
        assert all(p in optimizer.state for p in piece(model, "a", name).parameters()), name


def test_frozen_pieces_are_bit_identical_after_training():
    model = build(FROZEN_PLAN)
    before = {name: snapshot(piece(model, "a", name)) for name in PIECES}
    optimizer = optimizer_for(model)
    for step in range(3):
        for task in NAMES:
            train_step(model, optimizer, task, seed=step)
    for name in FROZEN:
        assert same(piece(model, "a", name), before[name]), name
    for name in TRAINABLE:
        assert not same(piece(model, "a", name), before[name]), name


def test_a_frozen_piece_is_one_copy_for_every_task():
    model = build("FIII")  # embeddings and layer.0 frozen, the rest individual
    for name in ("embeddings", "layer.0"):
        assert piece(model, "a", name) is piece(model, "b", name) is piece(model, "c", name), name
    assert piece(model, "a", "layer.1") is not piece(model, "b", "layer.1")


def test_frozen_pieces_stay_in_eval_mode_after_train():
    model = build(FROZEN_PLAN)
    model.eval()
    model.train()
    for name in FROZEN:
        assert not any(m.training for m in piece(model, "a", name).modules()), name
    for name in TRAINABLE:
        assert all(m.training for m in piece(model, "a", name).modules()), name
    assert all(m.training for m in model.heads.modules())


def test_trainable_pieces_follow_eval():
    model = build(FROZEN_PLAN)
    model.eval()
    assert not any(m.training for m in model.modules())


def test_a_frozen_encoder_applies_no_dropout_in_train_mode():
    assert CONFIG.hidden_dropout_prob > 0  # otherwise the comparison below proves nothing
    model = build("FFFF").train()
    batch = make_batch(0)
    torch.manual_seed(0)
    first = model.encode("a", batch)
    torch.manual_seed(1)
    assert torch.equal(model.encode("a", batch), first)


def test_a_trainable_encoder_applies_dropout_in_train_mode():
    model = build("SSSS").train()
    batch = make_batch(0)
    torch.manual_seed(0)
    first = model.encode("a", batch)
    torch.manual_seed(1)
    assert not torch.equal(model.encode("a", batch), first)


# --- the frozen bottom runs without autograd --------------------------------------------------

FROZEN_BOTTOM = ["embeddings", "layer.0", "layer.1"]  # of plan FFSS
ABOVE_IT = ["layer.2", "layer.3", "pooler"]


def saved_tensors_by_piece(model: MultitaskBert, task: str) -> dict[str | None, int]:
    """How many tensors autograd saves for the backward during one forward, by the piece running."""
    running: list[str | None] = [None]
    counts: dict[str | None, int] = {}
    handles = []
    for name, module in zip(PIECES, model.stack(task)):
        handles.append(module.register_forward_pre_hook(lambda m, args, name=name: running.__setitem__(0, name)))
        handles.append(module.register_forward_hook(lambda m, args, out: running.__setitem__(0, None)))

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        counts[running[0]] = counts.get(running[0], 0) + 1
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(task, make_batch(0))
    finally:
        for handle in handles:
            handle.remove()
    return counts


def test_a_frozen_bottom_saves_fewer_tensors_than_a_trainable_one():
    # eval mode: dropout masks (saved only by trainable pieces in train mode) would also differ
    frozen_bottom = sum(saved_tensors_by_piece(build("FFSS").eval(), "a").values())
    all_trainable = sum(saved_tensors_by_piece(build("SSSS").eval(), "a").values())
    assert frozen_bottom < all_trainable


def test_nothing_saved_for_the_backward_belongs_to_the_frozen_bottom():
    counts = saved_tensors_by_piece(build("FFSS"), "a")
    assert all(counts.get(name, 0) == 0 for name in FROZEN_BOTTOM), counts
    assert all(counts.get(name, 0) > 0 for name in ABOVE_IT), counts
    shared = saved_tensors_by_piece(build("SSSS"), "a")
    assert all(shared.get(name, 0) > 0 for name in FROZEN_BOTTOM), shared  # the same pieces save when trainable


def test_the_frozen_bottom_outputs_carry_no_graph():
    model = build("FFSS")
    outputs = {}
    handles = [
        module.register_forward_hook(lambda m, args, out, name=name: outputs.__setitem__(name, out))
        for name, module in zip(PIECES, model.stack("a"))
    ]
    model("a", make_batch(0))
    for handle in handles:
        handle.remove()
    for name in FROZEN_BOTTOM:
        assert outputs[name].grad_fn is None and not outputs[name].requires_grad, name
    for name in ABOVE_IT:
        assert outputs[name].requires_grad, name


def test_a_frozen_piece_above_a_trainable_one_passes_gradients_down():
    model = build("SSFF")  # layers 2, 3 and the pooler frozen, above trainable layers 0 and 1
    backward_once(model, "a")
    for name in ("embeddings", "layer.0", "layer.1"):
        grads = [p.grad for p in piece(model, "a", name).parameters()]
        assert all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    for name in ("layer.2", "layer.3", "pooler"):
        assert all(p.grad is None for p in piece(model, "a", name).parameters()), name


# --- shared, individual and grouped pieces ----------------------------------------------------


def test_shared_pieces_are_the_same_tensors_for_every_task():
    model = build("SSSS")
    for name in PIECES:
        reference = list(piece(model, "a", name).parameters())
        for task in NAMES[1:]:
            params = list(piece(model, task, name).parameters())
            assert len(params) == len(reference)
            assert all(p is q for p, q in zip(params, reference)), (name, task)


def test_a_step_on_one_task_changes_what_another_task_sees_through_shared_pieces():
    model = build("SSSS").eval()  # eval: compare without dropout
    seen_by_b = {name: snapshot(piece(model, "b", name)) for name in PIECES}
    pooled_b = model.encode("b", make_batch(3))
    train_step(model, optimizer_for(model), "a")
    for name in PIECES:
        assert not same(piece(model, "b", name), seen_by_b[name]), name
    assert not torch.equal(model.encode("b", make_batch(3)), pooled_b)


def test_individual_pieces_are_separate_tensors_per_task():
    model = build("IIII")
    for name in PIECES:
        pointers = [{p.data_ptr() for p in piece(model, task, name).parameters()} for task in NAMES]
        for i in range(len(NAMES)):
            for j in range(i + 1, len(NAMES)):
                assert not pointers[i] & pointers[j], (name, NAMES[i], NAMES[j])


def test_individual_copies_start_from_the_same_pretrained_weights():
    encoder = pretrained()
    sources = [encoder.embeddings, *encoder.encoder.layer, encoder.pooler]
    model = build("IIII", encoder=encoder)
    for name, source in zip(PIECES, sources):
        for task in NAMES:
            assert same(piece(model, task, name), snapshot(source)), (name, task)


def test_a_step_on_one_task_leaves_another_tasks_individual_copies_unchanged():
    model = build("IIII")
    before = {task: {name: snapshot(piece(model, task, name)) for name in PIECES} for task in NAMES}
    train_step(model, optimizer_for(model), "a")
    for name in PIECES:
        assert not same(piece(model, "a", name), before["a"][name]), name
        assert same(piece(model, "b", name), before["b"][name]), name
        assert same(piece(model, "c", name), before["c"][name]), name


def test_grouped_pieces_are_shared_inside_a_group_and_separate_across_groups():
    model = build("[a+b|c]4")
    for name in PIECES:
        a, b, c = (piece(model, task, name) for task in NAMES)
        assert a is b, name
        assert not {p.data_ptr() for p in a.parameters()} & {p.data_ptr() for p in c.parameters()}, name


def test_a_step_on_one_task_reaches_its_group_only():
    model = build("[a+b|c]4")
    before = {task: {name: snapshot(piece(model, task, name)) for name in PIECES} for task in NAMES}
    train_step(model, optimizer_for(model), "a")
    for name in PIECES:
        assert not same(piece(model, "b", name), before["b"][name]), name
        assert same(piece(model, "c", name), before["c"][name]), name


# --- the wrapper adds nothing -----------------------------------------------------------------


# An untrained L piece adds B @ A with B = 0, an untrained B piece starts from the base's biases:
# both compute exactly what the pretrained encoder computes.
@pytest.mark.parametrize("plan", ["SSSS", "IIII", "FFSS", "SSFF", "FFFF", "[a+b|c]4", "LLLL", "BBBB", "FLBS",
                                  "L[a+b|c]B[a|b+c]2S,emb=B,pooler=L"])
def test_output_equals_the_pretrained_encoder_and_the_head(plan):
    encoder = pretrained().eval()
    model = build(plan, encoder=copy.deepcopy(encoder)).eval()
    batch = make_batch(5)
    with torch.no_grad():
        pooled = encoder(batch.input_ids, batch.attention_mask, batch.token_type_ids)["pooler_output"]
        for task in NAMES:
            assert torch.equal(model(task, batch), model.heads[task](pooled)), task


# --- pair encodings ---------------------------------------------------------------------------


def test_joint_pair_encoding_reads_one_pooled_vector():
    model = build("SSSS", HeadConfig(pair_encoding="joint"))
    for task in TASKS:
        assert model.heads[task.name].linear.in_features == CONFIG.hidden_size
        assert model.heads[task.name].linear.out_features == task.num_labels
    assert model("c", make_batch(0)).shape == (4, 2)


def test_siamese_pair_encoding_reads_four_pooled_widths_for_pair_tasks_only():
    model = build("SSSS", HeadConfig(pair_encoding="siamese"))
    assert model.heads["a"].linear.in_features == CONFIG.hidden_size  # a single-sentence task
    assert model.heads["b"].linear.in_features == 4 * CONFIG.hidden_size
    assert model.heads["c"].linear.in_features == 4 * CONFIG.hidden_size


def test_siamese_pairs_encode_each_sentence_alone_and_combine_them():
    encoder = pretrained().eval()
    model = build("SSSS", HeadConfig(pair_encoding="siamese"), encoder=copy.deepcopy(encoder)).eval()
    first, second = make_batch(1, length=7), make_batch(2, length=5)  # lengths may differ
    with torch.no_grad():
        outputs = model("c", first, second)
        u = encoder(first.input_ids, first.attention_mask, first.token_type_ids)["pooler_output"]
        v = encoder(second.input_ids, second.attention_mask, second.token_type_ids)["pooler_output"]
        expected = model.heads["c"].linear(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))
    assert outputs.shape == (4, 2)
    assert torch.equal(outputs, expected)


# --- regression targets and the cosine head ---------------------------------------------------


STS_LIKE = Task("s", "regression", 1, "pearson", True, no_data, label_range=(0.0, 5.0))
PARA_LIKE = Task("p", "classification", 2, "accuracy", True, no_data)


def test_regression_trains_on_targets_scaled_to_0_1_and_reports_the_label_scale():
    outputs, labels = torch.tensor([[0.2], [0.9], [0.5]]), torch.tensor([1.0, 4.5, 2.5])
    scaled = task_loss(STS_LIKE, outputs, labels, scale_regression=True)
    torch.testing.assert_close(scaled, ((outputs.squeeze(-1) - labels / 5) ** 2).mean())
    raw = task_loss(STS_LIKE, outputs, labels, scale_regression=False)
    torch.testing.assert_close(raw, ((outputs.squeeze(-1) - labels) ** 2).mean())
    plan = parse_plan("SSSS", ("s",), LAYERS)
    model = MultitaskBert(pretrained(), plan, [STS_LIKE], HeadConfig(scale_regression=True))
    torch.testing.assert_close(model.predict("s", outputs), torch.tensor([1.0, 4.5, 2.5]))  # 0-1 back to 0-5
    unscaled = MultitaskBert(pretrained(), plan, [STS_LIKE], HeadConfig())  # the default: raw scores
    torch.testing.assert_close(unscaled.predict("s", outputs), outputs.squeeze(-1))
    # Pearson's r does not see the scaling: reported predictions score as the raw outputs would
    assert score(STS_LIKE, model.predict("s", outputs), labels) == pytest.approx(
        score(STS_LIKE, outputs.squeeze(-1), labels), abs=1e-12)


def cosine_model(task: Task, scale_regression: bool = True) -> MultitaskBert:
    head = HeadConfig(cosine_tasks=(task.name,), scale_regression=scale_regression)
    return MultitaskBert(pretrained(), parse_plan("SSSS", (task.name,), LAYERS), [task], head)


def test_a_cosine_head_scores_the_similarity_of_the_two_pooled_sentences():
    model = cosine_model(STS_LIKE).eval()
    first, second = make_batch(1, length=7), make_batch(2, length=5)
    with torch.no_grad():
        u, v = model.encode("s", first), model.encode("s", second)
        cos = torch.nn.functional.cosine_similarity(u, v, dim=-1)
        torch.testing.assert_close(model("s", first, second).squeeze(-1), cos)  # starts as the identity on [0, 1]
    assert cosine_model(STS_LIKE, scale_regression=False).heads["s"].scale.item() == 5.0  # or maps to 0-5


def test_a_two_class_cosine_head_gives_class_1_the_logit_of_its_scaled_similarity():
    model = cosine_model(PARA_LIKE).eval()
    first, second = make_batch(1), make_batch(2)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model.encode("p", first), model.encode("p", second), dim=-1)
        logits = model("p", first, second)
    torch.testing.assert_close(logits, torch.stack([torch.zeros_like(cos), 10 * cos - 5], dim=-1))


def test_a_cosine_head_trains_both_encodings_and_its_scale_and_shift():
    model = cosine_model(STS_LIKE).train()
    loss = model.loss("s", model("s", make_batch(1), make_batch(2)), torch.tensor([0.5, 4.0, 2.0, 3.0]))
    loss.backward()
    head = model.heads["s"]
    assert head.scale.grad is not None and head.shift.grad is not None and head.shift.grad != 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.stack("s")[1].parameters())


def test_cosine_tasks_encode_their_sentences_alone_while_other_pairs_follow_the_pair_encoding():
    head = HeadConfig(pair_encoding="joint", cosine_tasks=("b",))
    mixed = MultitaskBert(pretrained(), parse_plan("SSSS", NAMES, LAYERS), TASKS, head)
    assert isinstance(mixed.heads["b"], CosineHead) and isinstance(mixed.heads["c"], TaskHead)
    assert [head.siamese(task) for task in TASKS] == [False, True, False]  # a: single sentences; c: joint
    assert mixed.heads["c"].linear.in_features == CONFIG.hidden_size
    assert mixed("b", make_batch(1), make_batch(2)).shape == (4, 1) and mixed("c", make_batch(1)).shape == (4, 2)


def test_a_cosine_head_is_for_pairs_with_one_output_or_two_classes():
    single = Task("one", "classification", 3, "accuracy", False, no_data)
    with pytest.raises(ValueError, match="task one has single sentences and 3 outputs"):
        CosineHead(single, HeadConfig(cosine_tasks=("one",)))
    with pytest.raises(ValueError, match="needs the second sentences"):
        cosine_model(STS_LIKE)("s", make_batch(1))


# --- errors -----------------------------------------------------------------------------------


def test_a_siamese_head_without_second_sentences_and_a_joint_head_with_them_are_refused():
    siamese = build("SSSS", HeadConfig(pair_encoding="siamese"))
    with pytest.raises(ValueError, match="second sentences"):
        siamese("c", make_batch(1))
    joint = build("SSSS", HeadConfig(pair_encoding="joint"))
    with pytest.raises(ValueError, match="second sentences"):
        joint("c", make_batch(1), make_batch(2))


def test_a_plan_for_other_tasks_is_refused():
    plan = parse_plan("SSSS", ("a", "b", "d"), LAYERS)
    with pytest.raises(ValueError, match="plan is for tasks"):
        MultitaskBert(pretrained(), plan, TASKS)


def test_a_plan_with_the_wrong_number_of_layers_is_refused():
    plan = parse_plan("SSS", NAMES, LAYERS - 1)
    with pytest.raises(ValueError, match="covers 3 layers but the model has 4"):
        MultitaskBert(pretrained(), plan, TASKS)


def test_an_unknown_pair_encoding_is_refused():
    with pytest.raises(ValueError, match="pair_encoding must be one of"):
        HeadConfig(pair_encoding="concatenated")
