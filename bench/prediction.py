"""Predict a plan's peak training memory before running it.

A training step holds the weights, the gradients and AdamW's two moments of the trainable
tensors (counted from the built model by multitask.accounting), plus what autograd keeps for
the backward: the activations. Those come from a calibration, not a guess. One probe step of one
piece of the model's shape (embeddings, an encoder layer, the pooler, each task's head and loss)
runs under `torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd saves;
their storages are counted once each, parameters left out (they are weights). Three probe shapes
fit

    saved(B, L) = B * (per_token * L + per_token_pair * L**2) + fixed

per piece, so any batch and length follow; the L**2 term is attention's where it keeps scores.

What a piece saves depends on where it sits in the step, so each is probed in the roles a plan
gives it:
    first      trainable, its input needs no gradient (right above the frozen prefix)
    trainable  trainable, its input needs a gradient
    through    frozen above a trainable piece: gradients pass through, its weights get none
Pieces of the frozen prefix (below the first trainable one) run without autograd and save
nothing; their forward is a transient, as is each piece's backward.

A step trains one task, so the activations are the largest task's stack (a siamese pair task
runs its stack twice). Two moments of the step can hold the most:

    backward:   weights + gradients + AdamW state + activations + the largest transient
    optimizer:  weights + gradients + AdamW state + the PyTorch AdamW's sqrt(v) + eps buffers

The largest transient is estimated as the largest single piece's saved bytes (its backward
builds gradients of about that size while they are still held, and a prefix layer's forward
holds about as much before it is freed). The PyTorch AdamW (foreach) builds one fp32 tensor per
trainable tensor for its denominators; the Triton kernel builds none. On a GPU the peak adds
what the CUDA math libraries keep from PyTorch's allocator once a step has run (cuBLAS
workspaces, one per thread and stream: the forward's and autograd's), measured, not assumed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from minbert import BertConfig, BertModel
from minbert.model import BertEmbeddings, BertLayer, BertPooler
from kernels.backend import resolve_for_device
from multitask.accounting import account
from multitask.model import HeadConfig, MultitaskBert, TaskHead
from multitask.precision import Precision
from multitask.sharing import SharingPlan
from multitask.tasks import Task

ROLES = ("first", "trainable", "through")
# Probe shapes (batch, length): two lengths at one batch size give the L and L**2 terms, a second
# batch size at one length separates what grows with the batch from what does not.
PROBES = ((2, 16), (2, 32), (4, 32))


@contextlib.contextmanager
def saved_tensor_bytes(exclude: Iterable[torch.Tensor] = ()) -> Iterator[list[int]]:
    """Count the bytes autograd saves for the backward inside the block: each storage once, the
    storages of `exclude` (the parameters) not at all. Yields a one-element list holding the total."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer and pointer not in skip and pointer not in seen:
            seen.add(pointer)
            total[0] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield total


@dataclass(frozen=True)
class Fit:
    """Saved bytes of one piece in one role: B * (per_token * L + per_token_pair * L**2) + fixed."""

    per_token: float
    per_token_pair: float
    fixed: float

    def bytes(self, batch: int, length: int) -> int:
        return max(0, round(batch * (self.per_token * length + self.per_token_pair * length**2) + self.fixed))

    @classmethod
    def from_probes(cls, measured: dict[tuple[int, int], int]) -> Fit:
        (b, l1), (_, l2), (b2, _) = PROBES
        per_sample_l2 = (measured[(b2, l2)] - measured[(b, l2)]) / (b2 - b)
        fixed = measured[(b, l2)] - b * per_sample_l2
        per_sample_l1 = (measured[(b, l1)] - fixed) / b
        # per_sample(L) = per_token * L + per_token_pair * L**2, known at two lengths
        per_token_pair = (per_sample_l2 / l2 - per_sample_l1 / l1) / (l2 - l1)
        per_token = per_sample_l1 / l1 - per_token_pair * l1
        return cls(per_token, per_token_pair, fixed)


@dataclass(frozen=True)
class Calibration:
    """Fits per piece kind and role, and per task head, for one model shape, backend and precision."""

    pieces: dict[tuple[str, str], Fit]  # (embeddings | layer | pooler, role) -> fit
    heads: dict[tuple[str, bool, bool], Fit]  # (task kind key, siamese, input needs grad) -> fit


def _batch(config: BertConfig, batch: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(min(1000, config.vocab_size // 2), config.vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # some padding, as in any bucketed batch
    return ids.to(device), mask.to(device)


def _probe_piece(kind: str, role: str, config: BertConfig, backend: str, precision: Precision,
                 device: torch.device, batch: int, length: int) -> int:
    torch.manual_seed(0)
    piece = {"embeddings": lambda: BertEmbeddings(config, backend), "layer": lambda: BertLayer(config, backend),
             "pooler": lambda: BertPooler(config)}[kind]().to(device)
    piece.train(role != "through")  # frozen pieces run in eval mode: no dropout masks to keep
    piece.requires_grad_(role != "through")
    ids, mask = _batch(config, batch, length, device)
    hidden = torch.randn(batch, length, config.hidden_size, device=device, requires_grad=role != "first")
    with saved_tensor_bytes(exclude=piece.parameters()) as saved, precision.autocast():
        if kind == "embeddings":
            out = piece(ids, torch.zeros_like(ids))
        elif kind == "layer":
            out = piece(hidden, mask)
        else:
            out = piece(hidden)
    out.float().sum().backward()
    return saved[0]


def _probe_head(task: Task, siamese: bool, input_grad: bool, config: BertConfig, precision: Precision,
                device: torch.device, batch: int) -> int:
    torch.manual_seed(0)
    head = TaskHead(config.hidden_size, task, HeadConfig("siamese" if siamese else "joint")).to(device).train()
    pooled = [torch.randn(batch, config.hidden_size, device=device, requires_grad=input_grad)
              for _ in range(2 if siamese else 1)]
    labels = (torch.rand(batch, device=device) * 5 if task.kind == "regression"
              else torch.randint(task.num_labels, (batch,), device=device))
    with saved_tensor_bytes(exclude=head.parameters()) as saved, precision.autocast():
        outputs = head(*pooled)
        # the trainer's losses (multitask.model.MultitaskBert.loss), in fp32
        loss = (F.mse_loss(outputs.squeeze(-1).float(), labels) if task.kind == "regression"
                else F.cross_entropy(outputs.float(), labels))
    loss.backward()
    return saved[0]


def _head_key(task: Task) -> str:
    return f"{task.kind}-{task.num_labels}"


@functools.lru_cache(maxsize=16)
def calibrate(config_items: tuple, backend: str, precision: Precision, device: str,
              head_kinds: tuple[tuple[str, int, bool], ...]) -> Calibration:
    """Probe every piece kind in every role once (cached per model shape, backend, precision and
    device); `head_kinds` are (kind, num_labels, pair) of the tasks whose heads are needed."""
    config = BertConfig(**dict(config_items))
    target = torch.device(device)
    roles = {"embeddings": ("first",), "layer": ROLES, "pooler": ROLES}
    pieces = {}
    for kind, kind_roles in roles.items():
        for role in kind_roles:
            measured = {(b, l): _probe_piece(kind, role, config, backend, precision, target, b, l) for b, l in PROBES}
            pieces[(kind, role)] = Fit.from_probes(measured)
    heads = {}
    for kind, num_labels, pair in head_kinds:
        task = Task(name="probe", kind=kind, num_labels=num_labels, metric="", pair=pair, loader=lambda split: [])
        for siamese in ((False, True) if pair else (False,)):
            for input_grad in (False, True):
                measured = {(b, 1): _probe_head(task, siamese, input_grad, config, precision, target, b)
                            for b in (2, 4)}
                per_row = (measured[(4, 1)] - measured[(2, 1)]) / 2
                heads[(_head_key(task), siamese, input_grad)] = Fit(per_row, 0.0, measured[(2, 1)] - 2 * per_row)
    return Calibration(pieces, heads)


@dataclass
class Prediction:
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activation_bytes: int  # the largest task's step
    activation_bytes_per_task: dict[str, int]
    activation_bytes_per_piece: dict[str, int]  # of the largest task's stack (one encoding)
    transient_bytes: int
    optimizer_transient_bytes: int  # the PyTorch AdamW's denominators; 0 for the Triton kernel
    library_bytes: int  # cuBLAS workspaces on a GPU; 0 on the CPU
    cache_bytes: int | None  # frozen-prefix cache for `cache_examples`, if the trainer would keep one
    peak_bytes: int  # weights + gradients + AdamW state + the larger of the two moments + libraries
    batch_size: int
    length: int
    precision: str
    backend: str

    def as_dict(self) -> dict:
        return asdict(self)


CALIBRATED_LETTERS = ("F", "S", "I", "G")  # pieces the probes build: whole BERT pieces, trainable or frozen


class UncalibratedPlan(ValueError):
    """A plan with pieces the calibration does not probe (LoRA and BitFit pieces, so far)."""


def piece_roles(plan: SharingPlan) -> list[tuple[str, str | None]]:
    """(piece, role) bottom to top for one task's stack; role None = in the frozen prefix (saves nothing)."""
    unknown = sorted({a.letter for _, a in plan.pieces()} - set(CALIBRATED_LETTERS))
    if unknown:
        raise UncalibratedPlan(f"plan {str(plan)!r}: no activation calibration for {', '.join(unknown)} pieces yet; "
                               f"predictions cover {', '.join(CALIBRATED_LETTERS)}")
    roles = []
    prefix = plan.frozen_prefix_length()
    for index, (piece, assignment) in enumerate(plan.pieces()):
        if index < prefix:
            roles.append((piece, None))
        elif index == prefix:
            roles.append((piece, "first"))  # the first piece with autograd: its input has no gradient
        else:
            roles.append((piece, "through" if assignment.frozen else "trainable"))
    return roles


def _kind(piece: str) -> str:
    return "layer" if piece.startswith("layer.") else piece


def predict(model: MultitaskBert, batch_size: int, length: int, precision: Precision, backend: str = "torch",
            pair_encoding: str = "joint", cache_examples: int | None = None, length_b: int | None = None) -> Prediction:
    """The estimated peak of one training step of `model` at `batch_size` x `length` tokens (a joint
    pair's length, or the first sentences' under siamese encoding, the second ones' being
    `length_b`, by default the same)."""
    config = model.config
    device = "cuda" if precision.device_type == "cuda" else "cpu"
    tasks = list(model.tasks.values())
    head_kinds = tuple(sorted({(t.kind, t.num_labels, t.pair) for t in tasks}))
    calibration = calibrate(tuple(sorted(vars(config).items())), backend, precision, device, head_kinds)
    roles = piece_roles(model.plan)
    def stack_bytes(tokens: int) -> dict[str, int]:
        return {piece: calibration.pieces[(_kind(piece), role)].bytes(batch_size, tokens) if role else 0
                for piece, role in roles}

    per_piece = stack_bytes(length)
    second = sum(stack_bytes(length_b or length).values())
    whole_frozen = all(role is None for _, role in roles)
    per_task = {}
    for task in tasks:
        siamese = task.pair and pair_encoding == "siamese"
        head = calibration.heads[(_head_key(task), siamese, not whole_frozen)].bytes(batch_size, 1)
        per_task[task.name] = sum(per_piece.values()) + (second if siamese else 0) + head
    layer_forward = calibration.pieces[("layer", "trainable")].bytes(batch_size, length)
    prefix_layers = any(role is None and piece.startswith("layer.") for piece, role in roles)
    transient = max([*per_piece.values(), layer_forward if prefix_layers else 0])
    counted = account(model.parameters())
    activations = max(per_task.values())
    optimizer_transient = adamw_step_buffer_bytes(counted.grad_bytes, backend, torch.device(device))
    library = library_workspace_bytes(torch.device(device), precision)
    cache = None
    if cache_examples is not None and model.frozen_prefix:
        vectors = cache_examples if model.prefix_is_whole_encoder else cache_examples * length
        cache = vectors * config.hidden_size * precision.dtype.itemsize
    held = counted.weight_bytes + counted.grad_bytes + counted.optimizer_bytes
    peak = held + max(activations + transient, optimizer_transient) + library
    return Prediction(counted.weight_bytes, counted.grad_bytes, counted.optimizer_bytes, activations, per_task,
                      per_piece, transient, optimizer_transient, library, cache, peak, batch_size, length,
                      precision.name, backend)


def adamw_step_buffer_bytes(grad_bytes: int, backend: str, device: torch.device) -> int:
    """What an AdamW step builds while the gradients are held: the PyTorch (foreach) step makes
    sqrt(v) + eps for every trainable tensor, fp32 like the gradients; the Triton kernel, nothing."""
    fused = backend == "triton" or (backend == "auto" and resolve_for_device("auto", device, "adamw") == "triton")
    return 0 if fused else grad_bytes


@functools.lru_cache(maxsize=8)
def library_workspace_bytes(device: torch.device, precision: Precision) -> int:
    """What the CUDA math libraries keep from PyTorch's allocator once a training step has run (0 on
    the CPU). cuBLAS keeps one workspace per thread and stream (32 MiB each on Hopper, less on older
    GPUs, set by CUBLAS_WORKSPACE_CONFIG): a small linear layer runs forward and backward on a
    stream of its own, so both threads make new workspaces there, and what stays allocated is theirs."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        layer = torch.nn.Linear(64, 64, device=device)
        x = torch.randn(8, 64, device=device, requires_grad=True)
        with precision.autocast():
            y = layer(x)
        y.float().sum().backward()
        del layer, x, y
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.memory_allocated(device) - before)


def predict_for(pretrained: BertModel, plan: SharingPlan, tasks: list[Task], batch_size: int, length: int,
                precision: Precision, pair_encoding: str = "joint", cache_examples: int | None = None) -> Prediction:
    """Build the plan's model from `pretrained` and predict its step (what `mops plan` prints)."""
    model = MultitaskBert(pretrained, plan, tasks, HeadConfig(pair_encoding))
    return predict(model, batch_size, length, precision, pretrained.backend, pair_encoding, cache_examples)


def measure_step_activations(model: MultitaskBert, task: str, inputs: dict, labels: torch.Tensor,
                             precision: Precision) -> int:
    """The saved-tensor bytes of one real training step of `task` (forward, loss, backward),
    counted as the calibration counts them: what the prediction's activations stand for."""
    model.train()
    with saved_tensor_bytes(exclude=model.parameters()) as saved, precision.autocast():
        loss = model.loss(task, model(task, **inputs), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return saved[0]
