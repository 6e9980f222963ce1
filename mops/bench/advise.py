"""Which plan to train for a memory budget: predict every candidate, keep what fits, probe the best.

1. Enumerate the plans of the model's depth whose letters rise from bottom to top in the order
   F, L, B, S, I (freeze the bottom, adapt or share the middle, keep the top per task: the family
   every plan of the demo sweep but its grouped one belongs to), over all five letters (210 plans
   of six layers; the prediction covers every letter). With task
   groups (`--groups`), each split of the tasks into groups adds the plans that use it, its
   token ranked between S (one copy) and I (one per task): 756 more for three tasks.
2. Predict each one's peak (mops.multitask.training.prediction) and keep those within the budget.
3. Of those, keep the ones no other beats in predicted peak (lower) and trainable capacity
   (higher). Capacity counts twice: the trainable parameters in all (what per-task copies add)
   and the trainable parameters one task's path reads, on average (its reach: how deep training
   goes; `FFSS[a+b|c]2` adapts four layers for every task, `FFFFII` two, though it has more
   parameters in all). On parameters in all alone, the deep, lightly copied plans that often
   score best fall off the front. Of that front, take the richest plan of each reach (within the
   budget memory is free) and pick K spread from the shallowest to the deepest.
4. Probe them by successive halving of the full run itself: every run is the run the user asked
   for (its budget, schedule and seed), stopped at a quarter, a half, ... of its budget (one
   process each, appended to a results file, so an interrupted advice resumes); the better half
   by dev score goes on from where it stopped, until the last round runs the finalists to the end.
   The recommendation's score is then that of the very run its command starts.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from mops.bench.records import read_records
from mops.bench.sweep import SweepConfig, config_id, grid, run_sweep
from mops.multitask.sharing.model import MultitaskBert
from mops.multitask.training.assembly import RunParts, assemble
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.devices import resolve_device
from mops.multitask.training.precision import Precision, resolve_precision
from mops.multitask.training.prediction import Prediction, predict
from mops.multitask.training.run_files import BEST_FILE, LAST_FILE

ORDER = ("F", "L", "B", "S", "I")  # bottom to top: what each layer may be, never lower than the one below
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class AdviceError(ValueError):
    """A budget that cannot be read or met; the message says which plan would come closest."""


def parse_budget(text: str) -> int:
    """Bytes from '4GiB', '4096MiB', '4GB', '4.5 GiB' or plain bytes ('4294967296')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise AdviceError(f"cannot read the budget {text!r}: write it like 4GiB, 4096MiB, 4GB or 4294967296 (bytes)")
    number, unit = match.groups()
    return int(float(number) * UNITS[(unit or "").lower()])


def candidate_plans(num_layers: int, letters: Sequence[str] | None = None, groupings: Sequence[str] = ()) -> list[str]:
    """Every plan whose layer letters never fall in ORDER from bottom to top, over `letters`
    (default: all of ORDER); then, for each group token in `groupings`, the plans that use it,
    one grouping per plan, ranked just below I."""
    usable = [letter for letter in ORDER if letter in (letters or ORDER)]
    plans = ["".join(combo) for combo in itertools.combinations_with_replacement(usable, num_layers)]
    slot = usable.index("I") if "I" in usable else len(usable)
    for token in groupings:
        ladder = [*usable[:slot], token, *usable[slot:]]
        plans += [_runs(combo) for combo in itertools.combinations_with_replacement(ladder, num_layers)
                  if token in combo]
    return plans


def _runs(tokens: Sequence[str]) -> str:
    """Plan text with each run of equal tokens counted ("L1[a+b|c]2"): a bare L or B followed by a
    group token would read as one adapted group ("L[a+b|c]", one update per group)."""
    return "".join(f"{token}{len(list(run))}" for token, run in itertools.groupby(tokens))


def task_groupings(tasks: Sequence[str]) -> list[str]:
    """A group token for each split of the tasks into more than one group and fewer than one per
    task: [sst+para|sts], [sst+sts|para] and [para+sts|sst] for three tasks (S and I are the
    one-group and one-per-task ends)."""
    order = {task: index for index, task in enumerate(tasks)}
    splits = [sorted(split, key=lambda group: order[group[0]]) for split in _splits(list(tasks))]
    return ["[" + "|".join("+".join(group) for group in split) + "]" for split in splits if 1 < len(split) < len(tasks)]


def _splits(items: list[str]) -> Iterator[list[list[str]]]:
    """Every partition of `items` into non-empty groups, each group in the items' order."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for split in _splits(rest):
        yield [[first], *split]
        for index in range(len(split)):
            yield [*split[:index], [first, *split[index]], *split[index + 1:]]


@dataclass
class Candidate:
    plan: str
    prediction: Prediction
    trainable: int  # elements of trainable parameters, in all: the plan's capacity to adapt
    reach: int = 0  # trainable elements one task's path reads, mean over the tasks: how deep training reaches


def predict_candidates(run: RunParts, batch_size: int, length: int, precision: Precision,
                       plans: Sequence[str] | None = None) -> list[Candidate]:
    """Each plan's prediction, built from the run's own parts (heads, LoRA settings) as training builds it."""
    # The prediction reads shapes only: candidates built on the meta device copy no weights, so
    # two hundred plans' models cost neither memory nor time.
    skeleton = run.on_meta()
    out = []
    for text in plans or candidate_plans(run.depth):
        model = skeleton.model(text)
        prediction = predict(model, batch_size, length, precision, skeleton.encoder.backend)
        out.append(Candidate(str(model.plan), prediction, prediction.grads_bytes // 4, task_reach(model)))
    return out


def task_reach(model: MultitaskBert) -> int:
    """Trainable elements one task's path (its pieces and head) reads, mean over the tasks."""
    reads = [sum(p.numel() for p in {id(p): p for p in model.parameters_of(task)}.values() if p.requires_grad)
             for task in model.tasks]
    return round(sum(reads) / len(reads))


def _key(candidate: Candidate) -> tuple[int, int, int]:
    return candidate.prediction.peak_bytes, candidate.trainable, candidate.reach


def _dominates(a: Candidate, b: Candidate) -> bool:
    """a is no worse than b in peak and both capacities, and better in one of them."""
    (peak_a, all_a, reach_a), (peak_b, all_b, reach_b) = _key(a), _key(b)
    return peak_a <= peak_b and all_a >= all_b and reach_a >= reach_b and _key(a) != _key(b)


def front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other beats in predicted peak and capacity (parameters in all and a task's
    reach), lowest peak first; of candidates alike in all three, the first."""
    ordered = sorted(candidates, key=lambda c: (c.prediction.peak_bytes, -c.trainable, -c.reach))
    kept: list[Candidate] = []
    for index, candidate in enumerate(ordered):
        # whatever dominates a candidate sorts before it, so only those ahead are compared
        if not any(_dominates(other, candidate) for other in ordered[:index]) and \
                not any(_key(other) == _key(candidate) for other in kept):
            kept.append(candidate)
    return kept


def alike(candidates: Sequence[Candidate], plan: str) -> list[str]:
    """The other plans equal to `plan` in predicted peak and both capacities: the front keeps one
    of them, yet which tasks share a layer can move the score (other task groups of one shape,
    or a group in place of one shared and one per-task layer)."""
    key = next(_key(c) for c in candidates if c.plan == plan)
    return [c.plan for c in candidates if _key(c) == key and c.plan != plan]


def richest_by_reach(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Of the candidates alike in reach (how deep training goes for a task), the one with the most
    trainable parameters in all (most kept for each task), ordered by reach. Within the budget memory
    costs nothing, so what the probes should weigh is depth against depth, each at its fullest; the
    leaner plans of the same depth are the front's answer to tighter budgets."""
    richest: dict[int, Candidate] = {}
    for candidate in candidates:
        if candidate.reach not in richest or candidate.trainable > richest[candidate.reach].trainable:
            richest[candidate.reach] = candidate
    return [richest[reach] for reach in sorted(richest)]


def spread(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """K candidates spread evenly over an ordered list, its two ends included."""
    if len(candidates) <= k:
        return list(candidates)
    picks = sorted({round(i * (len(candidates) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(candidates) - 1]
    return [candidates[i] for i in picks]


def shortlist(candidates: Sequence[Candidate], budget: int, k: int) -> list[Candidate]:
    """The K plans to probe: within the budget, on the (peak, capacity) front, the richest of each
    reach, spread evenly from the shallowest to the deepest."""
    fitting = [c for c in candidates if c.prediction.peak_bytes <= budget]
    if not fitting:
        cheapest = min(candidates, key=lambda c: c.prediction.peak_bytes)
        raise AdviceError(
            f"no plan fits {budget / 2**20:,.0f} MiB: the cheapest, {cheapest.plan}, is predicted to peak at "
            f"{cheapest.prediction.peak_bytes / 2**20:,.0f} MiB (a smaller --batch-size or --max-length lowers it)"
        )
    return spread(richest_by_reach(front(fitting)), k)


def halving_rounds(count: int) -> int:
    """Rounds of successive halving for `count` plans: one per halving while more than one is left
    (8 plans: 8, 4, 2, then the better of two), and a single round for one plan."""
    rounds = 0
    while count > 1:
        rounds, count = rounds + 1, count // 2
    return max(rounds, 1)


def stops(count: int) -> list[float]:
    """Where each round of successive halving over `count` plans stops its runs, as fractions of the
    full run's budget: [0.25, 0.5, 1.0] for 8 plans, [1.0] for up to 3."""
    rounds = halving_rounds(count)
    return [0.5 ** (rounds - 1 - index) for index in range(rounds)]


def successive_halving(plans: Sequence[str], tasks: Sequence[str], checkpoint: str, train: dict, results: str,
                       seed: int = 0, run: Callable[[SweepConfig], Path] | None = None) -> list[dict[str, dict]]:
    """Rounds of the full run `train` describes, one run per plan, stopped early: of R rounds,
    round r stops each run at 1/2**(R-1-r) of its budget (the schedule still laid over all of it)
    and the last runs it to the end. The better half by dev overall score goes on to the next round,
    each run resuming where it stopped, so the last round's scores are those of the very runs the
    recommendation names, and 8 plans cost the work of 4 full runs. Runs already in `results` are
    not run again (an interrupted advice resumes). Returns each round's records by plan (a run
    that failed scores lowest)."""
    run = run or (lambda sweep: run_sweep(sweep, progress=False))
    remaining, rounds, folders = list(plans), [], {}
    for fraction in stops(len(plans)):
        sweep = SweepConfig(checkpoints=[checkpoint], plans=remaining, task_sets=[list(tasks)], seeds=[seed],
                            train={**train, "stop_at": fraction if fraction < 1 else None}, results=results)
        ids = {config_id(config): config.plan for config in grid(sweep)}
        stopped = {plan: folders[plan] for plan in remaining if plan in folders}
        for rid, plan in ids.items():
            if plan in stopped:  # go on from where the last round stopped this run
                _carry_checkpoint(stopped[plan], sweep.run_folder / rid)
            folders[plan] = sweep.run_folder / rid
        path = run(sweep)
        records = {ids[r["run_id"]]: r for r in read_records([path]) if r.get("run_id") in ids}
        rounds.append({plan: records.get(plan, {"status": "missing"}) for plan in remaining})
        ranked = sorted(remaining, key=lambda plan: overall(rounds[-1][plan]), reverse=True)
        remaining = ranked[: max(1, len(ranked) // 2)]
        # A MiniLM checkpoint is hundreds of MB: keep only what a later round (or the user, for the
        # finalists' full runs) reads, never a stop another round has gone on from or a dropped run.
        dropped = ranked[len(remaining):] if fraction < 1 else []
        for folder in [*stopped.values(), *(folders[plan] for plan in dropped)]:
            _drop_checkpoints(folder)
    return rounds


def _drop_checkpoints(folder: Path) -> None:
    """Remove a probe run's checkpoints, keeping its results.json."""
    for name in (LAST_FILE, BEST_FILE):
        (folder / name).unlink(missing_ok=True)


def _carry_checkpoint(source: Path, target: Path) -> None:
    """Give the next round's run folder the last round's checkpoints of the same run (hard links,
    which the trainer's atomic saves replace rather than write through), unless it has its own."""
    if (target / LAST_FILE).exists() or not (source / LAST_FILE).exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in (LAST_FILE, BEST_FILE):  # best.pt: the best dev score may have come before the stop
        if (source / name).exists():
            try:
                os.link(source / name, target / name)
            except OSError:  # a file system without hard links
                shutil.copyfile(source / name, target / name)


def overall(record: dict) -> float:
    """A run's dev overall score; minus infinity for a run that did not finish."""
    return record["metrics"]["overall"] if record.get("status") == "ok" else float("-inf")


def ranking(rounds: list[dict[str, dict]], predicted: dict[str, int]) -> tuple[list[str], str]:
    """Plans best first (those that lasted more rounds first, then by their last round's score) and
    the table: predicted and measured peak, the steps and seconds of training each run reached,
    its dev metrics."""
    last = {plan: (index, record) for index, scores in enumerate(rounds) for plan, record in scores.items()}
    ranked = sorted(last, key=lambda plan: (-last[plan][0], -overall(last[plan][1])))
    metric_names = next((list(r["metrics"]) for _, r in last.values() if r.get("status") == "ok"), [])
    rows = []
    for plan in ranked:
        record = last[plan][1]
        memory, timing = record.get("memory") or {}, record.get("timing") or {}
        scores = [f"{record['metrics'][m]:.3f}" for m in metric_names] if record.get("status") == "ok" else \
            [record.get("status", "?")] * len(metric_names)
        rows.append([plan, f"{predicted[plan] / 2**20:,.0f}",
                     f"{memory['peak_bytes'] / 2**20:,.0f}" if memory.get("peak_bytes") else "-",
                     timing.get("steps", "-"),
                     f"{timing['train_seconds']:,.0f}" if timing.get("train_seconds") is not None else "-", *scores])
    return ranked, tabulate(rows, headers=["plan", "pred MiB", "peak MiB", "steps", "train s", *metric_names],
                            tablefmt="github", disable_numparse=True)


# ---- the whole advice -------------------------------------------------------------------------

BUDGETS = ("epochs", "steps", "seconds")  # the settings that give a run its length


@dataclass
class Advice:
    best: str  # the recommended plan
    settings: dict  # the run's settings as given (with the budget --probe-steps set): `mops train --plan best` + these
    table: str  # the probed plans, ranked
    alike: list[str]  # plans not probed, alike to `best` in predicted peak and capacity


def budget_text(config: TrainConfig) -> str:
    """The run's budget as the user would say it: '120 steps', '1 epoch', '600 s' (the first to end wins)."""
    parts = [f"{config.steps} steps" if config.steps else "", f"{config.epochs:g} epoch{'s' * (config.epochs != 1)}"
             if config.epochs else "", f"{config.seconds:g} s" if config.seconds else ""]
    return " or ".join(part for part in parts if part)


def advise(settings: dict, budget: int, candidates: int = 8, groups: bool = False,
           results: str = "runs/advise.jsonl", probe_steps: int | None = None,
           say: Callable[[str], None] = print) -> Advice:
    """Predict every candidate plan of the run `settings` describe, shortlist what fits `budget`
    bytes, probe the shortlist by successive halving (runs appended to `results`), and rank it.
    `say` hears what is decided before the long part starts (what fits, how the probes run)."""
    if candidates <= 0:
        raise AdviceError(f"--candidates must be a positive number of plans, got {candidates}")
    if probe_steps is not None and probe_steps <= 0:
        raise AdviceError(f"--probe-steps must be a positive number of steps, got {probe_steps}")
    if probe_steps is not None and any(name in settings for name in BUDGETS):
        raise AdviceError("--probe-steps sets the full run's length (the first round's steps, doubled each "
                          "round); give it or the run's budget (--steps, --epochs, --seconds), not both")
    settings = dict(settings)
    config = TrainConfig(**settings)
    run = assemble(config)  # a checkpoint, or `random` at --hidden-size x --num-layers
    precision = resolve_precision(config.precision, resolve_device(config.device))
    groupings = task_groupings(config.tasks) if groups else ()
    predicted = predict_candidates(run, config.batch_size, config.max_length, precision,
                                   candidate_plans(run.depth, groupings=groupings))
    probed = shortlist(predicted, budget, candidates)
    fitting = sum(c.prediction.peak_bytes <= budget for c in predicted)
    say(f"{fitting} of {len(predicted)} plans are predicted to fit {budget / 2**20:,.0f} MiB at batch "
        f"{config.batch_size} x {config.max_length} ({precision.name}); probing {len(probed)}: "
        f"{', '.join(c.plan for c in probed)}")
    fractions = stops(len(probed))
    if probe_steps is not None:  # the full run: the first round's steps, doubled each round
        settings["steps"] = round(probe_steps / fractions[0])
    shown = [f"1/{round(1 / f)}" for f in fractions[:-1]] + ["the end"]
    say(f"each probe is the full run ({budget_text(TrainConfig(**settings))}) stopped at {', '.join(shown)} of "
        "it; the better half goes on from each stop")
    train = {k: v for k, v in settings.items() if k not in ("tasks", "checkpoint", "seed")}
    records = successive_halving([c.plan for c in probed], config.tasks, config.checkpoint,
                                 {**train, "progress": False}, results, config.seed)
    ranked, table = ranking(records, {c.plan: c.prediction.peak_bytes for c in probed})
    return Advice(ranked[0], settings, table, alike(predicted, ranked[0]))
