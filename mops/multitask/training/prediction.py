"""Predict a plan's peak training memory before running it.

A training step holds the weights, the gradients and AdamW's two moments of the trainable
tensors (counted from the built model by mops.multitask.sharing.accounting), plus what autograd keeps for
the backward: the activations. Those come from a calibration, not a guess. One probe step of one
piece of the model's shape (embeddings, an encoder layer, the pooler or the weightless pooling,
each task's head and loss)
runs under `torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd saves;
their storages are counted once each, parameters left out (they are weights). Three probe shapes
fit

    saved(B, L) = B * (per_token * L + per_token_pair * L**2) + fixed

per piece, so any batch and length follow; the L**2 term is attention's where it keeps scores.

What a piece saves depends on where it sits in the step and what of it trains, so each is
probed in the roles a plan gives it:
    first      trainable, its input needs no gradient (right above the frozen prefix)
    trainable  trainable, its input needs a gradient
    through    frozen above a trainable piece: gradients pass through, its weights get none
    lora-first, lora-trainable      a frozen base with LoRA updates (L), input without / with gradient
    bitfit-first, bitfit-trainable  frozen matrices with trainable biases and norms (B)
Pieces with nothing trainable in or below them (the frozen prefix; embeddings under L, which
have no update) run without autograd state and save nothing; the prefix's forward is a
transient, as is each piece's backward. Each fit is probed the first time a plan needs it.

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

from mops.kernels.dispatch import resolve_for_device
from mops.minbert import BertConfig
from mops.minbert.model import BertEmbeddings, BertLayer, BertPooler
from mops.multitask.data.tasks import Task
from mops.multitask.sharing.accounting import account, mib
from mops.multitask.sharing.bitfit import bitfit_copies
from mops.multitask.sharing.lora import LoRAConfig, lora_copies
from mops.multitask.sharing.model import HeadConfig, MultitaskBert, make_head, task_loss
from mops.multitask.sharing.plan import SharingPlan
from mops.multitask.sharing.pooling import weightless_pooling
from mops.multitask.training.precision import Precision

ROLES = ("first", "trainable", "through", "lora-first", "lora-trainable", "bitfit-first", "bitfit-trainable")
ADAPTATIONS = {"L": "lora", "B": "bitfit"}  # plan letter -> the role prefix of its pieces
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


def _batch(config: BertConfig, batch: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(min(1000, config.vocab_size // 2), config.vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # some padding, as in any bucketed batch
    return ids.to(device), mask.to(device)


def _probe_piece(kind: str, role: str, config: BertConfig, backend: str, precision: Precision,
                 device: torch.device, batch: int, length: int, lora: LoRAConfig | None) -> int:
    torch.manual_seed(0)
    piece = {"embeddings": lambda: BertEmbeddings(config, backend), "layer": lambda: BertLayer(config, backend),
             "pooler": lambda: BertPooler(config), "mean": lambda: weightless_pooling("mean"),
             "cls": lambda: weightless_pooling("cls")}[kind]()
    adaptation, _, position = role.rpartition("-")  # "lora-first" -> ("lora", "first"); "first" -> ("", "first")
    if adaptation == "lora":  # the base frozen, the updates trainable, as the model builds an L piece
        piece = lora_copies(piece, ("probe",), kind, lora)["probe"]
    elif adaptation == "bitfit":
        piece = bitfit_copies(piece, ("probe",))["probe"]
    else:
        piece.requires_grad_(role != "through")
    piece = piece.to(device)
    piece.train(role != "through")  # frozen pieces run in eval mode: no dropout masks to keep
    ids, mask = _batch(config, batch, length, device)
    hidden = torch.randn(batch, length, config.hidden_size, device=device, requires_grad=position != "first")
    with saved_tensor_bytes(exclude=piece.parameters()) as saved, precision.autocast():
        if kind == "embeddings":
            out = piece(ids, torch.zeros_like(ids))
        elif kind in ("layer", "mean", "cls"):
            out = piece(hidden, mask)
        else:
            out = piece(hidden)
    out.float().sum().backward()
    return saved[0]


def _probe_head(task: Task, head_config: HeadConfig, input_grad: bool, hidden_size: int, precision: Precision,
                device: torch.device, batch: int) -> int:
    torch.manual_seed(0)
    siamese = head_config.siamese(task)
    head = make_head(hidden_size, task, head_config).to(device).train()
    pooled = [torch.randn(batch, hidden_size, device=device, requires_grad=input_grad)
              for _ in range(2 if siamese else 1)]
    labels = (torch.rand(batch, device=device) * 5 if task.kind == "regression"
              else torch.randint(task.num_labels, (batch,), device=device))
    with saved_tensor_bytes(exclude=head.parameters()) as saved, precision.autocast():
        outputs = head(*pooled)
        loss = task_loss(task, outputs, labels, head_config.scale_regression)  # the trainer's loss
    loss.backward()
    return saved[0]


@functools.lru_cache(maxsize=256)
def piece_fit(config_items: tuple, backend: str, precision: Precision, device: str, kind: str, role: str,
              lora_items: tuple = ()) -> Fit:
    """The fit of one piece kind in one role, probed once per model shape, backend, precision and
    device (and LoRA settings, for the lora roles)."""
    config = BertConfig(**dict(config_items))
    lora = LoRAConfig(**dict(lora_items)) if lora_items else None
    return Fit.from_probes({(b, l): _probe_piece(kind, role, config, backend, precision, torch.device(device), b, l, lora)
                            for b, l in PROBES})


@functools.lru_cache(maxsize=64)
def head_fit(hidden_size: int, precision: Precision, device: str, name: str, kind: str, num_labels: int, pair: bool,
             label_range: tuple[float, float], head_config: HeadConfig, input_grad: bool) -> Fit:
    """The fit of one task head and its loss (bytes per row plus a fixed part); the task's name
    says which head `head_config` gives it (e.g. a cosine head for a task in `cosine_tasks`)."""
    task = Task(name=name, kind=kind, num_labels=num_labels, metric="", pair=pair, loader=lambda split: [],
                label_range=label_range)
    measured = {b: _probe_head(task, head_config, input_grad, hidden_size, precision, torch.device(device), b)
                for b in (2, 4)}
    per_row = (measured[4] - measured[2]) / 2
    return Fit(per_row, 0.0, measured[2] - 2 * per_row)


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

    def describe(self, calibrated_on: str) -> str:
        """The step's memory for the command line, term by term, as `SharingPlan.describe` tells its pieces."""
        largest = max(self.activation_bytes_per_task, key=self.activation_bytes_per_task.get)
        pieces = ", ".join(f"{piece} {mib(n)}" for piece, n in self.activation_bytes_per_piece.items())
        return "\n".join([
            f"one training step at batch {self.batch_size} x {self.length} tokens ({self.precision}, "
            f"{self.backend} kernels), calibrated on {calibrated_on}:",
            f"activations kept for the backward: {mib(self.activation_bytes)} (largest task: {largest}); "
            f"per piece: {pieces}",
            f"largest transient: {mib(self.transient_bytes)}; AdamW's step buffers: "
            f"{mib(self.optimizer_transient_bytes)}; math-library workspaces: {mib(self.library_bytes)}",
            f"estimated peak: {mib(self.peak_bytes)} (weights + gradients + AdamW state + the larger of "
            f"activations + the largest transient and AdamW's step buffers + workspaces)",
        ])


def _trains(piece: str, assignment) -> bool:
    """Whether any tensor of the piece trains (the embeddings under L have no update)."""
    return not assignment.frozen and not (assignment.letter == "L" and piece == "embeddings")


def piece_roles(plan: SharingPlan, pooling: str = "pooler") -> list[tuple[str, str | None]]:
    """(piece, role) bottom to top for one task's stack; role None: nothing in or below the piece
    trains, so it keeps nothing for the backward (the frozen prefix, the embeddings under L). A
    weightless pooling in the pooler's place never trains: gradients only pass through it."""
    roles, below_trains = [], False
    for piece, assignment in plan.pieces():
        trains = _trains(piece, assignment) and not (piece == "pooler" and pooling != "pooler")
        if not (trains or below_trains):
            roles.append((piece, None))
        elif not trains:
            roles.append((piece, "through"))
        else:
            adaptation = ADAPTATIONS.get(assignment.letter)
            position = "trainable" if below_trains else "first"
            roles.append((piece, f"{adaptation}-{position}" if adaptation else position))
        below_trains = below_trains or trains
    return roles


def _kind(piece: str, pooling: str) -> str:
    """The probe kind of a piece: embeddings, layer, pooler, or the weightless pooling in its place."""
    if piece == "pooler":
        return pooling
    return "layer" if piece.startswith("layer.") else piece


def predict(model: MultitaskBert, batch_size: int, length: int, precision: Precision, backend: str = "torch",
            cache_examples: int | None = None, length_b: int | None = None) -> Prediction:
    """The estimated peak of one training step of `model` at `batch_size` x `length` tokens (a joint
    pair's length, or the first sentences' under siamese encoding, the second ones' being
    `length_b`, by default the same)."""
    config = model.config
    device = "cuda" if precision.device_type == "cuda" else "cpu"
    tasks = list(model.tasks.values())
    config_items = tuple(sorted(vars(config).items()))
    lora_items = tuple(sorted(asdict(model.lora_config).items()))
    head_config = model.head_config
    roles = piece_roles(model.plan, model.pooling)

    def fit(kind: str, role: str) -> Fit:
        return piece_fit(config_items, backend, precision, device, kind, role,
                         lora_items if role.startswith("lora") else ())

    def stack_bytes(tokens: int) -> dict[str, int]:
        return {piece: fit(_kind(piece, model.pooling), role).bytes(batch_size, tokens) if role else 0
                for piece, role in roles}

    per_piece = stack_bytes(length)
    second = sum(stack_bytes(length_b or length).values())
    whole_frozen = all(role is None for _, role in roles)
    per_task = {}
    for task in tasks:
        siamese = head_config.siamese(task)
        head = head_fit(config.hidden_size, precision, device, task.name, task.kind, task.num_labels, task.pair,
                        task.label_range, head_config, not whole_frozen).bytes(batch_size, 1)
        per_task[task.name] = sum(per_piece.values()) + (second if siamese else 0) + head
    prefix_layers = any(role is None and piece.startswith("layer.") for piece, role in roles)
    # a frozen prefix layer's forward holds about what a trainable layer saves, before it is freed
    layer_forward = fit("layer", "trainable").bytes(batch_size, length) if prefix_layers else 0
    transient = max([*per_piece.values(), layer_forward])
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
