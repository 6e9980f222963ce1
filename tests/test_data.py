"""mops.multitask.data.examples: the CS224N reader and writer on small hand-made files and on the real files."""

import logging
import os
from pathlib import Path

import pytest

from mops.multitask.data.examples import (
    FILES,
    TASK_KINDS,
    DataError,
    Example,
    MissingDataError,
    data_file,
    load_split,
    read_file,
    write_file,
)
from mops.options import flag_of


def real_data_dir() -> Path:
    env = os.environ.get("MOPS_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "cs224n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


SST_HEADER = "\tid\tsentence\tsentiment\n"
PARA_HEADER = "\tid\tsentence1\tsentence2\tis_duplicate\n"


def test_sst_quoted_fields_with_tabs_and_quotes(tmp_path):
    write(
        tmp_path,
        "ids-sst-train.csv",
        SST_HEADER
        + "0\ta1\t It 's fine .\t3\n"
        + '1\ta2\t"a tab\there and ""quotes"" inside"\t0\n'
        + '2\ta3\t"spans\ntwo lines"\t4\n',
    )
    loaded = load_split("sst", "train", tmp_path)
    assert loaded.examples == [
        Example("a1", "It 's fine .", None, 3),
        Example("a2", 'a tab\there and "quotes" inside', None, 0),
        Example("a3", "spans\ntwo lines", None, 4),
    ]
    assert loaded.skipped_blank == 0
    assert loaded.path == tmp_path / "ids-sst-train.csv"
    assert all(type(ex.label) is int for ex in loaded.examples)


def test_quora_blank_labels_skipped_counted_and_logged_once(tmp_path, caplog):
    write(
        tmp_path,
        "quora-dev.csv",
        PARA_HEADER.replace("\n", "\r\n")
        + "7\tq1\tHow do I cook rice?\tWhat is the way to cook rice?\t1.0\r\n"
        + "8\tq2\tWhy is the sky blue?\t\t\r\n"
        + "9\tq3\tA?\tB?\t  \r\n"
        + "10\tq4\tWho are you?\tWhere are you?\t0.0\r\n",
    )
    with caplog.at_level(logging.WARNING, logger="mops.multitask.data.examples"):
        loaded = load_split("para", "dev", tmp_path)
    assert [(ex.uid, ex.label) for ex in loaded.examples] == [("q1", 1), ("q4", 0)]
    assert all(type(ex.label) is int for ex in loaded.examples)
    assert loaded.examples[0].text_b == "What is the way to cook rice?"
    assert loaded.skipped_blank == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "skipped 2 row(s)" in messages[0] and "quora-dev.csv" in messages[0]


def test_sts_float_labels(tmp_path):
    write(
        tmp_path,
        "sts-dev.csv",
        "\tid\tsentence1\tsentence2\tsimilarity\n0\ts1\tA man eats.\tA man is eating.\t4.6\n1\ts2\tx\ty\t0\n",
    )
    labels = [ex.label for ex in load_split("sts", "dev", tmp_path).examples]
    assert labels == [4.6, 0.0] and all(type(v) is float for v in labels)


def test_test_student_file_with_two_index_columns_has_no_labels(tmp_path):
    text = "0\t\tid\tsentence\n1\t0.0\tc1\t A review .\n2\t1.0\tc2\tAnother .\n"
    write(tmp_path, "ids-cfimdb-test-student.csv", text)
    loaded = load_split("cfimdb", "test", tmp_path)
    assert loaded.examples == [Example("c1", "A review .", None, None), Example("c2", "Another .", None, None)]


@pytest.mark.parametrize(
    "body, line, reason",
    [
        ("0\ta1\tgood .\t3\n1\ta2\tbad .\n", 3, "3 columns, expected 4"),
        ("0\ta1\tgood .\tthree\n", 2, "is not a number"),
        ("0\ta1\tgood .\t3\n1\ta2\tbad .\t5\n", 3, "outside the valid range 0..4"),
        ("0\ta1\tgood .\t-1\n", 2, "outside the valid range"),
        ("0\ta1\tgood .\t2.5\n", 2, "not a whole class number"),
        ("0\ta1\tgood .\tnan\n", 2, "outside the valid range"),
        ("0\ta1\t  \t3\n", 2, "column 'sentence' is empty"),
        ("0\t\tgood .\t3\n", 2, "id column is empty"),
        ('0\ta1\t"never closed\t3\n1\ta2\tok\t2\n2\ta3\tok\t1\n', 2, "the row runs to line 4"),
    ],
)
def test_malformed_rows_name_file_line_and_reason(tmp_path, body, line, reason):
    write(tmp_path, "ids-sst-dev.csv", SST_HEADER + body)
    with pytest.raises(DataError) as info:
        load_split("sst", "dev", tmp_path)
    message = str(info.value)
    assert "ids-sst-dev.csv" in message
    assert f"line {line}:" in message
    assert reason in message


def test_sts_label_above_five_fails(tmp_path):
    write(tmp_path, "sts-train.csv", "\tid\tsentence1\tsentence2\tsimilarity\n0\ts1\ta\tb\t5.5\n")
    with pytest.raises(DataError, match=r"sts-train.csv, line 2: label '5.5' is outside"):
        load_split("sts", "train", tmp_path)


def test_pair_with_missing_second_sentence_fails(tmp_path):
    write(tmp_path, "quora-train.csv", PARA_HEADER + "0\tq1\tHow?\t \t1.0\n")
    with pytest.raises(DataError, match=r"quora-train.csv, line 2: column 'sentence2' is empty"):
        load_split("para", "train", tmp_path)


def test_header_without_label_column_fails_for_train(tmp_path):
    write(tmp_path, "ids-sst-train.csv", "\tid\tsentence\n0\ta\tgood .\n")
    with pytest.raises(DataError, match=r"ids-sst-train.csv, line 1: the header lacks column\(s\) sentiment"):
        load_split("sst", "train", tmp_path)


def test_empty_file_fails(tmp_path):
    write(tmp_path, "sts-dev.csv", "")
    with pytest.raises(DataError, match="sts-dev.csv is empty"):
        load_split("sts", "dev", tmp_path)


def test_a_file_of_only_a_header_fails_before_any_training(tmp_path):
    """An empty dev set once failed after a whole evaluation interval, naming no file."""
    path = write(tmp_path, "ids-sst-dev.csv", SST_HEADER)
    with pytest.raises(DataError, match=f"{path}: no examples; a dev file needs at least one labelled row"):
        load_split("sst", "dev", tmp_path)
    write(tmp_path, "quora-train.csv", PARA_HEADER + "0\tq1\ta b\tc d\t\n")
    with pytest.raises(DataError, match=r"no examples \(1 row\(s\) with a blank label skipped\)"):
        load_split("para", "train", tmp_path)


def test_missing_file_says_how_to_get_data(tmp_path):
    with pytest.raises(MissingDataError) as info:
        load_split("sst", "train", tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "ids-sst-train.csv") in message
    assert "mops data download DIR" in message and f"pass `{flag_of('data')} DIR`" in message  # the real option
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DataError)


def test_missing_cfimdb_says_it_has_no_download(tmp_path):
    with pytest.raises(MissingDataError, match="CFIMDB has no public download"):
        load_split("cfimdb", "dev", tmp_path)


def test_unknown_task_and_split_list_valid_names(tmp_path):
    with pytest.raises(DataError, match="valid tasks: sst, cfimdb, para, sts"):
        load_split("imdb", "train", tmp_path)
    with pytest.raises(DataError, match="valid splits: train, dev, test"):
        load_split("sst", "validation", tmp_path)
    with pytest.raises(DataError, match="its splits: train, dev"):
        load_split("para", "test", tmp_path)


@pytest.mark.parametrize("task", list(TASK_KINDS))
def test_write_then_read_round_trip(tmp_path, task):
    kind = TASK_KINDS[task]
    labels = [0.0, 2.25, 5.0] if kind.is_regression else [0, 1, 1]
    examples = [
        Example(f"u{i}", f'sentence {i} with\ta tab and "quotes"', "second one" if kind.is_pair else None, label)
        for i, label in enumerate(labels)
    ]
    path = write_file(tmp_path / FILES[task]["train"], task, examples)
    assert read_file(path, task) == (examples, 0)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    unlabelled = write_file(tmp_path / "test.csv", task, examples, labelled=False)
    expected = [Example(e.uid, e.text_a, e.text_b, None) for e in examples]
    assert read_file(unlabelled, task, labelled=False)[0] == expected


def test_write_failure_leaves_nothing_behind(tmp_path):
    bad = [Example("u0", "a", None, 1), Example("u1", "a", "pair in a single-sentence task", 1)]
    with pytest.raises(DataError, match="does not fit task 'sst'"):
        write_file(tmp_path / "out.csv", "sst", bad)
    assert list(tmp_path.iterdir()) == []


# --- the real CS224N files ------------------------------------------------------------------

EXPECTED_ROWS = {  # from the data README; quora files each hold one blank-label row
    ("sst", "train"): (8544, 0),
    ("sst", "dev"): (1101, 0),
    ("sst", "test"): (2210, 0),
    ("cfimdb", "train"): (1707, 0),
    ("cfimdb", "dev"): (245, 0),
    ("cfimdb", "test"): (488, 0),
    ("para", "train"): (15999, 1),
    ("para", "dev"): (4213, 1),
    ("sts", "train"): (6040, 0),
    ("sts", "dev"): (863, 0),
    ("sts", "test"): (1725, 0),
}


@pytest.mark.parametrize("task, split", list(EXPECTED_ROWS))
def test_real_files_row_counts(task, split):
    folder = real_data_dir()
    if not data_file(task, split, folder).is_file():
        pytest.skip(f"CS224N data not found at {folder} (set MOPS_DATA_DIR to the folder holding it)")
    loaded = load_split(task, split, folder)
    rows, blank = EXPECTED_ROWS[task, split]
    assert (len(loaded.examples), loaded.skipped_blank) == (rows, blank)
    kind = TASK_KINDS[task]
    assert len({ex.uid for ex in loaded.examples}) == rows
    assert all((ex.text_b is not None) == kind.is_pair for ex in loaded.examples)
    if split == "test":
        assert all(ex.label is None for ex in loaded.examples)
    else:
        low, high = kind.label_range
        assert all(low <= ex.label <= high for ex in loaded.examples)
        if not kind.is_regression:
            assert {ex.label for ex in loaded.examples} == set(range(kind.num_classes))
