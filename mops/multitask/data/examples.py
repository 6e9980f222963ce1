"""Examples and the CS224N file format: one reader and one writer for every task's CSV files.

The files are tab-separated with a header row, fields quoted CSV-style where needed, and one or
more leading index columns before `id` (the train/dev files have one unnamed index column, the
SST and CFIMDB test-student files have two). Columns are found by their header names, so the
index columns are ignored whatever their number.

Every failure here is a `DataError` whose message names the file, the line (physical, 1-based)
and what to do, so a bad row is found without opening a debugger.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mops.common.files import atomic_open

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")

# File names per task and split, exactly as the CS224N default project names them.
FILES: dict[str, dict[str, str]] = {
    "sst": {"train": "ids-sst-train.csv", "dev": "ids-sst-dev.csv", "test": "ids-sst-test-student.csv"},
    "cfimdb": {"train": "ids-cfimdb-train.csv", "dev": "ids-cfimdb-dev.csv", "test": "ids-cfimdb-test-student.csv"},
    "para": {"train": "quora-train.csv", "dev": "quora-dev.csv"},
    "sts": {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv"},
}


@dataclass(frozen=True)
class TaskKind:
    """What a task's files hold: which text columns, which label column, and what a label may be."""

    text_columns: tuple[str, ...]  # one column for single sentences, two for pairs
    label_column: str
    num_classes: int | None  # classes 0..num_classes-1; None for regression
    label_range: tuple[float, float]  # inclusive bounds of a valid label

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def is_regression(self) -> bool:
        return self.num_classes is None


TASK_KINDS: dict[str, TaskKind] = {
    "sst": TaskKind(("sentence",), "sentiment", 5, (0, 4)),
    "cfimdb": TaskKind(("sentence",), "sentiment", 2, (0, 1)),
    "para": TaskKind(("sentence1", "sentence2"), "is_duplicate", 2, (0, 1)),
    "sts": TaskKind(("sentence1", "sentence2"), "similarity", None, (0.0, 5.0)),
}

DATA_DIR_ENV = "MOPS_DATA_DIR"  # where tests and tools look for the CS224N files when no folder is given


class DataError(ValueError):
    """Bad or missing task data; the message says which file, which line, what was wrong, what to do."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder that is not there."""


@dataclass(frozen=True)
class Example:
    """One labelled (or, for test files, unlabelled) sentence or sentence pair."""

    uid: str
    text_a: str
    text_b: str | None
    label: int | float | None  # int class for classification, float for regression, None when unknown


@dataclass
class LoadedSplit:
    """The examples of one file, and how many rows were dropped for a blank label."""

    examples: list[Example]
    skipped_blank: int
    path: Path


def data_file(task: str, split: str, data_dir: str | os.PathLike) -> Path:
    """The path of a task's split inside `data_dir`; fails listing the valid names when unknown."""
    if task not in FILES:
        raise DataError(f"unknown task {task!r}; valid tasks: {', '.join(FILES)}")
    if split not in FILES[task]:
        if split in SPLITS:
            raise DataError(
                f"task {task!r} has no {split!r} file in the CS224N data; its splits: {', '.join(FILES[task])}"
            )
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return Path(data_dir) / FILES[task][split]


def _missing_file_message(task: str, path: Path) -> str:
    where = f"{path.parent} does not exist" if not path.parent.is_dir() else f"{path.parent} has no {path.name}"
    message = (
        f"no {task} data at {path} ({where}). Get the public corpora with `mops data download DIR` "
        f"and pass `--data DIR`, or point `--data` at a folder holding the CS224N files."
    )
    if task == "cfimdb":
        message += (
            " CFIMDB has no public download in this format: copy ids-cfimdb-*.csv from the CS224N "
            "minBERT default project's data/ folder."
        )
    return message


def load_split(task: str, split: str, data_dir: str | os.PathLike) -> LoadedSplit:
    """Read one CS224N file into examples; skips (and counts) rows whose label is blank."""
    path = data_file(task, split, data_dir)
    if not path.is_file():
        raise MissingDataError(_missing_file_message(task, path))
    examples, skipped = read_file(path, task, labelled=split != "test")
    if skipped:
        log.warning("%s: skipped %d row(s) with a blank label", path, skipped)
    if not examples:  # found now, not after training an evaluation interval
        blank = f" ({skipped} row(s) with a blank label skipped)" if skipped else ""
        row = "row" if split == "test" else "labelled row"
        raise DataError(f"{path}: no examples{blank}; a {split} file needs at least one {row}")
    return LoadedSplit(examples, skipped, path)


def _columns(header: list[str], kind: TaskKind, labelled: bool, path: Path) -> tuple[int, list[int], int | None]:
    """Positions of id, the text columns and the label column (None when absent from a test file)."""
    wanted = ["id", *kind.text_columns] + ([kind.label_column] if labelled else [])
    missing = [name for name in wanted if name not in header]
    if missing:
        raise DataError(
            f"{path}, line 1: the header lacks column(s) {', '.join(missing)}; found {header}. "
            f"A {path.name} file needs the columns {', '.join(wanted)} (after any index columns)."
        )
    label = header.index(kind.label_column) if kind.label_column in header else None
    return header.index("id"), [header.index(name) for name in kind.text_columns], label


def _parse_label(text: str, kind: TaskKind, where: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: label {text!r} is not a number; fix or remove the row") from None
    low, high = kind.label_range
    if not math.isfinite(value) or not low <= value <= high:
        raise DataError(f"{where}: label {text!r} is outside the valid range {low}..{high}; fix or remove the row")
    if kind.is_regression:
        return value
    if not value.is_integer():
        raise DataError(f"{where}: label {text!r} is not a whole class number 0..{kind.num_classes - 1}")
    return int(value)


def read_file(path: str | os.PathLike, task: str, labelled: bool = True) -> tuple[list[Example], int]:
    """Parse one file of `task`'s format. Returns the examples and the number of blank-label rows skipped.

    `labelled=False` (test files) makes the label column optional; when present it is still read.
    """
    path = Path(path)
    if task not in TASK_KINDS:
        raise DataError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_KINDS)}")
    kind = TASK_KINDS[task]
    examples: list[Example] = []
    skipped = 0
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty; expected a header row and data rows")
            id_col, text_cols, label_col = _columns(header, kind, labelled, path)
            line_end = reader.line_num
            for row in reader:
                first_line, line_end = line_end + 1, reader.line_num
                where = f"{path}, line {first_line}"
                if not row:
                    continue  # a blank line between rows
                if len(row) != len(header):
                    spans = f" (the row runs to line {line_end}: an unclosed quote?)" if line_end > first_line else ""
                    raise DataError(
                        f"{where}: {len(row)} columns, expected {len(header)} like the header "
                        f"{header}{spans}; fix or remove the row"
                    )
                label: int | float | None = None
                if label_col is not None:
                    if not row[label_col].strip():
                        skipped += 1
                        continue
                uid = row[id_col].strip()
                if not uid:
                    raise DataError(f"{where}: the id column is empty; every row needs an id")
                texts = [row[col].strip() for col in text_cols]
                for name, text in zip(kind.text_columns, texts):
                    if not text:
                        raise DataError(f"{where}: column {name!r} is empty; every row needs its sentence(s)")
                if label_col is not None:
                    label = _parse_label(row[label_col].strip(), kind, where)
                examples.append(Example(uid, texts[0], texts[1] if kind.is_pair else None, label))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{path}, line {reader.line_num}: {err}") from None
    return examples, skipped


def format_label(label: int | float | None, task: str) -> str:
    """A label as the CS224N files write it: '3' for SST, '1.0' for Quora, '4.6' for STS."""
    if label is None:
        return ""
    if task == "para":
        return f"{float(label):.1f}"
    if TASK_KINDS[task].is_regression:
        return repr(float(label))
    return str(int(label))


def write_file(path: str | os.PathLike, task: str, examples: Iterable[Example], labelled: bool = True) -> Path:
    """Write examples in the CS224N format (temp file renamed into place, so no half-written file).

    `labelled=False` leaves out the label column, like the test-student files.
    """
    path = Path(path)
    kind = TASK_KINDS[task]
    header = ["", "id", *kind.text_columns] + ([kind.label_column] if labelled else [])
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for index, ex in enumerate(examples):
            if (ex.text_b is not None) != kind.is_pair:
                raise DataError(f"example {ex.uid!r} does not fit task {task!r} (pair: {kind.is_pair})")
            texts = [ex.text_a, ex.text_b] if kind.is_pair else [ex.text_a]
            row = [str(index), ex.uid, *texts] + ([format_label(ex.label, task)] if labelled else [])
            writer.writerow(row)
    return path
