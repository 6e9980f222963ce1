"""TrainConfig: the one source of every training setting.

Each field carries its help text and, where it has them, its choices (the same constants the
code validates against). The command line builds its training options from these fields,
sweep TOML files set them by name under `[train]`, and `results.json` records all of them, so a
new field needs no other edit to appear in all three.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from mops.kernels import BACKENDS
from mops.multitask.data.examples import TASK_KINDS
from mops.multitask.data.tasks import TASK_NAMES
from mops.multitask.sharing.lora import LORA_TARGETS, LoRAConfig
from mops.multitask.sharing.model import PAIR_ENCODINGS, POOLINGS, HeadConfig
from mops.multitask.training.graphs import CUDA_GRAPHS
from mops.multitask.training.precision import PRECISIONS
from mops.multitask.training.sampling import SAMPLINGS
from mops.multitask.training.schedule import SCHEDULES

PAIR_TASKS = tuple(name for name, kind in TASK_KINDS.items() if kind.is_pair)


# What a setting is to a run, the one list every part reads (each field's `role`):
#   "fixed"      identifies the run and may not change when it resumes (the default)
#   "resumable"  identifies the run (its id in a sweep) but may change when it resumes: budgets,
#                how often it evaluates, how its steps execute
#   "place"      where and how visibly it runs: neither part of its id nor fixed (a run moved or
#                copied elsewhere goes on there; runs that differ only here are one measurement)
ROLES = ("fixed", "resumable", "place")

# The ranges a number may take, as each field's `bounds` says: every number is checked for its
# type, for being finite and for its range where it is parsed (command line, sweep TOML, Python).
BOUNDS = {
    "positive": (lambda v: v > 0, "positive"),
    "non-negative": (lambda v: v >= 0, "zero or more"),
    "fraction": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "share": (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
}


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def setting(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None, *,
            factory: Any = dataclasses.MISSING, flag: str | None = None, role: str = "fixed",
            bounds: str | None = None) -> Any:
    """A TrainConfig field with its help text, its valid values (`choices`, or for a number its
    `bounds`, see BOUNDS), its role (see ROLES) and, rarely, a flag that is not `--field-name`
    (e.g. `--out` for `out_dir`, `--quiet` for `progress`)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if bounds is not None and bounds not in BOUNDS:
        raise ValueError(f"bounds must be one of {tuple(BOUNDS)}, got {bounds!r}")
    metadata = {"help": help, "choices": choices, "flag": flag, "role": role, "bounds": bounds}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    tasks: list[str] = setting(factory=lambda: ["sst", "para", "sts"], choices=TASK_NAMES,
                               help="tasks to train together")
    plan: str | None = setting(None, "sharing plan, bottom to top, e.g. FFSSII, F2S2I2, F2S2[sst+para|sts]2 "
                                     "(default: every layer shared); see `mops plan --help`")
    checkpoint: str = setting("minilm", "pretrained checkpoint folder or name (minilm: the embedded "
                                        "all-MiniLM-L6-v2); 'random' for an untrained encoder")
    data: str = setting("demo", "folder with the CS224N files, or 'demo' for the synthetic corpus")
    hidden_size: int | None = setting(None, "width of a random encoder (checkpoint 'random'; default: the embedded "
                                            "checkpoint's)", bounds="positive")
    num_layers: int | None = setting(None, "depth of a random encoder (checkpoint 'random'; default: the embedded "
                                           "checkpoint's)", bounds="positive")
    epochs: float | None = setting(None, "budget in passes over all tasks' training batches "
                                         "(the first budget reached stops; 1 epoch when no budget is given)",
                                   role="resumable", bounds="positive")
    steps: int | None = setting(None, "budget in optimizer steps (default: none)", role="resumable", bounds="positive")
    seconds: float | None = setting(None, "budget in seconds of training (default: none)",
                                    role="resumable", bounds="positive")
    stop_at: float | None = setting(None, "end the run once this fraction of its budget is spent, the schedule "
                                          "still laid over the whole budget; run it again without this to go on "
                                          "(how `mops advise` probes a run's beginning)",
                                    role="resumable", bounds="share")
    batch_size: int = setting(32, "examples per batch", bounds="positive")
    lr: float = setting(5e-5, "peak learning rate", bounds="positive")
    schedule: str = setting("linear", "learning-rate schedule: linear warm-up then decay to 0, or constant",
                            SCHEDULES)
    warmup: float = setting(0.1, "fraction of the budget spent warming up (linear schedule)", bounds="fraction")
    weight_decay: float = setting(0.0, "AdamW weight decay", bounds="non-negative")
    max_length: int = setting(128, "tokens per example after truncation", bounds="positive")
    sampling: str = setting("proportional", "which task each step trains", SAMPLINGS)
    pair_encoding: str = setting("joint", "sentence pairs: joint ([CLS] a [SEP] b [SEP]) or siamese "
                                          "(each sentence alone)", PAIR_ENCODINGS)
    pooling: str = setting("mean", "sentence vector the heads read: mean (of real tokens' last hidden states, as "
                                   "the embedded checkpoint was trained), cls (the raw [CLS] state) or pooler "
                                   "(tanh-dense over [CLS]; the plan's pooler piece exists only then)", POOLINGS)
    cosine_tasks: list[str] = setting(factory=list, choices=PAIR_TASKS,
                                      help="pair tasks scored by the cosine similarity of their two sentences, each "
                                           "encoded alone, times a learned scale plus a learned shift (the other "
                                           "pair tasks follow --pair-encoding)")
    scale_regression: bool = setting(False, "train regression heads on targets scaled to [0, 1] (STS: 0-5) "
                                            "instead of the raw scores; predictions are reported on the label "
                                            "scale either way")
    symmetric_pairs: bool = setting(False, "pair tasks are symmetric (a, b means what b, a means): train each batch "
                                           "of pairs in a random order and predict the mean over both orders "
                                           "(cosine heads are symmetric already)")
    head_dropout: float = setting(0.1, "dropout before each linear task head", bounds="fraction")
    dropout: float | None = setting(None, "encoder dropout everywhere (default: the checkpoint's)", bounds="fraction")
    lora_rank: int = setting(8, "inner width of each LoRA update (plan letter L)", bounds="positive")
    lora_alpha: float = setting(16.0, "LoRA scaling numerator: updates are scaled by alpha / rank", bounds="positive")
    lora_dropout: float = setting(0.0, "dropout on the input of each LoRA update", bounds="fraction")
    lora_targets: list[str] = setting(factory=lambda: list(LORA_TARGETS), choices=tuple(LORA_TARGETS),
                                      help="linear layers of an L layer that get a LoRA update (an L pooler "
                                           "always adapts its dense layer)")
    eval_every: int | None = setting(None, "steps between dev evaluations (default: once per epoch)",
                                     role="resumable", bounds="positive")
    max_train_examples: int | None = setting(None, "cap each training set (quick looks; default: the whole set)",
                                             bounds="positive")
    max_eval_examples: int | None = setting(None, "cap each dev set at a random sample of this many (the same for "
                                                                   "every run; quick looks; default: the whole set)",
                                            bounds="positive")
    seed: int = setting(0, "seed of initialisation, batching and dropout")
    backend: str = setting("auto", "kernels for the encoder: auto (per op, the one measured faster on this "
                                   "GPU; PyTorch where nothing was measured and on the CPU), torch, or triton",
                           BACKENDS)
    precision: str = setting("auto", "autocast: auto (bf16 on a GPU that has it, fp16 with loss scaling on one "
                                     "that does not, fp32 on the CPU), bf16, fp16 or fp32; weights and AdamW "
                                     "state stay fp32", PRECISIONS)
    cache_frozen: bool = setting(True, "keep the frozen prefix's outputs after an example's first pass, so "
                                       "frozen layers cost nothing in later epochs (host memory; GPU memory where "
                                       "it fits a quarter of the free memory)", role="resumable")
    pad_multiple: int | None = setting(None, "pad each batch's length up to a multiple of this, so a run sees "
                                             "few distinct shapes (default: 16 on a GPU, 1 on the CPU)",
                                       bounds="positive")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", role="place")
    out_dir: str = setting("runs/latest", "run folder: last.pt, best.pt, results.json", flag="--out", role="place")
    progress: bool = setting(True, "no progress bars", flag="--quiet", role="place")
    cuda_graphs: str = setting("auto", "replay each training and evaluation step as a CUDA graph: on, off, or auto "
                                       "(on only where a committed GPU measurement shows it faster)", CUDA_GRAPHS,
                            role="resumable")
    check_every: int = setting(25, "steps between reads of the device-side loss check and the progress bar's "
                                   "loss (each read waits for the GPU)", role="resumable", bounds="positive")

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None and self.seconds is None:
            self.epochs = 1.0
        for spec in dataclasses.fields(self):
            _check_type_and_bounds(spec, getattr(self, spec.name))
        if not self.out_dir.strip():
            raise ValueError("out_dir is empty; name the run folder (--out)")
        for spec in dataclasses.fields(self):
            choices, value = spec.metadata["choices"], getattr(self, spec.name)
            if choices is None:
                continue
            valid = ", ".join(map(str, choices))
            if isinstance(value, list):
                unknown = [v for v in value if v not in choices]
                if unknown:
                    noun = spec.name.removesuffix("s")
                    raise ValueError(f"unknown {noun}(s) {', '.join(map(str, unknown))}; choose from {valid}")
            elif value not in choices:
                raise ValueError(f"{spec.name} must be one of {valid}; got {value!r}")
        if not self.tasks:
            raise ValueError(f"no tasks given; choose from {', '.join(TASK_NAMES)}")
        if not self.lora_targets:
            raise ValueError(f"lora_targets names no layer; choose from {', '.join(LORA_TARGETS)}")
        absent = [name for name in self.cosine_tasks if name not in self.tasks]
        if absent:
            raise ValueError(f"cosine_tasks names {', '.join(absent)}, which the run does not train "
                             f"(tasks: {', '.join(self.tasks)})")

    def lora(self) -> LoRAConfig:
        """The LoRA settings of `L` pieces, as the model builder takes them."""
        return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, tuple(self.lora_targets))

    def identity(self) -> dict:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        return {k: v for k, v in dataclasses.asdict(self).items() if role_of(k) == "fixed"}

    def measured(self) -> dict:
        """The settings that make a run the measurement it is (a sweep's run id): all but the place."""
        return {k: v for k, v in dataclasses.asdict(self).items() if role_of(k) != "place"}


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_type_and_bounds(spec: dataclasses.Field, value: Any) -> None:
    """A setting's value has its field's type (ints where floats go; never a bool for a number),
    is finite, and lies in its bounds: ValueError naming the setting otherwise."""
    kind = _field_types()[spec.name]
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return
    if typing.get_origin(kind) is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{spec.name} must be a list of names, got {value!r}")
        return
    accepted = (int, float) if kind is float else (kind,)
    if not isinstance(value, accepted) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{spec.name} must be {TYPE_NAMES[kind]}, got {value!r}")
    if kind in (int, float) and not math.isfinite(value):
        raise ValueError(f"{spec.name} must be a finite number, got {value!r}")
    bounds = spec.metadata["bounds"]
    if bounds is not None and not BOUNDS[bounds][0](value):
        raise ValueError(f"{spec.name} must be {BOUNDS[bounds][1]}, got {value!r}")


def role_of(name: str) -> str:
    """A setting's role (see ROLES); KeyError for a name that is no setting."""
    return _ROLES[name]


def settings_with_role(*roles: str) -> tuple[str, ...]:
    """The settings whose role is one of `roles`, in field order."""
    return tuple(name for name, role in _ROLES.items() if role in roles)


def head_config(config: TrainConfig) -> HeadConfig:
    """How the model reads the encoder and what its task heads are, from the training settings."""
    return HeadConfig(config.pair_encoding, config.head_dropout, config.pooling, tuple(config.cosine_tasks),
                      config.scale_regression, config.symmetric_pairs)


_ROLES = {spec.name: spec.metadata["role"] for spec in dataclasses.fields(TrainConfig)}
