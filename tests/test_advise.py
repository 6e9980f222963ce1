"""mops.bench.advise and `mops advise`: reading a budget, the plans considered, the shortlist on the
(peak, capacity) front, successive halving through the sweep machinery (and its resumption),
and the errors for budgets that cannot be read or met."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import mops.bench.sweep
from mops.bench.advise import (
    AdviceError,
    Candidate,
    alike,
    candidate_plans,
    front,
    halving_rounds,
    parse_budget,
    predict_candidates,
    ranking,
    shortlist,
    spread,
    successive_halving,
    task_groupings,
)
from mops.cli import main
from mops.minbert import BertConfig, BertModel
from mops.multitask.training.assembly import assemble
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.precision import Precision
from mops.multitask.training.prediction import Prediction
from mops.multitask.training.trainer import Trainer

MiB = 2**20


@pytest.mark.parametrize(("text", "expected"), [
    ("4GiB", 4 * 2**30), ("4096MiB", 4 * 2**30), ("4GB", 4 * 10**9), ("4294967296", 2**32),
    ("1.5 GiB", 3 * 2**29), ("512mib", 512 * MiB),
])  # fmt: skip
def test_budgets_in_the_usual_units(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["4 gigs", "", "GB", "-1GB", "4GiBs"])
def test_a_budget_that_cannot_be_read_says_how_to_write_it(text):
    with pytest.raises(AdviceError, match="write it like 4GiB, 4096MiB, 4GB or 4294967296"):
        parse_budget(text)


def test_plans_rise_from_frozen_to_individual():
    assert candidate_plans(2, "FSI") == ["FF", "FS", "FI", "SS", "SI", "II"]
    assert len(candidate_plans(6, "FSI")) == 28  # multisets of 6 letters out of 3
    assert all(plan == "".join(sorted(plan, key="FLBSI".index)) for plan in candidate_plans(4, "FLBSI"))
    assert candidate_plans(6) == candidate_plans(6, "FLBSI")  # every letter: the prediction covers them all
    assert len(candidate_plans(6)) == 210


def candidate(plan: str, peak_mib: float, trainable: int, reach: int = 0) -> Candidate:
    prediction = Prediction(0, 4 * trainable, 8 * trainable, 0, {}, {}, 0, 4 * trainable, 0, None, int(peak_mib * MiB),
                            16, 48, "fp32", "torch")
    return Candidate(plan, prediction, trainable, reach)


def test_the_shortlist_fits_the_budget_keeps_the_front_and_the_richest_plan_of_each_reach():
    pool = [candidate("FF", 100, 10, 10), candidate("FS", 200, 50, 40), candidate("SF", 250, 40, 40),  # SF: below FS
            candidate("SS", 300, 90, 90), candidate("SI", 400, 150, 90), candidate("II", 900, 300, 90)]
    assert [c.plan for c in front(pool)] == ["FF", "FS", "SS", "SI", "II"]
    # within 450 MiB, SS and SI train as deep; SI keeps more for each task and the memory is there
    assert [c.plan for c in shortlist(pool, 450 * MiB, 8)] == ["FF", "FS", "SI"]
    assert [c.plan for c in shortlist(pool, 350 * MiB, 8)] == ["FF", "FS", "SS"]
    assert [c.plan for c in shortlist(pool, 450 * MiB, 2)] == ["FF", "SI"]  # the shallowest and the deepest
    assert [c.plan for c in spread(front(pool), 3)] == ["FF", "SS", "II"]  # both ends and the middle
    with pytest.raises(AdviceError, match="no plan fits 50 MiB: the cheapest, FF, is predicted to peak at 100 MiB"):
        shortlist(pool, 50 * MiB, 8)


def test_a_deeper_reach_keeps_a_plan_on_the_front_that_more_parameters_in_all_would_drop():
    # per task: FFFFII trains two layers of its own, FFSS[a+b|c]2 four (two shared, two grouped)
    deep = candidate("FFSS[a+b|c]2", 350, trainable=100, reach=70)
    wide = candidate("FFFFII", 300, trainable=110, reach=40)
    assert [c.plan for c in front([deep, wide])] == ["FFFFII", "FFSS[a+b|c]2"]
    assert [c.plan for c in front([deep, candidate("FFFFII", 300, trainable=110, reach=70)])] == ["FFFFII"]
    twins = [candidate("FFFFFF", 100, 5, 5), candidate("FFFFFF,pooler=F", 100, 5, 5)]  # alike: the first kept
    assert [c.plan for c in front(twins)] == ["FFFFFF"]


def test_plans_alike_in_peak_and_capacity_are_named_since_the_front_keeps_one():
    pool = [candidate("FFSSSI", 348, 100, 70), candidate("FFSS[a+b|c]2", 348, 100, 70),
            candidate("FFSS[a+c|b]2", 348, 100, 70), candidate("FFSSSS", 294, 70, 70)]
    assert [c.plan for c in front(pool)] == ["FFSSSS", "FFSSSI"]
    assert alike(pool, "FFSSSI") == ["FFSS[a+b|c]2", "FFSS[a+c|b]2"]
    assert alike(pool, "FFSSSS") == []


def test_predictions_of_every_candidate_rise_with_capacity():
    torch_config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64)
    run = assemble(TrainConfig(tasks=["sst", "sts"], data="demo"), encoder=BertModel(torch_config, backend="torch"))
    candidates = predict_candidates(run, 8, 16, Precision("fp32", "cpu"), plans=["FF", "FS", "SS", "II"])
    peaks = [c.prediction.peak_bytes for c in candidates]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    assert [c.trainable > 0 for c in candidates] == [True] * 4  # the heads train even under FF
    reach = {c.plan: c.reach for c in candidates}
    assert reach["FF"] < reach["FS"] < reach["SS"] == reach["II"]  # a task reads as many layers under S as I
    assert candidates[3].trainable > candidates[2].trainable  # while I copies them per task


@pytest.mark.parametrize("rank", [4, 64])
def test_the_advice_predicts_lora_plans_at_the_rank_its_probes_train(rank):
    """A LoRA plan's capacity and peak depend on the rank: the advice predicts each plan with the
    LoRA settings of the run it probes, so the trainable count it reads is the trainer's."""
    settings = dict(tasks=["sst", "sts"], checkpoint="random", hidden_size=64, num_layers=2, data="demo",
                    lora_rank=rank, lora_alpha=2.0 * rank, steps=1, batch_size=4, max_length=16, progress=False)
    (candidate,) = predict_candidates(assemble(TrainConfig(**settings)), 4, 16, Precision("fp32", "cpu"),
                                      plans=["FL"])
    trained = Trainer(TrainConfig(**settings, plan="FL"))
    assert candidate.trainable == sum(p.numel() for p in trained.trainable)
    (at_default,) = predict_candidates(assemble(TrainConfig(**{**settings, "lora_rank": 8})), 4, 16,
                                       Precision("fp32", "cpu"), plans=["FL"])
    assert (candidate.trainable > at_default.trainable) == (rank > 8)

def fake_runs(scores: dict[str, float], calls: list):
    """Stands in for the child process of each probe run: a record with the plan's score, and a
    checkpoint in the run's folder saying how far the run got, as the trainer's would."""

    def run_one(config, rid, timeout_s=None):
        folder = Path(config.out_dir)
        resumed_from = (folder / "last.pt").read_text() if (folder / "last.pt").exists() else None
        calls.append((config.plan, config.stop_at, resumed_from))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "last.pt").write_text(f"{config.plan} at {config.stop_at or 1}")
        return {"run_id": rid, "status": "ok", "config": dataclasses.asdict(config),
                "metrics": {"overall": scores[config.plan]}, "memory": {"peak_bytes": 100 * MiB},
                "timing": {"steps": round(40 * (config.stop_at or 1)), "train_seconds": 12.0}}

    return run_one


@pytest.mark.parametrize(("plans", "rounds"), [(1, 1), (2, 1), (3, 1), (4, 2), (7, 2), (8, 3), (16, 4)])
def test_halving_rounds_go_on_while_more_than_one_plan_is_left(plans, rounds):
    assert halving_rounds(plans) == rounds


def test_successive_halving_stops_the_full_run_early_keeps_the_better_half_and_goes_on(tmp_path, monkeypatch):
    scores = {"FFFFFF": 0.3, "FFFSSS": 0.6, "FFSSSS": 0.7, "FSSSSS": 0.5}
    calls: list = []
    monkeypatch.setattr(mops.bench.sweep, "run_one", fake_runs(scores, calls))
    results = str(tmp_path / "advise.jsonl")
    train = {"data": "demo", "steps": 40, "progress": False}
    rounds = successive_halving(list(scores), ["sst"], "minilm", train, results)
    # four plans, two rounds: every run stopped at half its budget, then the better two run to the
    # end from where they stopped (each from its own checkpoint)
    assert sorted(calls, key=str) == sorted([(p, 0.5, None) for p in scores] + [
        ("FFSSSS", None, "FFSSSS at 0.5"), ("FFFSSS", None, "FFFSSS at 0.5")], key=str)
    assert [sorted(r) for r in rounds] == [sorted(scores), ["FFFSSS", "FFSSSS"]]
    assert {r["config"]["steps"] for scores_ in rounds for r in scores_.values()} == {40}  # the schedule's length
    # checkpoints kept: the finalists' full runs only (the stops they went on from, and the dropped
    # runs, are deleted; every run keeps its results)
    kept = sorted(path.read_text() for path in (tmp_path / "advise.runs").glob("*/last.pt"))
    assert kept == ["FFFSSS at 1", "FFSSSS at 1"]
    ranked, table = ranking(rounds, {plan: 200 * MiB for plan in scores})
    assert ranked == ["FFSSSS", "FFFSSS", "FSSSSS", "FFFFFF"]
    header, _, best = table.splitlines()[:3]
    assert [cell.strip() for cell in header.split("|")[1:7]] == ["plan", "pred MiB", "peak MiB", "steps", "train s",
                                                                 "overall"]
    assert [cell.strip() for cell in best.split("|")[1:7]] == ["FFSSSS", "200", "100", "40", "12", "0.700"]
    calls.clear()  # asked again: every probe run is in the results file already
    assert successive_halving(list(scores), ["sst"], "minilm", train, results) == rounds
    assert calls == []


def test_the_finalists_scores_are_those_of_the_full_runs_they_recommend(tmp_path):
    """Probing is the full run, stopped and resumed: a finalist's record equals `mops train` of the
    same settings run straight through (a linear schedule, so a shorter run would differ)."""
    train = dict(data="demo", num_layers=2, steps=8, batch_size=4, max_length=16, max_eval_examples=16, lr=1e-3,
                 schedule="linear", sampling="round_robin", backend="torch", device="cpu", progress=False)
    rounds = successive_halving(["FS", "FI", "SS", "II"], ["sst", "sts"], "random", train, str(tmp_path / "a.jsonl"))
    assert [len(r) for r in rounds] == [4, 2]
    finalist, record = next(iter(rounds[1].items()))
    assert record["resumed"] and [point["step"] for point in record["curve"]] == [4, 8]
    assert {path.name for path in Path(record["config"]["out_dir"]).glob("*.pt")} == {"last.pt", "best.pt"}
    straight = Trainer(TrainConfig(**train, tasks=["sst", "sts"], checkpoint="random", plan=finalist,
                                   out_dir=str(tmp_path / "straight"))).train()
    assert record["metrics"] == straight["metrics"]


def test_advise_refuses_an_unreadable_or_unmeetable_budget(capsys):
    for budget, says in (("4 gigs", "cannot read the budget '4 gigs'"), ("1MiB", "no plan fits 1 MiB: the cheapest, FFFFFF")):
        with pytest.raises(SystemExit) as ended:
            main(["advise", "--budget", budget, "--batch-size", "8", "--max-length", "32"])
        assert ended.value.code == 2
        assert says in capsys.readouterr().err


def test_task_groups_split_the_tasks_between_one_copy_and_one_per_task():
    assert task_groupings(["sst", "para", "sts"]) == ["[sst+para|sts]", "[sst+sts|para]", "[sst|para+sts]"]
    assert task_groupings(["sst", "sts"]) == []  # two tasks: S and I are the only splits
    assert len(task_groupings(["a", "b", "c", "d"])) == 13  # Bell(4) = 15 splits, less S and I
    grouped = candidate_plans(2, "FSI", ["[a+b|c]"])
    assert grouped == ["FF", "FS", "FI", "SS", "SI", "II", "F1[a+b|c]1", "S1[a+b|c]1", "[a+b|c]2", "[a+b|c]1I1"]
    assert "L1[a+b|c]1" in candidate_plans(2, "FLI", ["[a+b|c]"])  # counted: "L[a+b|c]" is one adapted layer
    assert len(candidate_plans(6, groupings=task_groupings(["sst", "para", "sts"]))) == 210 + 3 * 252


def test_advise_probes_the_very_run_it_recommends(tmp_path, monkeypatch, capsys):
    """`--groups` adds the grouped plans (printed in canonical form). Every probe is the full run
    with the user's settings (schedule, seed, budget) stopped early, and the recommended command
    is that run; `--probe-steps` sets the full run's length from its first round instead."""
    seen: list = []

    def run_one(config, rid, timeout_s=None):
        seen.append((config.schedule, config.steps, config.stop_at, config.seed))
        return {"run_id": rid, "status": "ok", "config": dataclasses.asdict(config),
                "metrics": {"overall": 0.1 * len(set(config.plan))}, "memory": {"peak_bytes": 10 * MiB}}

    monkeypatch.setattr(mops.bench.sweep, "run_one", run_one)
    small = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    monkeypatch.setattr("mops.multitask.training.assembly.build_encoder",
                        lambda config: BertModel(small, backend="torch"))  # two layers
    common = ["advise", "--budget", "4GiB", "--data", "demo", "--batch-size", "4", "--max-length", "16",
              "--candidates", "4"]

    def advise(*args: str) -> str:
        seen.clear()
        with pytest.raises(SystemExit) as ended:
            main([*common, *args])
        assert ended.value.code == 0
        return capsys.readouterr().out

    printed = advise("--groups", "--probe-steps", "2", "--results", str(tmp_path / "a.jsonl"))
    assert "33 of 33 plans are predicted to fit 4,096 MiB" in printed  # 15 plain plans and 6 per grouping
    assert "each probe is the full run (4 steps) stopped at 1/2, the end of it" in printed
    assert set(seen) == {("linear", 4, 0.5, 0), ("linear", 4, None, 0)}  # 2 steps, then 4
    plan, command = printed.split("recommended: ")[1].strip().split("\n")[:2]
    assert command.split() == ["mops", "train", "--plan", plan, "--data", "demo", "--batch-size", "4",
                               "--max-length", "16", "--steps", "4"]
    printed = advise("--steps", "8", "--schedule", "constant", "--seed", "3", "--results", str(tmp_path / "b.jsonl"))
    assert "15 of 15 plans" in printed and set(seen) == {("constant", 8, 0.5, 3), ("constant", 8, None, 3)}
    command = printed.split("recommended: ")[1].split("\n")[1]
    assert all(f" {setting} " in f"{command} " for setting in ("--steps 8", "--schedule constant", "--seed 3"))
    for wrong, says in ((["--probe-steps", "2", "--steps", "8"], "give it or the run's budget"),
                        (["--probe-steps", "0"], "--probe-steps must be a positive number of steps, got 0")):
        with pytest.raises(SystemExit) as ended:
            main([*common, *wrong])
        assert ended.value.code == 2 and says in capsys.readouterr().err
