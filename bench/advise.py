"""Which plan to train for a memory budget: predict every candidate, keep what fits, probe the best.

1. Enumerate the plans of the model's depth whose letters rise from bottom to top in the order
   F, L, B, S, I (freeze the bottom, adapt or share the middle, keep the top per task: the family
   every plan of the demo sweep but its grouped one belongs to), over all five letters (210 plans
   of six layers; the prediction covers every letter). With task
   groups (`--groups`), each split of the tasks into groups adds the plans that use it, its
   token ranked between S (one copy) and I (one per task): 756 more for three tasks.
2. Predict each one's peak (bench.prediction) and keep those within the budget.
3. Of those, keep the ones no other beats in predicted peak (lower) and trainable capacity
   (higher), and pick K spread over that front. Capacity counts twice: the trainable parameters
   in all (what per-task copies add) and the trainable parameters one task's path reads, on
   average (how deep training reaches: `FFSS[a+b|c]2` adapts four layers for every task, `FFFFII`
   two, though it has more parameters in all). On parameters in all alone, the deep, lightly
   copied plans that often score best fall off the front.
4. Probe them by successive halving: short training runs through the sweep machinery (one
   process each, appended to a results file, so an interrupted advice resumes), the better half
   by dev score kept at each round with the budget doubled, until one is left.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from minbert import BertModel
from multitask.model import HeadConfig, MultitaskBert
from multitask.precision import Precision
from multitask.sharing import parse_plan
from multitask.tasks import Task

from .prediction import Prediction, predict
from .records import read_records
from .sweep import SweepConfig, config_id, grid, run_sweep

# Probe runs last a few dozen steps: a linear decay to zero over them halves what they learn, so
# they run at a constant rate unless the user's --schedule says otherwise.
PROBE_SCHEDULE = "constant"
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


def predict_candidates(pretrained: BertModel, tasks: list[Task], batch_size: int, length: int, precision: Precision,
                       head: HeadConfig | None = None, plans: Sequence[str] | None = None) -> list[Candidate]:
    names = [t.name for t in tasks]
    depth = pretrained.config.num_hidden_layers
    # The prediction reads shapes only: candidates built on the meta device copy no weights, so
    # two hundred plans' models cost neither memory nor time.
    skeleton = copy.deepcopy(pretrained).to("meta")
    out = []
    for text in plans or candidate_plans(depth):
        plan = parse_plan(text, names, depth)
        model = MultitaskBert(skeleton, plan, tasks, head)
        prediction = predict(model, batch_size, length, precision, skeleton.backend)
        out.append(Candidate(str(plan), prediction, prediction.grads_bytes // 4, task_reach(model)))
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


def spread(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """K candidates spread evenly over a front ordered by peak, its two ends included."""
    if len(candidates) <= k:
        return list(candidates)
    picks = sorted({round(i * (len(candidates) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(candidates) - 1]
    return [candidates[i] for i in picks]


def shortlist(candidates: Sequence[Candidate], budget: int, k: int) -> list[Candidate]:
    """The K plans to probe: within the budget, on the (peak, capacity) front, spread along it."""
    fitting = [c for c in candidates if c.prediction.peak_bytes <= budget]
    if not fitting:
        cheapest = min(candidates, key=lambda c: c.prediction.peak_bytes)
        raise AdviceError(
            f"no plan fits {budget / 2**20:,.0f} MiB: the cheapest, {cheapest.plan}, is predicted to peak at "
            f"{cheapest.prediction.peak_bytes / 2**20:,.0f} MiB (a smaller --batch-size or --max-length lowers it)"
        )
    return spread(front(fitting), k)


def successive_halving(plans: Sequence[str], tasks: Sequence[str], checkpoint: str, train: dict, probe_steps: int,
                       results: str, run: Callable[[SweepConfig], Path] | None = None) -> list[dict[str, dict]]:
    """Rounds of short runs: each round trains the remaining plans for `probe_steps * 2**round` steps
    (through the sweep machinery, so runs already in `results` are not run again), keeps the better
    half by dev overall score, and stops when one plan is left. Returns each round's records by plan
    (a run that failed scores lowest)."""
    run = run or (lambda sweep: run_sweep(sweep, progress=False))
    remaining, rounds = list(plans), []
    while True:
        steps = probe_steps * 2 ** len(rounds)
        sweep = SweepConfig(checkpoints=[checkpoint], plans=remaining, task_sets=[list(tasks)],
                            train={**train, "steps": steps, "eval_every": steps}, results=results)
        path = run(sweep)
        ids = {config_id(config): config.plan for config in grid(sweep)}
        records = {ids[r["run_id"]]: r for r in read_records([path]) if r.get("run_id") in ids}
        rounds.append({plan: records.get(plan, {"status": "missing"}) for plan in remaining})
        if len(remaining) <= 1:
            return rounds
        ranked = sorted(remaining, key=lambda plan: overall(rounds[-1][plan]), reverse=True)
        remaining = ranked[: max(1, len(ranked) // 2)]
        if len(remaining) == 1:
            return rounds


def overall(record: dict) -> float:
    """A run's dev overall score; minus infinity for a run that did not finish."""
    return record["metrics"]["overall"] if record.get("status") == "ok" else float("-inf")


def ranking(rounds: list[dict[str, dict]], predicted: dict[str, int], probe_steps: int) -> tuple[list[str], str]:
    """Plans best first (those that lasted more rounds first, then by their last round's score) and
    the table: predicted and measured peak, the steps of their last round, their dev metrics."""
    last = {plan: (index, record) for index, scores in enumerate(rounds) for plan, record in scores.items()}
    ranked = sorted(last, key=lambda plan: (-last[plan][0], -overall(last[plan][1])))
    metric_names = next((list(r["metrics"]) for _, r in last.values() if r.get("status") == "ok"), [])
    rows = []
    for plan in ranked:
        index, record = last[plan]
        memory = record.get("memory") or {}
        scores = [f"{record['metrics'][m]:.3f}" for m in metric_names] if record.get("status") == "ok" else \
            [record.get("status", "?")] * len(metric_names)
        rows.append([plan, f"{predicted[plan] / 2**20:,.0f}",
                     f"{memory['peak_bytes'] / 2**20:,.0f}" if memory.get("peak_bytes") else "-",
                     probe_steps * 2**index, *scores])
    return ranked, tabulate(rows, headers=["plan", "pred MiB", "peak MiB", "steps", *metric_names], tablefmt="github",
                            disable_numparse=True)
