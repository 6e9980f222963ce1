"""account_model: parameter, gradient and optimizer memory of a built model, checked against sizes
worked out by hand from a tiny config."""

from __future__ import annotations

import pytest
import torch

from mops.minbert import AdamW, Batch, BertConfig, BertModel
from mops.multitask.data.tasks import Task
from mops.multitask.sharing.accounting import account, account_model
from mops.multitask.sharing.lora import LoRAConfig
from mops.multitask.sharing.model import HeadConfig, MultitaskBert
from mops.multitask.sharing.plan import parse_plan

V, H, L, I, P, T = 50, 16, 3, 24, 20, 2  # vocabulary, width, layers, feed-forward width, positions, segments
CONFIG = BertConfig(
    vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=2, intermediate_size=I,
    max_position_embeddings=P, type_vocab_size=T,
)  # fmt: skip
FP32 = 4  # bytes per element


def no_data(split: str) -> list:
    return []


TASKS = [
    Task("a", "classification", 5, "accuracy", False, no_data),
    Task("b", "classification", 2, "accuracy", True, no_data),
    Task("c", "regression", 1, "pearson", True, no_data),
]
LABELS = {"a": 5, "b": 2, "c": 1}

# Sizes by formula: weights plus biases of every linear layer, tables, LayerNorm scale and shift.
EMBEDDINGS = V * H + P * H + T * H + 2 * H
LAYER = (
    3 * (H * H + H)  # query, key, value
    + (H * H + H) + 2 * H  # attention output projection and its LayerNorm
    + (H * I + I)  # feed-forward up
    + (I * H + H) + 2 * H  # feed-forward down and its LayerNorm
)  # fmt: skip
POOLER = H * H + H
ENCODER = EMBEDDINGS + L * LAYER + POOLER  # one copy of every piece


def head(task: str, width: int = H) -> int:
    return width * LABELS[task] + LABELS[task]


HEADS = sum(head(task) for task in LABELS)


def build(plan: str, pair_encoding: str = "joint") -> MultitaskBert:
    torch.manual_seed(0)
    encoder = BertModel(CONFIG, backend="torch")
    names = tuple(LABELS)
    return MultitaskBert(encoder, parse_plan(plan, names, L), TASKS, HeadConfig(pair_encoding=pair_encoding))


def expected(unique: int, trainable: int) -> dict:
    weights, grads = FP32 * unique, FP32 * trainable
    return {
        "unique_params": unique,
        "trainable_params": trainable,
        "weight_bytes": weights,
        "grad_bytes": grads,
        "optimizer_bytes": 2 * grads,  # AdamW: two moments per trainable element
        "total_bytes": weights + grads + 2 * grads,
    }


def overall(figures: dict) -> dict:
    return {key: value for key, value in figures.items() if key != "per_task"}


def test_the_encoder_size_formula_matches_the_pretrained_model():
    # Guards the hand formula itself, so the tests below compare against the right numbers.
    encoder = BertModel(CONFIG, backend="torch")
    assert sum(p.numel() for p in encoder.parameters()) == ENCODER


def test_all_frozen_counts_one_encoder_and_trains_only_the_heads():
    assert overall(account_model(build("FFF"))) == expected(unique=ENCODER + HEADS, trainable=HEADS)


def test_all_shared_counts_one_encoder_and_trains_all_of_it():
    assert overall(account_model(build("SSS"))) == expected(unique=ENCODER + HEADS, trainable=ENCODER + HEADS)


def test_all_individual_counts_one_encoder_per_task():
    copies = 3 * ENCODER + HEADS
    assert overall(account_model(build("III"))) == expected(unique=copies, trainable=copies)


def test_a_mixed_plan_counts_each_copy_once():
    # embeddings and layer.0 frozen (1 copy), layer.1 grouped a+b | c (2 copies),
    # layer.2 and the pooler individual (3 copies each)
    unique = EMBEDDINGS + LAYER + 2 * LAYER + 3 * LAYER + 3 * POOLER + HEADS
    trainable = 2 * LAYER + 3 * LAYER + 3 * POOLER + HEADS
    assert overall(account_model(build("F[a+b|c]I"))) == expected(unique, trainable)


def test_a_grouped_plan_counts_one_copy_per_group():
    copies = 2 * ENCODER + HEADS
    assert overall(account_model(build("[a+b|c]3"))) == expected(unique=copies, trainable=copies)


@pytest.mark.parametrize("plan", ["FFF", "SSS", "III", "[a+b|c]3"])
def test_per_task_figures_count_one_copy_of_every_piece_and_the_tasks_head(plan):
    per_task = account_model(build(plan))["per_task"]
    assert set(per_task) == set(LABELS)
    for task in LABELS:
        trainable = head(task) if plan == "FFF" else ENCODER + head(task)
        assert per_task[task] == expected(unique=ENCODER + head(task), trainable=trainable), task


def test_per_task_figures_leave_out_frozen_pieces_from_the_trainable_count():
    per_task = account_model(build("F[a+b|c]I"))["per_task"]
    for task in LABELS:
        trainable = 2 * LAYER + POOLER + head(task)  # layer.1, layer.2, the pooler and the head
        assert per_task[task] == expected(unique=ENCODER + head(task), trainable=trainable), task


# LoRA and BitFit: the frozen base counts once, each task's update on its own.
R = 4  # LoRA rank used below
LORA_LAYER = 4 * R * (H + H) + R * (H + I) + R * (I + H)  # q, k, v, attention output; up; down
LORA_POOLER = R * (H + H)
BITFIT_LAYER = 3 * H + H + 2 * H + I + H + 2 * H  # q, k, v, output biases, LayerNorm, up and down biases, LayerNorm
BITFIT_EMBEDDINGS = 2 * H  # the LayerNorm's scale and shift
BITFIT_POOLER = H


def build_adapted(plan: str) -> MultitaskBert:
    torch.manual_seed(0)
    encoder = BertModel(CONFIG, backend="torch")
    return MultitaskBert(encoder, parse_plan(plan, tuple(LABELS), L), TASKS, lora=LoRAConfig(rank=R))


def test_all_lora_counts_one_base_and_one_update_per_task():
    # embeddings: frozen, no update; every layer and the pooler: 3 updates
    updates = 3 * (L * LORA_LAYER + LORA_POOLER)
    assert overall(account_model(build_adapted("LLL"))) == expected(ENCODER + updates + HEADS, updates + HEADS)


def test_all_bitfit_counts_the_matrices_once_and_the_biases_per_task():
    own = BITFIT_EMBEDDINGS + L * BITFIT_LAYER + BITFIT_POOLER  # one task's biases and norms
    unique = ENCODER - own + 3 * own + HEADS  # the matrices once, the biases three times
    assert overall(account_model(build_adapted("BBB"))) == expected(unique, 3 * own + HEADS)


def test_a_plan_mixing_lora_bitfit_shared_and_groups_counts_by_hand():
    # embeddings B (3 norms), layer.0 L in groups a+b | c (2 updates), layer.1 B (3 bias sets),
    # layer.2 S (one trainable copy), pooler L (3 updates)
    plan = "L[a+b|c]BS,emb=B,pooler=L"
    unique = ENCODER + 2 * BITFIT_EMBEDDINGS + 2 * LORA_LAYER + 2 * BITFIT_LAYER + 3 * LORA_POOLER + HEADS
    trainable = 3 * BITFIT_EMBEDDINGS + 2 * LORA_LAYER + 3 * BITFIT_LAYER + LAYER + 3 * LORA_POOLER + HEADS
    figures = account_model(build_adapted(plan))
    assert overall(figures) == expected(unique, trainable)
    for task in LABELS:  # each task: one copy of every base, its own update of each piece, its head
        own = BITFIT_EMBEDDINGS + LORA_LAYER + BITFIT_LAYER + LAYER + LORA_POOLER + head(task)
        assert figures["per_task"][task] == expected(ENCODER + LORA_LAYER + LORA_POOLER + head(task), own), task


def adamw_bytes_once_every_task_has_trained(model) -> int:
    """Bytes of the moments AdamW holds after one step of each task (its 4-byte step count per
    tensor, a few hundred bytes for a whole BERT, is left out of the accounting)."""
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = Batch(torch.randint(1, V, (2, 5)), torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    labels = {"a": torch.tensor([0, 4]), "b": torch.tensor([1, 0]), "c": torch.tensor([0.5, 3.0])}
    for task in LABELS:
        optimizer.zero_grad(set_to_none=True)
        model.loss(task, model(task, batch), labels[task]).backward()
        optimizer.step()
    return sum(state[name].numel() * state[name].element_size() for state in optimizer.state.values()
               for name in ("exp_avg", "exp_avg_sq"))


def test_optimizer_bytes_follow_the_trainable_updates_only():
    model = build_adapted("LB[a+b|c]S,pooler=B")
    assert account_model(model)["optimizer_bytes"] == adamw_bytes_once_every_task_has_trained(model)


def test_siamese_heads_read_four_times_the_width_for_pair_tasks():
    heads = head("a") + head("b", 4 * H) + head("c", 4 * H)
    figures = account_model(build("SSS", pair_encoding="siamese"))
    assert overall(figures) == expected(unique=ENCODER + heads, trainable=ENCODER + heads)
    assert figures["per_task"]["b"]["unique_params"] == ENCODER + head("b", 4 * H)


def test_optimizer_bytes_match_the_state_adamw_keeps_once_every_task_has_trained():
    model = build("F[a+b|c]I")
    assert account_model(model)["optimizer_bytes"] == adamw_bytes_once_every_task_has_trained(model)


def test_bytes_follow_the_parameters_dtype():
    model = build("F[a+b|c]I").to(torch.bfloat16)
    unique = EMBEDDINGS + LAYER + 2 * LAYER + 3 * LAYER + 3 * POOLER + HEADS
    trainable = 2 * LAYER + 3 * LAYER + 3 * POOLER + HEADS
    figures = overall(account_model(model))
    assert (figures["weight_bytes"], figures["grad_bytes"], figures["optimizer_bytes"]) == (
        2 * unique, 2 * trainable, 4 * trainable,
    )  # fmt: skip


def test_a_parameter_listed_twice_counts_once():
    shared, frozen = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5), requires_grad=False)
    figures = account([shared, frozen, shared])
    assert (figures.unique_params, figures.trainable_params) == (12 + 5, 12)
    assert (figures.weight_bytes, figures.grad_bytes, figures.optimizer_bytes) == (FP32 * 17, FP32 * 12, 2 * FP32 * 12)
