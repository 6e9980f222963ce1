"""Export one task's trained encoder from a run folder as a standard BERT checkpoint folder.

The folder holds what `transformers.BertModel.from_pretrained` and minBERT's own
`BertModel.from_pretrained` read: `config.json`, `model.safetensors` (the task's copy of every
piece, each LoRA update merged into its base weight, each BitFit bias and norm in place),
`vocab.txt` and the tokenizer files of the run's checkpoint. The task's head goes beside it in
`head.safetensors` (`weight`, `bias` of a linear head; `scale`, `shift` of a cosine head),
described by `head.json`, which also names the pooling the head reads. A run that pooled
without the pooler (mean, cls) never used one: the folder carries the starting checkpoint's
pooler (a random encoder's own), so it stays a complete BERT checkpoint.

The weights come from the run's `best.pt`: the state with the best overall dev score. Every check
runs before anything is written; the files go to a temporary folder beside the target, each
through `atomic_write`, and the folder is renamed into place only once complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save

from mops.common.files import atomic_write
from mops.minbert import BertModel, save_pretrained
from mops.minbert.checkpoint import CheckpointError, load_state_into, read_checkpoint
from mops.multitask.sharing.lora import merge
from mops.multitask.sharing.model import state_prefix
from mops.multitask.training.assembly import RunParts, assemble, encoder_shape
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.run_files import BEST_FILE, LAST_FILE, CheckpointRefused, load_checkpoint

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
HEAD_WEIGHTS, HEAD_JSON = "head.safetensors", "head.json"


class ExportError(ValueError):
    """A run folder or task that cannot be exported; nothing was written."""


@dataclasses.dataclass
class ExportedTask:
    out_dir: Path
    source: Path  # the run file the weights came from
    step: int  # the training step of those weights
    files: list[str]


def export_task(run_dir: str | os.PathLike, task: str, out_dir: str | os.PathLike) -> ExportedTask:
    """Write `task`'s encoder of the run in `run_dir` to `out_dir` (which must not exist or be empty)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    saved, config = _read_run(run_dir)
    if task not in saved["tasks"]:
        raise ExportError(f"{run_dir} trained tasks {', '.join(saved['tasks'])}, not {task!r}; "
                          f"pass one of them with --task")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not an empty folder; choose a new folder or remove it")

    bert_config, tokenizer_dir = encoder_shape(config)
    with torch.device("meta"):  # the run's parts need the encoder's shape, not its weights
        run = assemble(config, encoder=BertModel(bert_config, backend="torch"))
    plan = run.parse(saved["plan"])
    with_pooler = config.pooling == "pooler"
    state = task_encoder_state(saved["model"], plan, task, run.lora.scaling, with_pooler)
    encoder = BertModel(bert_config, backend="torch")
    if not with_pooler:
        state.update(_starting_pooler(config, encoder))
    try:
        load_state_into(encoder, state, f"{run_dir / BEST_FILE} (task {task})")
    except CheckpointError as err:
        raise ExportError(f"{err}; was {run_dir} trained with another checkpoint than {config.checkpoint!r}?") from err
    head_state, head_info = _head(saved, run, task)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the export is an ordinary folder
        save_pretrained(encoder, staging)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                atomic_write(staging / name, (tokenizer_dir / name).read_bytes())
        atomic_write(staging / HEAD_WEIGHTS, save(head_state))
        atomic_write(staging / HEAD_JSON, json.dumps(head_info, indent=2) + "\n")
        files = sorted(p.name for p in staging.iterdir())
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportedTask(out_dir, run_dir / BEST_FILE, saved["step"], files)


def task_encoder_state(model_state: dict[str, torch.Tensor], plan, task: str,
                       lora_scaling: float, with_pooler: bool = True) -> dict[str, torch.Tensor]:
    """The Hugging Face-named encoder weights `task` runs through in a MultitaskBert state dict:
    its copy of every piece (the pooler only `with_pooler`), each LoRA update merged into its base."""
    state: dict[str, torch.Tensor] = {}
    for piece, assignment in plan.pieces():
        if piece == "pooler" and not with_pooler:
            continue
        prefix = state_prefix(piece, assignment.key_of(task))
        target = "encoder." + piece + "." if piece.startswith("layer.") else piece + "."
        own = {name[len(prefix):]: tensor for name, tensor in model_state.items() if name.startswith(prefix)}
        if not own:
            raise ExportError(f"the run's weights hold no {piece} copy {prefix!r}; is best.pt from this plan?")
        for name, tensor in own.items():
            if name.endswith((".lora_A", ".lora_B")):
                continue
            stem = name.removesuffix(".weight")
            if f"{stem}.lora_A" in own:
                tensor = merge(tensor, own[f"{stem}.lora_A"], own[f"{stem}.lora_B"], lora_scaling)
            state[target + name] = tensor.detach().cpu().contiguous()
    return state


def _starting_pooler(config: TrainConfig, encoder: BertModel) -> dict[str, torch.Tensor]:
    """The pooler weights the run started from and never used: the checkpoint's, or a random
    encoder's freshly initialised ones."""
    if config.checkpoint == "random":
        source = encoder.state_dict()
    else:
        _, source, _ = read_checkpoint(config.checkpoint)
    return {k: v.detach().cpu().contiguous() for k, v in source.items() if k.startswith("pooler.")}


def _read_run(run_dir: Path) -> tuple[dict, TrainConfig]:
    """best.pt's contents and the run's settings (from best.pt, or last.pt for older runs)."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a folder; pass the run folder that `mops train --out` wrote")
    best = run_dir / BEST_FILE
    if not best.is_file():
        raise ExportError(f"{run_dir} has no {BEST_FILE}: no checkpoint to export; train a run there first")
    retrain = f"retrain the run (`mops train --fresh --out {run_dir}` with its settings) to export it"
    try:
        saved = load_checkpoint(best, retrain)
        settings = saved.get("config")
        if settings is None and (run_dir / LAST_FILE).is_file():
            settings = load_checkpoint(run_dir / LAST_FILE, retrain).get("config")
    except CheckpointRefused as err:
        raise ExportError(str(err)) from err
    if settings is None:
        raise ExportError(f"{best} records no run settings (written before `mops export` existed) and there is "
                          f"no {LAST_FILE} beside it; retrain the run to export it")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return saved, TrainConfig(**{k: v for k, v in settings.items() if k in names})


def _head(saved: dict, run: RunParts, task: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The task head's weights and the JSON that says how to apply them."""
    config, head = run.config, run.head
    (record,) = [t for t in run.tasks if t.name == task]
    siamese, symmetric = head.siamese(record), head.symmetric(record)
    cosine = task in config.cosine_tasks
    prefix = f"heads.{task}." if cosine else f"heads.{task}.linear."
    state = {name.removeprefix(prefix): t.detach().cpu().contiguous()
             for name, t in saved["model"].items() if name.startswith(prefix)}
    pooled = {"pooler": "pooler_output", "cls": "last_hidden_state[:, 0]",
              "mean": "the mean of last_hidden_state over the tokens attention_mask marks real"}[config.pooling]
    if cosine:
        weights = f"{HEAD_WEIGHTS}: scale (), shift (); score = scale * cosine(u, v) + shift"
        output = ("regression score" if record.kind == "regression"
                  else "the logit of class 1 (class 0's is 0)")
    else:
        weights = (f"{HEAD_WEIGHTS}: weight ({state['weight'].shape[0]}, {state['weight'].shape[1]}), "
                   f"bias ({state['bias'].shape[0]},); outputs = input @ weight.T + bias")
        output = "regression score" if record.kind == "regression" else "class logits (argmax = label)"
    if symmetric:
        output += ("; a pair is read in both orders, (a, b) and (b, a), and the prediction is the mean score"
                   if record.kind == "regression" else
                   "; a pair is read in both orders, (a, b) and (b, a), and the label is the argmax of the mean "
                   "of the two softmax probabilities")
    if record.kind == "regression" and config.scale_regression:
        low, high = record.label_range
        output += f" on [0, 1]: the label is {low:g} + {high - low:g} * score"
    info = {
        "task": task,
        "kind": record.kind,
        "num_labels": record.num_labels,
        "metric": record.metric,
        "pair": record.pair,
        "pair_encoding": ("siamese" if siamese else "joint") if record.pair else None,
        "pooling": config.pooling,
        "pooled": pooled,
        "input": ("cosine(u, v) of the pooled vectors u, v of each sentence encoded alone" if cosine
                  else "concat(u, v, |u - v|, u * v) of the pooled vectors u, v of each sentence encoded alone"
                  if siamese else "the pooled vector"),
        "symmetric": symmetric,  # trained in both orders
        "weights": weights,
        "output": output,
        "plan": saved["plan"],
        "tasks": list(saved["tasks"]),
        "step": saved["step"],
        "dev_metrics": saved.get("metrics"),
    }
    return state, info
