"""Task records, dev metrics and the overall multitask score."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mops.multitask.data.examples import DataError, MissingDataError, load_split
from mops.multitask.data.synthetic import make_corpus
from mops.multitask.data.tasks import TASK_NAMES, make_tasks, overall_score, score


def real_data_dir() -> Path:
    env = os.environ.get("MOPS_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "cs224n"


# (kind, num_labels, metric, pair, metric_key) of every task
RECORDS = {
    "sst": ("classification", 5, "accuracy", False, "sst_acc"),
    "para": ("classification", 2, "accuracy", True, "para_acc"),
    "sts": ("regression", 1, "pearson", True, "sts_r"),
    "cfimdb": ("classification", 2, "accuracy", False, "cfimdb_acc"),
}


def record(task) -> tuple:
    return task.kind, task.num_labels, task.metric, task.pair, task.metric_key


# --- make_tasks -------------------------------------------------------------------------------


def test_every_task_has_a_record():
    assert set(TASK_NAMES) == set(RECORDS)


def test_demo_tasks_describe_each_task_in_the_order_given():
    names = ["sts", "sst", "cfimdb", "para"]
    tasks = make_tasks(names, "demo")
    assert [task.name for task in tasks] == names
    for task in tasks:
        assert record(task) == RECORDS[task.name], task.name


def test_demo_loaders_read_the_synthetic_corpus_of_the_seed():
    sst, sts = make_tasks(["sst", "sts"], "demo", demo_seed=3)
    corpus = make_corpus(3)
    assert sst.loader("train") == corpus["sst"]["train"]
    assert sts.loader("dev") == corpus["sts"]["dev"]
    assert make_tasks(["sst"], "demo", demo_seed=4)[0].loader("train") != corpus["sst"]["train"]


def test_a_demo_split_that_does_not_exist_is_refused():
    (sst,) = make_tasks(["sst"], "demo")
    with pytest.raises(DataError, match="no 'test' split"):
        sst.loader("test")


CS224N_ROWS = {"sst": (8544, 1101), "para": (15999, 4213), "sts": (6040, 863), "cfimdb": (1707, 245)}  # train, dev


def test_cs224n_tasks_read_their_files_from_the_folder():
    folder = real_data_dir()
    if not folder.is_dir():
        pytest.skip(f"CS224N data not found at {folder} (set MOPS_DATA_DIR to the folder holding it)")
    tasks = make_tasks(list(CS224N_ROWS), folder)
    for task in tasks:
        assert record(task) == RECORDS[task.name], task.name
        for split, rows in zip(("train", "dev"), CS224N_ROWS[task.name]):
            examples = task.loader(split)
            assert len(examples) == rows, (task.name, split)
            assert examples == load_split(task.name, split, folder).examples, (task.name, split)
            assert all((example.text_b is not None) == task.pair for example in examples), (task.name, split)


def test_a_cs224n_folder_is_read_only_when_a_split_is_loaded(tmp_path):
    missing = tmp_path / "nowhere"
    (sst,) = make_tasks(["sst"], missing)  # building the record reads nothing
    with pytest.raises(MissingDataError, match="nowhere"):
        sst.loader("train")


@pytest.mark.parametrize("names, message", [
    (["sst", "imdb"], "unknown task"),
    ([], "no tasks given"),
    (["sst", "para", "sst"], "names a task twice"),
])  # fmt: skip
def test_bad_task_lists_are_refused(names, message):
    with pytest.raises(DataError, match=message):
        make_tasks(names, "demo")


# --- score ------------------------------------------------------------------------------------


def task(name: str):
    return make_tasks([name], "demo")[0]


def test_accuracy_is_the_share_of_correct_predictions():
    predictions, labels = torch.tensor([0, 1, 4, 2, 2]), torch.tensor([0, 1, 3, 2, 0])
    assert score(task("sst"), predictions, labels) == pytest.approx(3 / 5)


def test_pearson_r_matches_numpy():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(200, generator=g) * 5
    predictions = labels + torch.randn(200, generator=g) * 2
    expected = np.corrcoef(predictions.numpy(), labels.numpy())[0, 1]
    assert 0.2 < expected < 0.9  # a correlation that is neither trivial nor perfect
    assert score(task("sts"), predictions, labels) == pytest.approx(expected, rel=1e-9)


def test_pearson_r_is_negative_for_reversed_predictions():
    labels = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert score(task("sts"), -labels, labels) == pytest.approx(-1.0)


@pytest.mark.parametrize("predictions, labels", [
    (torch.full((5,), 2.5), torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])),  # constant predictions
    (torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), torch.full((5,), 2.5)),  # constant labels
])  # fmt: skip
def test_pearson_r_of_a_constant_is_zero_not_nan(predictions, labels):
    assert score(task("sts"), predictions, labels) == 0.0


# --- overall_score ----------------------------------------------------------------------------


def test_overall_score_of_the_three_cs224n_tasks():
    sst_acc, para_acc, sts_r = 0.52, 0.81, 0.64
    metrics = {"sst_acc": sst_acc, "para_acc": para_acc, "sts_r": sts_r}
    assert overall_score(metrics) == pytest.approx((sst_acc + para_acc + (sts_r + 1) / 2) / 3)


@pytest.mark.parametrize("metrics, expected", [
    ({"cfimdb_acc": 0.9}, 0.9),
    ({"sts_r": -1.0}, 0.0),
    ({"sts_r": 0.5}, 0.75),
    ({"sst_acc": 0.4, "cfimdb_acc": 0.8}, 0.6),
    ({"sst_acc": 0.5, "sts_r": 0.0}, 0.5),
    ({"sst_acc": 0.3, "para_acc": 0.6, "sts_r": 0.2, "cfimdb_acc": 0.9}, (0.3 + 0.6 + 0.6 + 0.9) / 4),
])  # fmt: skip
def test_overall_score_is_the_mean_of_accuracies_and_rescaled_correlations(metrics, expected):
    assert overall_score(metrics) == pytest.approx(expected)


def test_overall_score_of_no_metrics_is_refused():
    with pytest.raises(ValueError, match="no metrics"):
        overall_score({})
