"""bench.advise and `mops advise`: reading a budget, the plans considered, the shortlist on the
(peak, capacity) front, successive halving through the sweep machinery (and its resumption),
and the errors for budgets that cannot be read or met."""

from __future__ import annotations

import dataclasses

import pytest

import bench.sweep
from bench.advise import (
    AdviceError, Candidate, candidate_plans, front, parse_budget, predict_candidates, ranking, shortlist, spread,
    successive_halving, task_groupings,
)
from bench.prediction import Prediction
from minbert import BertConfig, BertModel
from mops.cli import main
from multitask.precision import Precision
from multitask.tasks import make_tasks

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


def test_the_shortlist_fits_the_budget_keeps_the_front_and_spreads_over_it():
    pool = [candidate("FF", 100, 10), candidate("FS", 200, 50), candidate("SF", 250, 40),  # SF: dominated by FS
            candidate("SS", 300, 90), candidate("SI", 400, 150), candidate("II", 900, 300)]
    assert [c.plan for c in front(pool)] == ["FF", "FS", "SS", "SI", "II"]
    assert [c.plan for c in shortlist(pool, 450 * MiB, 8)] == ["FF", "FS", "SS", "SI"]
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


def test_predictions_of_every_candidate_rise_with_capacity():
    torch_config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64)
    candidates = predict_candidates(BertModel(torch_config, backend="torch"), make_tasks(["sst", "sts"], "demo"),
                                    8, 16, Precision("fp32", "cpu"), plans=["FF", "FS", "SS", "II"])
    peaks = [c.prediction.peak_bytes for c in candidates]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    assert [c.trainable > 0 for c in candidates] == [True] * 4  # the heads train even under FF
    reach = {c.plan: c.reach for c in candidates}
    assert reach["FF"] < reach["FS"] < reach["SS"] == reach["II"]  # a task reads as many layers under S as I
    assert candidates[3].trainable > candidates[2].trainable  # while I copies them per task


def fake_runs(scores: dict[str, float], calls: list):
    """Stands in for the child process of each probe run: a record with the plan's score."""

    def run_one(config, rid, timeout_s=None):
        calls.append((config.plan, config.steps))
        return {"run_id": rid, "status": "ok", "config": dataclasses.asdict(config),
                "metrics": {"overall": scores[config.plan]}, "memory": {"peak_bytes": 100 * MiB}}

    return run_one


def test_successive_halving_keeps_the_better_half_doubles_the_steps_and_resumes(tmp_path, monkeypatch):
    scores = {"FFFFFF": 0.3, "FFFSSS": 0.6, "FFSSSS": 0.7, "FSSSSS": 0.5}
    calls: list = []
    monkeypatch.setattr(bench.sweep, "run_one", fake_runs(scores, calls))
    results = str(tmp_path / "advise.jsonl")
    rounds = successive_halving(list(scores), ["sst"], "minilm", {"data": "demo", "progress": False}, 10, results)
    assert sorted(calls) == sorted([(p, 10) for p in scores] + [("FFSSSS", 20), ("FFFSSS", 20)])
    assert [sorted(r) for r in rounds] == [sorted(scores), ["FFFSSS", "FFSSSS"]]
    ranked, table = ranking(rounds, {plan: 200 * MiB for plan in scores}, 10)
    assert ranked == ["FFSSSS", "FFFSSS", "FSSSSS", "FFFFFF"]
    assert [cell.strip() for cell in table.splitlines()[2].split("|")[1:6]] == ["FFSSSS", "200", "100", "20", "0.700"]
    calls.clear()  # asked again: every probe run is in the results file already
    assert successive_halving(list(scores), ["sst"], "minilm", {"data": "demo", "progress": False}, 10,
                              results) == rounds
    assert calls == []


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


def test_advise_with_groups_probes_at_a_constant_rate_unless_told(tmp_path, monkeypatch, capsys):
    """`--groups` adds the grouped plans (printed in canonical form); probe runs use a constant
    schedule, since a linear decay over a few dozen steps halves what they can learn."""
    seen: list = []

    def run_one(config, rid, timeout_s=None):
        seen.append((config.plan, config.schedule))
        return {"run_id": rid, "status": "ok", "config": dataclasses.asdict(config),
                "metrics": {"overall": 0.1 * len(set(config.plan))}, "memory": {"peak_bytes": 10 * MiB}}

    monkeypatch.setattr(bench.sweep, "run_one", run_one)
    small = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    monkeypatch.setattr("mops.cli.build_encoder", lambda config: BertModel(small, backend="torch"))  # two layers
    common = ["advise", "--budget", "4GiB", "--data", "demo", "--batch-size", "4", "--max-length", "16", "--probe-steps", "2", "--candidates", "4"]
    with pytest.raises(SystemExit) as ended:
        main([*common, "--groups", "--results", str(tmp_path / "a.jsonl")])
    assert ended.value.code == 0
    printed = capsys.readouterr().out
    assert "33 of 33 plans are predicted to fit 4,096 MiB" in printed  # 15 plain plans and 6 per grouping
    assert seen and {schedule for _, schedule in seen} == {"constant"}
    assert "recommended:" in printed and "--schedule" not in printed.split("recommended:")[1]  # the user's settings
    seen.clear()
    with pytest.raises(SystemExit):
        main([*common, "--schedule", "linear", "--results", str(tmp_path / "b.jsonl")])
    assert "15 of 15 plans" in capsys.readouterr().out and {schedule for _, schedule in seen} == {"linear"}
