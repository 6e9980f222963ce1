"""`mops data download DIR`: fetch the public corpora and write them as CS224N files in DIR.

* sst: the Stanford Sentiment Treebank's PTB trees. The root label of each tree (0..4) is the
  sentence's label; its leaves, PTB escapes undone (-LRB- -> "(", \\/ -> "/"), are the sentence.
  Writes ids-sst-{train,dev}.csv and ids-sst-test-student.csv. The treebank's test labels are
  public, so the test file keeps its `sentiment` column (the CS224N copy withholds it);
  `load_split` reads the labels when the column is there.
* sts: STS-B as GLUE distributes it -> sts-{train,dev}.csv, and sts-test-student.csv (no labels)
  when the archive has a test file.
* para: QQP as GLUE distributes it -> quora-{train,dev}.csv (GLUE's full corpus, far larger than
  the CS224N sample). Its TSV has some broken lines (e.g. a question cut by a newline): they are
  skipped, counted, and the counts kept in the manifest.
* cfimdb: has no public download in this form; see `CFIMDB_HELP`.

Archives are kept in DIR/archives/. DIR/MANIFEST.json records the URL and SHA-256 of every
archive and the SHA-256, row count and skipped-line count of every converted file. A run skips
an archive whose file still matches its recorded digest (and re-converts only when an output
is missing or changed). An archive put in DIR/archives/ by hand, with no record, is used as is.
Digests are checked against an expected value only where one is configured (`SOURCES` or
`expected_sha256`); none is pinned here, since none could be verified when this was written.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from mops.common.files import atomic_open, atomic_write
from mops.multitask.data.examples import FILES, DataError, Example, write_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One public archive: where it lives and, when known, the SHA-256 it must have."""

    url: str
    sha256: str | None = None  # expected digest; None = not pinned (the digest is still recorded)

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


SOURCES: dict[str, Source] = {
    "sst": Source("https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"),
    "sts": Source("https://dl.fbaipublicfiles.com/glue/data/STS-B.zip"),
    "para": Source("https://dl.fbaipublicfiles.com/glue/data/QQP-clean.zip"),
}

CFIMDB_HELP = (
    "CFIMDB has no public download in the CS224N format. Its files (ids-cfimdb-train.csv, "
    "ids-cfimdb-dev.csv, ids-cfimdb-test-student.csv) come with the CS224N minBERT default project "
    "(the data/ folder of github.com/gpoesia/minbert-default-final-project); copy them into the data "
    "folder to use the cfimdb task, or train on the other tasks without it."
)

MANIFEST = "MANIFEST.json"
ARCHIVES = "archives"
TIMEOUT_S = 60.0  # per network read
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download that failed or a file that is not what it should be; the message says what to do."""


@dataclass
class FileRecord:
    """What the manifest knows of one file."""

    sha256: str
    bytes: int
    source: str  # the URL of an archive; the archive name for a converted file
    rows: int | None = None  # converted files: examples written
    skipped: int | None = None  # converted files: malformed source lines skipped


@dataclass
class Manifest:
    """DIR/MANIFEST.json: archives and converted files by name, plus notes for the user."""

    archives: dict[str, FileRecord] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                {k: FileRecord(**v) for k, v in raw.get("archives", {}).items()},
                {k: FileRecord(**v) for k, v in raw.get("files", {}).items()},
            )
        except (ValueError, TypeError, AttributeError) as err:
            log.warning("%s is unreadable (%s); starting a new manifest, so archives are fetched again", path, err)
            return cls()

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# --- fetching ---------------------------------------------------------------------------------


def fetch(url: str, path: Path, expected_sha256: str | None = None, progress: bool = True) -> FileRecord:
    """Download `url` to `path` through a temp file; on any failure nothing is left at `path`."""
    digest, received = hashlib.sha256(), 0
    with atomic_open(path, "wb") as out:
        request = urllib.request.Request(url, headers={"User-Agent": "mops-data-download"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name,
                          disable=not progress, leave=False) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        digest.update(block)
                        received += len(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as err:
            raise DownloadError(
                f"could not download {url}: HTTP {err.code} {err.reason}. Check the address (a mirror can be "
                f"given with --base-url), or fetch the file yourself and put it at {path}"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(
                f"could not download {url}: {reason}. Check the network and run the command again, or "
                f"fetch the file yourself and put it at {path}"
            ) from None
        # Checked before the rename: a short or damaged download never reaches `path`.
        if total is not None and received != total:
            raise DownloadError(
                f"the download of {url} stopped after {received:,} of {total:,} bytes; nothing was kept. "
                f"Run the command again."
            )
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256.lower():
            raise DownloadError(
                f"checksum mismatch for {url}: SHA-256 {actual}, expected {expected_sha256}. The file is "
                f"damaged or has changed upstream; nothing was kept. Run again, or if the new file is "
                f"right, pass its digest with --sha256."
            )
    return FileRecord(actual, received, url)


# --- converters: archive -> examples per split ------------------------------------------------


def _member(archive: zipfile.ZipFile, folder: str, name: str, required: bool = True) -> str | None:
    """The archive member `folder/name`, or the only member ending in `/name`."""
    names = [n for n in archive.namelist() if not n.startswith("__MACOSX")]
    if f"{folder}/{name}" in names:
        return f"{folder}/{name}"
    candidates = [n for n in names if n == name or n.endswith("/" + name)]
    if len(candidates) == 1:
        return candidates[0]
    if not required:
        return None
    raise DataError(
        f"{archive.filename} has no single {folder}/{name} (members: {', '.join(names[:20])}); "
        f"is it the right archive? Delete it and run again."
    )


def _lines(archive: zipfile.ZipFile, member: str) -> list[str]:
    """Text lines of a member; a line that is not UTF-8 is read as Latin-1 rather than dropped."""
    out = []
    for raw in archive.read(member).splitlines():
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(raw.decode("latin-1"))
    return out


PTB_ESCAPES = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}
_TREE_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_tree(line: str) -> tuple[int, list[str]]:
    """`(3 (2 It) (4 (2 's) (4 good)))` -> (3, ["It", "'s", "good"]); ValueError when malformed."""
    tokens = _TREE_TOKEN.findall(line)
    pos = 0

    def node() -> tuple[int, list[str]]:
        nonlocal pos
        if pos + 1 >= len(tokens) or tokens[pos] != "(" or not tokens[pos + 1].isdigit():
            raise ValueError(f"expected '(label' at token {pos + 1}")
        start, label, pos = pos + 1, int(tokens[pos + 1]), pos + 2
        leaves: list[str] = []
        if pos < len(tokens) and tokens[pos] not in "()":
            leaves.append(tokens[pos])  # a leaf: (label word)
            pos += 1
        else:
            while pos < len(tokens) and tokens[pos] == "(":
                leaves += node()[1]
        if pos >= len(tokens) or tokens[pos] != ")":
            raise ValueError(f"expected ')' at token {pos + 1}")
        if not leaves:
            raise ValueError(f"the node at token {start} has no words")
        pos += 1
        return label, leaves

    label, leaves = node()
    if pos != len(tokens):
        raise ValueError(f"text after the tree's closing ')' at token {pos + 1}")
    return label, leaves


def _unescape(word: str) -> str:
    return PTB_ESCAPES.get(word, word).replace("\\/", "/").replace("\\*", "*")


Converted = dict[str, tuple[list[Example], int]]  # split -> (examples, malformed source lines skipped)


def convert_sst(archive_path: Path) -> Converted:
    """trees/{train,dev,test}.txt -> examples per split (the test split labelled); a bad tree is an error."""
    splits = {}
    with zipfile.ZipFile(archive_path) as archive:
        for split, name in (("train", "train.txt"), ("dev", "dev.txt"), ("test", "test.txt")):
            member = _member(archive, "trees", name)
            examples = []
            for number, line in enumerate(_lines(archive, member), start=1):
                if not line.strip():
                    continue
                try:
                    label, leaves = parse_tree(line)
                except ValueError as err:
                    raise DataError(f"{archive_path.name}:{member}, line {number}: malformed tree ({err})") from None
                if not 0 <= label <= 4:
                    raise DataError(f"{archive_path.name}:{member}, line {number}: root label {label} is not 0..4")
                text = " ".join(_unescape(word) for word in leaves)
                examples.append(Example(f"sst-{split}-{len(examples):05d}", text, None, label))
            splits[split] = (examples, 0)
    return splits


def _read_tsv(
    archive: zipfile.ZipFile,
    member: str,
    columns: tuple[str, ...],
    make: Callable[[list[str]], Example],
) -> tuple[list[Example], int]:
    """GLUE-style TSV (no quoting): rows with the wrong field count or a bad value are skipped and counted."""
    lines = _lines(archive, member)
    header = lines[0].split("\t") if lines else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{archive.filename}:{member}, line 1: header lacks {', '.join(missing)}; found {header}")
    where = [header.index(c) for c in columns]
    examples, skipped = [], 0
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(header):
            skipped += 1
            continue
        try:
            examples.append(make([fields[i].strip() for i in where]))
        except ValueError:
            skipped += 1
    return examples, skipped


def _sts_row(split: str, labelled: bool) -> Callable[[list[str]], Example]:
    def make(fields: list[str]) -> Example:
        index, a, b = fields[:3]
        if not a or not b:
            raise ValueError("empty sentence")
        label = None
        if labelled:
            label = float(fields[3])
            if not 0.0 <= label <= 5.0:
                raise ValueError("score out of range")
        return Example(f"sts-{split}-{index}", a, b, label)

    return make


def convert_sts(archive_path: Path) -> Converted:
    """STS-B/{train,dev}.tsv (and test.tsv, unlabelled, when present) -> examples per split."""
    splits = {}
    with zipfile.ZipFile(archive_path) as archive:
        for split in ("train", "dev", "test"):
            member = _member(archive, "STS-B", f"{split}.tsv", required=split != "test")
            if member is None:
                continue
            labelled = split != "test"
            columns = ("index", "sentence1", "sentence2") + (("score",) if labelled else ())
            splits[split] = _read_tsv(archive, member, columns, _sts_row(split, labelled))
    return splits


def _qqp_row(split: str) -> Callable[[list[str]], Example]:
    def make(fields: list[str]) -> Example:
        uid, a, b, label = fields
        if not a or not b or label not in ("0", "1"):
            raise ValueError("empty question or label not 0/1")
        return Example(f"qqp-{split}-{uid}", a, b, int(label))

    return make


def convert_qqp(archive_path: Path) -> Converted:
    """QQP/{train,dev}.tsv -> examples per split; malformed lines skipped and counted."""
    splits = {}
    with zipfile.ZipFile(archive_path) as archive:
        for split in ("train", "dev"):
            member = _member(archive, "QQP", f"{split}.tsv")
            columns = ("id", "question1", "question2", "is_duplicate")
            splits[split] = _read_tsv(archive, member, columns, _qqp_row(split))
    return splits


CONVERTERS: dict[str, Callable[[Path], Converted]] = {
    "sst": convert_sst,
    "sts": convert_sts,
    "para": convert_qqp,
}


# --- the command ------------------------------------------------------------------------------


def _resolve_tasks(tasks: list[str] | None) -> list[str]:
    if tasks is None:
        return list(SOURCES)
    unknown = [t for t in tasks if t not in SOURCES and t != "cfimdb"]
    if unknown:
        raise DownloadError(f"unknown task(s) {', '.join(unknown)}; valid: {', '.join([*SOURCES, 'cfimdb'])}")
    if "cfimdb" in tasks:
        raise DownloadError(CFIMDB_HELP)
    return list(dict.fromkeys(tasks))


def _source_for(task: str, base_urls: dict | None, expected_sha256: dict | None) -> Source:
    source = SOURCES[task]
    url = source.url
    if base_urls and task in base_urls:
        url = str(base_urls[task]).rstrip("/") + "/" + source.archive
    expected = (expected_sha256 or {}).get(task, source.sha256)
    return Source(url, expected)


def _outputs_current(dest: Path, manifest: Manifest, archive: str) -> bool:
    records = {name: r for name, r in manifest.files.items() if r.source == archive}
    return bool(records) and all(
        (dest / name).is_file() and sha256_file(dest / name) == r.sha256 for name, r in records.items()
    )


def _archive_current(path: Path, record: FileRecord | None, expected: str | None) -> str | None:
    """The digest of an archive already on disk when it may be reused, else None."""
    if not path.is_file():
        return None
    actual = sha256_file(path)
    if expected is not None and actual != expected.lower():
        return None
    if record is not None and record.sha256 != actual:
        return None
    return actual


def download(
    dest: Path,
    tasks: list[str] | None = None,
    base_urls: dict | None = None,
    progress: bool = True,
    expected_sha256: dict[str, str] | None = None,
) -> Manifest:
    """Fetch and convert the corpora of `tasks` (default sst, sts, para) into `dest`.

    `base_urls` maps a task to a folder URL that holds its archive (a mirror); `expected_sha256`
    maps a task to the digest its archive must have. Returns the manifest also saved in dest.
    """
    dest = Path(dest)
    tasks_to_get = _resolve_tasks(tasks)
    (dest / ARCHIVES).mkdir(parents=True, exist_ok=True)
    manifest_path = dest / MANIFEST
    manifest = Manifest.load(manifest_path)
    for task in tasks_to_get:
        source = _source_for(task, base_urls, expected_sha256)
        path = dest / ARCHIVES / source.archive
        reused = _archive_current(path, manifest.archives.get(source.archive), source.sha256)
        if reused is not None:
            log.info("%s: up to date (%s), not fetched again", source.archive, reused[:12])
            old = manifest.archives.get(source.archive)
            manifest.archives[source.archive] = old or FileRecord(reused, path.stat().st_size, "placed by hand")
            if old is not None and _outputs_current(dest, manifest, source.archive):
                continue
        else:
            manifest.archives[source.archive] = fetch(source.url, path, source.sha256, progress)
            manifest.save(manifest_path)
        try:
            splits = CONVERTERS[task](path)
        except zipfile.BadZipFile:
            raise DownloadError(f"{path} is not a zip archive; delete it and run the command again") from None
        for name in [n for n, r in manifest.files.items() if r.source == source.archive]:
            del manifest.files[name]
        for split, (examples, skipped) in splits.items():
            if skipped:
                log.warning("%s: %s: skipped %d malformed line(s)", source.archive, split, skipped)
            labelled = any(e.label is not None for e in examples) or not examples
            out = write_file(dest / FILES[task][split], task, examples, labelled=labelled)
            manifest.files[out.name] = FileRecord(
                sha256_file(out), out.stat().st_size, source.archive, rows=len(examples), skipped=skipped
            )
        manifest.save(manifest_path)
    manifest.notes = []
    present = [name for name in FILES["cfimdb"].values() if (dest / name).is_file()]
    for name in present:
        manifest.files[name] = FileRecord(sha256_file(dest / name), (dest / name).stat().st_size, "placed by hand")
    if len(present) < len(FILES["cfimdb"]):
        manifest.notes.append(CFIMDB_HELP)
    manifest.save(manifest_path)
    return manifest
