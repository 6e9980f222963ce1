"""mops.bench.records: the append-only JSONL results file, its merge across shards, and resume."""

from __future__ import annotations

import json
import warnings

import pytest

from mops.bench.records import TornLineWarning, append_record, completed_ids, read_records, run_id


def record(plan: str, status: str = "ok", seed: int = 0, **extra) -> dict:
    config = {"checkpoint": "minilm", "hidden_size": 384, "plan": plan, "tasks": ["sst", "para", "sts"], "seed": seed}
    return {"run_id": run_id(config), "status": status, "error": None if status == "ok" else status, "config": config, **extra}


def test_append_then_read_round_trips(tmp_path):
    path = tmp_path / "results.jsonl"
    runs = [record("FFSSII", metrics={"overall": 0.61, "sts_r": float("nan")}), record("SSSSSS", "oom")]
    for run in runs:
        append_record(path, run)
    back = read_records(path)
    assert [r["run_id"] for r in back] == [r["run_id"] for r in runs]
    assert back[0]["config"] == runs[0]["config"] and back[1]["status"] == "oom"
    assert back[0]["metrics"]["overall"] == 0.61
    assert path.read_text().count("\n") == 2  # one line per run


def test_every_line_is_a_whole_record_even_with_newlines_in_strings(tmp_path):
    path = tmp_path / "nested" / "results.jsonl"  # parent folders are created
    append_record(path, record("IIIIII", "failed", error="Traceback:\n  line 1\nValueError"))
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["error"].endswith("ValueError")


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, record("FFFFFF"))
    whole = json.dumps(record("SSSSSS"))
    with open(path, "a") as out:
        out.write(whole[: len(whole) // 2])  # the writer was killed mid-line
    with pytest.warns(TornLineWarning, match=r"results.jsonl:2: skipped \(last line, cut short"):
        back = read_records(path)
    assert [r["config"]["plan"] for r in back] == ["FFFFFF"]


def test_appending_after_a_torn_line_starts_a_fresh_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"run_id": "abc", "sta')  # left by a crash
    append_record(path, record("SSIIII"))
    with pytest.warns(TornLineWarning, match=":1: skipped"):
        back = read_records(path)
    assert [r["config"]["plan"] for r in back] == ["SSIIII"]


def test_clean_files_read_without_warnings(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, record("FFSSII"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_records(path)) == 1


def test_shards_merge_by_glob_and_by_list(tmp_path):
    plans = ["FFFFFF", "FFSSII", "SSSSSS", "IIIIII"]
    for shard, plan in enumerate(plans):
        append_record(tmp_path / f"results.shard-{shard}-of-4.jsonl", record(plan))
    by_glob = read_records(str(tmp_path / "results.shard-*-of-4.jsonl"))
    assert [r["config"]["plan"] for r in by_glob] == plans
    by_list = read_records([tmp_path / "results.shard-3-of-4.jsonl", tmp_path / "results.shard-0-of-4.jsonl"])
    assert [r["config"]["plan"] for r in by_list] == ["IIIIII", "FFFFFF"]


def test_a_path_that_names_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_records(str(tmp_path / "nothing-here-*.jsonl"))


def test_duplicates_resolve_to_the_latest_ok_else_the_latest(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    append_record(first, record("FFSSII", "failed"))
    append_record(first, record("FFSSII", "ok", metrics={"overall": 0.5}))
    append_record(second, record("FFSSII", "ok", metrics={"overall": 0.6}))  # later ok wins
    append_record(second, record("FFSSII", "failed"))  # a failed retry never hides an ok
    append_record(first, record("SSSSSS", "failed", error="first"))
    append_record(second, record("SSSSSS", "oom"))  # no ok at all: the latest wins
    back = {r["config"]["plan"]: r for r in read_records([first, second])}
    assert len(back) == 2
    assert back["FFSSII"]["status"] == "ok" and back["FFSSII"]["metrics"]["overall"] == 0.6
    assert back["SSSSSS"]["status"] == "oom"


def test_run_id_is_stable_across_key_order_and_sensitive_to_values():
    a = {"plan": "FFSSII", "seed": 0, "optim": {"lr": 1e-5, "betas": [0.9, 0.999]}}
    b = {"optim": {"betas": [0.9, 0.999], "lr": 1e-5}, "seed": 0, "plan": "FFSSII"}
    assert run_id(a) == run_id(b)
    assert run_id(a) == run_id(json.loads(json.dumps(a)))  # survives a round trip through the file
    assert run_id(a) != run_id({**a, "seed": 1})
    assert len(run_id(a)) == 16 and int(run_id(a), 16) >= 0


def test_run_id_is_pinned():
    # A changed hash would make every resumed sweep redo its finished runs.
    assert run_id({"plan": "FFSSII", "seed": 0}) == "2eacbc1d2ff15480"  # sha256 of {"plan":"FFSSII","seed":0}


def test_records_without_run_id_get_one_from_their_config(tmp_path):
    path = tmp_path / "results.jsonl"
    config = {"plan": "FFSSII", "seed": 0}
    path.write_text(json.dumps({"status": "ok", "config": config}) + "\n")
    assert read_records(path)[0]["run_id"] == run_id(config)


def test_completed_ids_count_ok_and_oom_and_retry_failed(tmp_path):
    path = tmp_path / "results.jsonl"
    ok, oom, failed = record("FFFFFF"), record("SSSSSS", "oom"), record("IIIIII", "failed")
    for run in (ok, oom, failed):
        append_record(path, run)
    assert completed_ids(path) == {ok["run_id"], oom["run_id"]}
    assert completed_ids(path, done=("ok",)) == {ok["run_id"]}
    append_record(path, record("IIIIII", "ok"))  # the retry succeeded
    assert failed["run_id"] in completed_ids(path)


def test_completed_ids_of_a_missing_file_is_empty(tmp_path):
    assert completed_ids(tmp_path / "not-yet.jsonl") == set()


@pytest.mark.parametrize("bad", [{"run_id": "x", "config": ["FFFFFF"]}, {"run_id": 7, "config": {}}],
                         ids=["config a list", "run_id a number"])
def test_a_record_of_the_wrong_shape_is_skipped_with_a_warning_naming_its_line(tmp_path, bad):
    """Such a line once ended `mops report` in an AttributeError."""
    path = tmp_path / "results.jsonl"
    append_record(path, bad)
    append_record(path, record("FFFFFF"))
    with pytest.warns(TornLineWarning, match=r"results.jsonl:1: skipped \(its config is no JSON object"):
        back = read_records(path)
    assert [r["config"]["plan"] for r in back] == ["FFFFFF"]
