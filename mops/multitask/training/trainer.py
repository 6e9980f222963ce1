"""The multitask trainer: one sharing plan, a budget, dev metrics over time, resumable.

A run's directory holds `last.pt` (everything needed to resume), `best.pt` (the weights
with the best overall dev score) and `results.json` (the run record). Every file is written
to a temporary name and renamed into place, so a killed run never leaves a torn file.

The training step (`_step`) is capture-safe: device work only, the same launches at every call.
The host writes the step's schedule position into a device tensor before it, AdamW keeps its
counts on the device, dropout draws its seeds there, and the loss check and the progress bar's
loss are read from a device-side ledger every `check_every` steps, not after every step. So the
step compiles whole (`torch.compile(fullgraph=True)`) and replays as a CUDA graph (`graphs.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import mops.kernels.adamw
from mops.common.files import atomic_write_json
from mops.common.machine import device_name, versions
from mops.kernels.dispatch import resolved_backends
from mops.minbert import AdamW, BertTokenizer
from mops.multitask.data.tasks import Task, overall_score, score
from mops.multitask.sharing.accounting import account_model
from mops.multitask.training.assembly import assemble
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.devices import rank_and_world, training_device
from mops.multitask.training.graphs import CudaCapture, GraphedSteps, resolve_graphs
from mops.multitask.training.ledger import StepLedger
from mops.multitask.training.precision import resolve_precision
from mops.multitask.training.prefix_cache import FrozenPrefixCache, PrefixOutput, open_cache
from mops.multitask.training.record import SCHEMA
from mops.multitask.training.run_files import (
    BEST_FILE,
    LAST_FILE,
    RESULTS_FILE,
    hold_run_folder,
    load_checkpoint,
    save_checkpoint,
)
from mops.multitask.training.sampling import task_at_step
from mops.multitask.training.schedule import lr_factor_tensor
from mops.multitask.training.task_data import NoTrainingData, TaskData, load_task_data


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, a checkpoint from another configuration)."""


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        memory_sampler: Callable[[torch.device], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        self.config = config
        self.memory_sampler = memory_sampler
        self.rank, self.world = rank_and_world()
        self.distributed = dist.is_available() and dist.is_initialized()
        self.device = training_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.kernels = resolved_backends(config.backend, self.device)  # op -> backend; refuses before any work
        self.scaler = self.precision.grad_scaler()
        self.pad_multiple = config.pad_multiple or (16 if self.device.type == "cuda" else 1)
        self.out_dir = Path(config.out_dir)
        self.already_finished = False  # set by train() for a run whose budget was spent before

        run = assemble(config)
        self.plan, self.head = run.plan, run.head
        self.tokenizer = BertTokenizer.from_pretrained(None if config.checkpoint == "random" else config.checkpoint)
        self.data = [self._load(task) for task in run.tasks]
        torch.manual_seed(config.seed)  # head initialisation
        self.model = run.model().to(self.device)
        del run
        self.cache, self.cache_plan = self._make_cache()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.task_names = [d.task.name for d in self.data]
        # Device scalars the step reads: the host writes the schedule position before each step, the
        # step turns it into the learning rate that AdamW reads.
        self.progress = torch.zeros((), dtype=torch.float64, device=self.device)
        self.lr = torch.tensor(float(config.lr), dtype=torch.float64, device=self.device)
        self.optimizer = AdamW(self.trainable, lr=self.lr, weight_decay=config.weight_decay, backend=config.backend)
        self.ledger = StepLedger(self.device)
        self.ddp = None
        if self.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # each step trains one task: other heads and copies sit idle
            )
        self.batches_per_epoch = sum(math.ceil(len(d.train) / config.batch_size) for d in self.data)
        self.total_steps = self._planned_steps()
        self.eval_every = config.eval_every or self.batches_per_epoch
        self.graphs = resolve_graphs(config.cuda_graphs, self.device, precision=self.precision.name,
                                     distributed=self.distributed,
                                     device_name=device_name(self.device) if self.device.type == "cuda" else None)
        self.train_graphs = self.eval_graphs = None
        if self.graphs.enabled:
            capture = CudaCapture()  # one memory pool for every graph
            self.train_graphs = GraphedSteps(self._step, "training", capture, report=self._say,
                                             on_failure=mops.kernels.adamw.clear_cache)
            self.eval_graphs = GraphedSteps(self._predict, "evaluation", capture, report=self._say)
        elif config.cuda_graphs == "on":
            self._say(f"cuda graphs stay off: {self.graphs.reason}")
        self.state = {"step": 0, "train_seconds": 0.0, "examples": 0, "skipped_steps": 0, "epoch_seconds": [],
                      "curve": [], "best": None,
                      "positions": {d.task.name: [0, 0] for d in self.data}}  # task -> [epoch, batch index]

    # ---- data -------------------------------------------------------------------------------
    def _load(self, task: Task) -> TaskData:
        try:
            return load_task_data(task, self.config, self.tokenizer, self.head, self.pad_multiple)
        except NoTrainingData as error:
            raise TrainingError(str(error)) from None

    def _make_cache(self) -> tuple[FrozenPrefixCache | None, dict]:
        # every encoding an example may be read in: at most as many tokens as its longest
        examples = sum((len(d.train) + len(d.dev)) * d.encodings for d in self.data)
        tokens = sum(d.tokens * d.encodings for d in self.data)
        return open_cache(self.model.frozen_prefix, self.model.prefix_is_whole_encoder, self.config.cache_frozen,
                          tokens, examples, self.model.config.hidden_size,
                          self.precision.dtype, self.device, self.pad_multiple)

    def _inputs(self, data: TaskData, split: str, indices: list[int],
                swapped: bool = False) -> tuple[dict, torch.Tensor]:
        """Model inputs and labels of a batch (its pairs read (b, a) when `swapped`). With the cache: stored
        prefix outputs when every example has them (no tokenizing, no prefix), else the prefix runs on
        the batch and its outputs are stored."""
        examples = data.examples(split, indices, swapped)
        task = data.task.name
        sides = data.sides(swapped)
        if self.cache is not None:
            stored = [self.cache.lookup(task, split, side, indices) for side in sides]
            if all(states is not None for states in stored):
                prefixes = [self.cache.assemble(states, self.device) for states in stored]
                inputs = {"batch": None, "batch_b": None, **self._prefix_inputs(prefixes)}
                return inputs, data.collate.labels(examples).to(self.device)
        batch = data.collate(examples).to(self.device)
        inputs = {"batch": batch.inputs, "batch_b": batch.inputs_b, "prefix": None, "prefix_b": None}
        if self.cache is not None:
            with self.cache.filling(), self.precision.autocast():
                prefixes = []
                for side, encoded in zip(sides, (batch.inputs, batch.inputs_b)):
                    prefixes.append(self.model.prefix_output(task, encoded))
                    self.cache.store(task, split, side, indices, prefixes[-1].hidden, prefixes[-1].attention_mask)
            inputs.update(self._prefix_inputs(prefixes))
        return inputs, batch.labels

    @staticmethod
    def _prefix_inputs(prefixes: list[PrefixOutput]) -> dict:
        return {"prefix": prefixes[0], "prefix_b": prefixes[1] if len(prefixes) > 1 else None}

    def _planned_steps(self) -> int | None:
        candidates = []
        if self.config.steps is not None:
            candidates.append(self.config.steps)
        if self.config.epochs is not None:
            candidates.append(max(1, round(self.config.epochs * self.batches_per_epoch)))
        return min(candidates) if candidates else None

    def _next_batch(self, data: TaskData) -> list[int]:
        return data.next_batch(self.state["positions"][data.task.name])

    # ---- checkpoints --------------------------------------------------------------------------
    def _try_resume(self) -> bool:
        path = self.out_dir / LAST_FILE
        if not path.is_file():
            return False
        fresh = "run again with --fresh to start over (it replaces the folder's checkpoints), or use another --out"
        saved = load_checkpoint(path, fresh, map_location=self.device)
        missing = [key for key in ("config", "model", "optimizer", "scaler", "state", "rng") if key not in saved]
        if missing:
            raise TrainingError(f"{path} is not a run checkpoint (it lacks {', '.join(missing)}); {fresh}")
        if saved["config"] != self.config.identity():
            changed = sorted(k for k in saved["config"] if saved["config"][k] != self.config.identity().get(k))
            raise TrainingError(
                f"{path} was written by a run with different settings ({', '.join(changed)}); "
                "use another --out directory, or --fresh to start over"
            )
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:  # loading replaced the rate tensor the step writes
            group["lr"] = self.lr
        self.scaler.load_state_dict(saved["scaler"])
        self.state = saved["state"]
        self.ledger.restore(saved.get("ledger"), self.state["step"], self.state["skipped_steps"])
        torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None and self.device.type == "cuda":  # dropout masks and seeds
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        return True

    def _save_last(self) -> None:
        if self.rank != 0:
            return
        save_checkpoint(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
             "scaler": self.scaler.state_dict(), "state": self.state, "ledger": self.ledger.values.cpu(),
             "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
             "config": self.config.identity()},
            self.out_dir / LAST_FILE,
        )

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Dev metrics of every task, and the overall score."""
        self.model.eval()
        metrics = {}
        for data in self.data:
            predictions, labels = [], []
            for indices in tqdm(data.dev_batches, desc=f"eval {data.task.name}", leave=False, disable=not self._bars()):
                inputs, batch_labels = self._inputs(data, "dev", indices)
                swapped = self._inputs(data, "dev", indices, swapped=True)[0] if data.symmetric else None
                # a graph's output is overwritten by its next replay: keep a copy
                predictions.append((self.eval_graphs or self._predict)(data.task.name, inputs, swapped).clone())
                labels.append(batch_labels)
            metrics[data.task.metric_key] = score(data.task, torch.cat(predictions).cpu(), torch.cat(labels).cpu())
        metrics["overall"] = overall_score({k: v for k, v in metrics.items()})
        self.model.train()
        return metrics

    def _predict(self, task: str, inputs: dict, swapped: dict | None = None) -> torch.Tensor:  # (B,) classes or scores
        """Predictions of a dev batch; with `swapped` (the same pairs read (b, a)), of both orders together."""
        with self.precision.autocast():
            outputs = self.model(task, **inputs)
            if swapped is not None:
                outputs = self.model.mean_over_orders(task, outputs, self.model(task, **swapped))
        return self.model.predict(task, outputs)

    def _bars(self) -> bool:
        return self.config.progress and self.rank == 0

    def _say(self, message: str) -> None:
        if self.rank == 0:
            tqdm.write(message, file=sys.stderr)

    # ---- training -----------------------------------------------------------------------------
    def _budget_left(self) -> bool:
        c, s = self.config, self.state
        if self.total_steps is not None and s["step"] >= self.total_steps:
            return False
        if c.stop_at is not None and self._progress() >= c.stop_at:  # a probe of the run's beginning
            return False
        return c.seconds is None or s["train_seconds"] < c.seconds

    def _progress(self) -> float:
        fractions = []
        if self.total_steps:
            fractions.append(self.state["step"] / self.total_steps)
        if self.config.seconds:
            fractions.append(self.state["train_seconds"] / self.config.seconds)
        return min(1.0, max(fractions)) if fractions else 0.0

    def _train_step(self, data: TaskData) -> torch.Tensor:
        """The host's part of a step (the next batch, its inputs on the device, the schedule position),
        then the device's (`_step`, replayed as a CUDA graph when graphs are on). Returns the loss
        tensor, unread."""
        indices = self._next_batch(data)
        swapped = data.swapped_at(self.state["positions"][data.task.name])
        if self.world > 1:  # every rank takes its slice of the same global batch
            local = indices[self.rank :: self.world]
            weight = len(local) * self.world / len(indices)  # so averaged gradients equal the global mean
        else:
            local, weight = indices, 1.0
        inputs, labels = self._inputs(data, "train", local, swapped)
        # The middle of this step: neither the first nor the last step of a linear schedule is wasted at lr 0.
        self.progress.fill_(min(1.0, self._progress() + (0.5 / self.total_steps if self.total_steps else 0.0)))
        self.state["examples"] += len(indices)
        if self.train_graphs is not None:  # never distributed, so weight is 1
            return self.train_graphs(data.task.name, inputs, labels)
        return self._step(data.task.name, inputs, labels, weight)

    def _step(self, task: str, inputs: dict, labels: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """Forward, loss, backward and AdamW, on device tensors only: nothing is read back and nothing
        branches on a device value, so every call makes the same launches (see the module docstring)."""
        c = self.config
        with self.precision.autocast():
            outputs = (self.ddp or self.model)(task, **inputs)
            loss = self.model.loss(task, outputs, labels)
        for p in self.trainable:  # zero_grad(set_to_none=True), in a form torch.compile traces
            p.grad = None
        self.lr.copy_(c.lr * lr_factor_tensor(c.schedule, self.progress, c.warmup))
        if self.precision.name != "fp16":
            (loss * weight).backward()
            self.optimizer.step()
            skipped = None
        else:  # loss scaling: the scaler waits for the device inside `step`, so fp16 steps are never graphed
            self.scaler.scale(loss * weight).backward()
            scale = self.scaler._get_scale_async().clone()
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
            skipped = self.scaler._get_scale_async() < scale  # the scale only falls after an overflow
        self.ledger.record(loss, self.task_names.index(task), skipped)
        return loss.detach()

    def _check(self) -> dict[str, float]:
        """Read the ledger (one wait for the device): stop at a non-finite loss, naming its task and
        step; take the fp16 skip count. Returns what was read."""
        seen = self.ledger.read()
        if seen["first_bad_step"] >= 0:
            task = self.task_names[int(seen["bad_task"])]
            raise TrainingError(
                f"the {task} loss is {seen['bad_loss']} at step {int(seen['first_bad_step'])}; "
                f"lower the learning rate (now {self.config.lr}) or check the {task} labels"
            )
        self.state["skipped_steps"] = int(seen["skipped_steps"])
        return seen

    def train(self, fresh: bool = False) -> dict:
        """Run to the budget (resuming from `last.pt` unless `fresh`), return the run record.

        The run folder is this process's alone while it trains. A run whose budget is already spent
        is not measured again: its record comes back as it was written (`already_finished` is set),
        since a second measurement would be of a process that trained nothing."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with hold_run_folder(self.out_dir) if self.rank == 0 else contextlib.nullcontext():
            resumed = False if fresh else self._try_resume()
            if resumed and not self._budget_left():
                self.already_finished = True
                return self._finished_record()
            return self._train(resumed)

    def _finished_record(self) -> dict:
        """The record of the finished run in the folder: its results.json where that describes the
        checkpoint's last step, else one rebuilt from the checkpoint with no memory measurement."""
        path = self.out_dir / RESULTS_FILE
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):
            kept = None
        if isinstance(kept, dict) and kept.get("status") == "ok" and \
                (kept.get("timing") or {}).get("steps") == self.state["step"]:
            return kept
        record = self._record(None, resumed=True)  # nothing trained now: nothing to measure
        if self.rank == 0:
            atomic_write_json(path, record)
        return record

    def _train(self, resumed: bool) -> dict:
        sizes = [len(d.train) for d in self.data]
        sampler = self.memory_sampler(self.device) if self.memory_sampler else contextlib.nullcontext()
        bar = tqdm(total=self.total_steps, initial=self.state["step"], desc=f"train {self.plan}",
                   disable=not self._bars(), unit="step")
        self.model.train()
        with sampler as memory:
            while self._budget_left():
                started = time.perf_counter()
                step = self.state["step"]
                index = task_at_step(step, sizes, self.config.sampling, self.config.seed, self._progress())
                self._train_step(self.data[index])
                step = self.state["step"] = self.state["step"] + 1
                evaluating = step % self.eval_every == 0
                # The checks wait for the device: inside the timed region, so the time is the device's.
                seen = self._check() if step % self.config.check_every == 0 or evaluating else None
                self.state["train_seconds"] += time.perf_counter() - started
                if step % self.batches_per_epoch == 0:  # an epoch ended: its own seconds
                    epoch = self.state["train_seconds"] - sum(self.state["epoch_seconds"])
                    self.state["epoch_seconds"].append(round(epoch, 3))
                bar.update(1)
                if seen is not None:
                    bar.set_postfix(task=self.data[index].task.name, loss=f"{seen['loss']:.3f}")
                if evaluating and self._budget_left():
                    self._evaluate_and_checkpoint()
            started = time.perf_counter()
            self._check()  # the last steps' wait, counted as training
            self.state["train_seconds"] += time.perf_counter() - started
            if not self.state["curve"] or self.state["curve"][-1]["step"] != self.state["step"]:
                self._evaluate_and_checkpoint()
        bar.close()
        record = self._record(memory, resumed)
        if self.rank == 0:
            atomic_write_json(self.out_dir / RESULTS_FILE, record)
        return record

    def _evaluate_and_checkpoint(self) -> None:
        self._check()  # a non-finite loss stops the run before it reaches a checkpoint
        metrics = self.evaluate()
        s = self.state
        s["curve"].append({"step": s["step"], "seconds": round(s["train_seconds"], 3),
                           "epoch": round(s["step"] / self.batches_per_epoch, 4), "metrics": metrics})
        if s["best"] is None or metrics["overall"] > s["best"]["metrics"]["overall"]:
            s["best"] = {"step": s["step"], "metrics": metrics}
            if self.rank == 0:
                save_checkpoint({"model": self.model.state_dict(), "plan": str(self.plan), "tasks": self.config.tasks,
                              "metrics": metrics, "step": s["step"], "config": self.config.identity()},
                             self.out_dir / BEST_FILE)
        if self.rank == 0 and self._bars():
            shown = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            tqdm.write(f"step {s['step']}: {shown}")
        self._save_last()

    def _record(self, memory, resumed: bool) -> dict:
        s = self.state
        final = s["curve"][-1]["metrics"]
        epochs_done = s["step"] / self.batches_per_epoch
        reading = memory.result() if hasattr(memory, "result") else None
        return {
            "schema": SCHEMA,
            "status": "ok",
            "error": None,
            "config": {
                **dataclasses.asdict(self.config),
                "plan": str(self.plan),
                "hidden_size": self.model.config.hidden_size,
                "num_layers": self.model.config.num_hidden_layers,
                "pretrained": self.config.checkpoint != "random",
                "corpus": "demo" if self.config.data == "demo" else "cs224n",
                "world_size": self.world,
            },
            "precision": self.precision.name,  # what `config.precision` resolved to on this device
            "pad_multiple": self.pad_multiple,
            "kernels": self.kernels,  # op -> the backend it ran
            "prefix_cache": {**self.cache_plan, **(self.cache.stats() if self.cache is not None else {})},
            "metrics": final,
            "best": s["best"],
            "accounting": account_model(self.model),
            "memory": reading.to_dict() if reading is not None else None,
            "timing": {
                "train_seconds": round(s["train_seconds"], 3),
                "steps": s["step"],
                "epochs": round(epochs_done, 4),
                "seconds_per_epoch": round(s["train_seconds"] / epochs_done, 3) if epochs_done else None,
                "examples_per_second": round(s["examples"] / s["train_seconds"], 2) if s["train_seconds"] else None,
                "skipped_steps": s["skipped_steps"],  # fp16 steps dropped for overflowing gradients
                "epoch_seconds": s["epoch_seconds"],  # each whole epoch's (the first fills the prefix cache)
            },
            "curve": s["curve"],
            "resumed": resumed,
            "cuda_graphs": {"enabled": self.graphs.enabled, "reason": self.graphs.reason,
                            **({name: runner.stats() for name, runner in
                                (("training", self.train_graphs), ("evaluation", self.eval_graphs))}
                               if self.graphs.enabled else {})},
            "device": device_name(self.device),
            "versions": versions(),
        }
