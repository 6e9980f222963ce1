"""mops.multitask.data.download: converters on tiny archives built here, fetching from a local HTTP server."""

import hashlib
import http.server
import io
import json
import re
import threading
import zipfile
from pathlib import Path

import pytest

from mops.cli import main
from mops.multitask.data import download as dl
from mops.multitask.data.examples import DataError, Example, load_split

SST_TREES = {
    "train.txt": "(3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 lovely)) (2 film))) (2 .)))\n"
    "(0 (1 (2 -LRB-) (1 awful) (2 -RRB-)) (2 co-writer\\/director))\n"
    "\n"
    "(4 (4 superb) (2 !))\n",
    "dev.txt": "(1 (1 dull) (2 .))\n",
    "test.txt": "(2 (2 fine) (2 .))\n(3 (3 good) (2 .))\n",
}

STS_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
STS_FILES = {
    "STS-B/train.tsv": STS_HEADER
    + "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\t"
    + "An air plane is taking off.\t5.000\n"
    + "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a \"flute\".\tA man plays a flute.\t3.800\n"
    + "2\tmain-captions\tMSRvid\t2012test\t0005\tnone\tnone\ttoo few fields\n"
    + "3\tmain-captions\tMSRvid\t2012test\t0006\tnone\tnone\tA\tB\tnot-a-score\n",
    "STS-B/dev.tsv": STS_HEADER + "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man.\tA woman.\t1.2\n",
    "STS-B/test.tsv": STS_HEADER.replace("\tscore", "")
    + "0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl sings.\tA girl is singing.\n",
}

QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
QQP_FILES = {
    "QQP/train.tsv": QQP_HEADER
    + "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n"
    + "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n"
    + "5\t11\t12\tA question cut by a\n"  # a newline inside a question: two broken lines
    + "newline?\tother?\t0\n"
    + "6\t13\t14\tGood question?\tBad label?\tyes\n",
    "QQP/dev.tsv": QQP_HEADER + "1\t2\t3\tWhy is the sky blue?\tWhat makes the sky blue?\t1\n",
}


def make_zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


ARCHIVES = {
    "trainDevTestTrees_PTB.zip": make_zip({f"trees/{k}": v for k, v in SST_TREES.items()}),
    "STS-B.zip": make_zip(STS_FILES),
    "QQP-clean.zip": make_zip(QQP_FILES),
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- converters ---------------------------------------------------------------------------------


def test_parse_tree_root_label_and_leaves():
    assert dl.parse_tree("(3 (2 It) (4 (2 's) (4 good)))") == (3, ["It", "'s", "good"])
    for bad, reason in [("(3 (2 It)", "expected ')'"), ("(3 (2 a)) x", "text after"), ("(x y)", "'(label'"),
                        ("(3)", "no words"), ("(3 (2 a b))", "expected ')'")]:
        with pytest.raises(ValueError, match=re.escape(reason)):
            dl.parse_tree(bad)


def test_convert_sst(tmp_path):
    path = tmp_path / "sst.zip"
    path.write_bytes(ARCHIVES["trainDevTestTrees_PTB.zip"])
    splits = dl.convert_sst(path)
    train, skipped = splits["train"]
    assert skipped == 0
    assert train == [
        Example("sst-train-00000", "It 's a lovely film .", None, 3),
        Example("sst-train-00001", "( awful ) co-writer/director", None, 0),
        Example("sst-train-00002", "superb !", None, 4),
    ]
    assert [e.label for e in splits["test"][0]] == [2, 3]


def test_convert_sst_malformed_tree_names_member_and_line(tmp_path):
    path = tmp_path / "sst.zip"
    trees = {"trees/train.txt": "(2 (2 ok))\n(3 (2 broken)\n", "trees/dev.txt": "", "trees/test.txt": ""}
    path.write_bytes(make_zip(trees))
    with pytest.raises(DataError, match=r"sst.zip:trees/train.txt, line 2: malformed tree"):
        dl.convert_sst(path)


def test_convert_sts_skips_and_counts_malformed_lines(tmp_path):
    path = tmp_path / "sts.zip"
    path.write_bytes(ARCHIVES["STS-B.zip"])
    splits = dl.convert_sts(path)
    train, skipped = splits["train"]
    assert skipped == 2
    assert train == [
        Example("sts-train-0", "A plane is taking off.", "An air plane is taking off.", 5.0),
        Example("sts-train-1", 'A man plays a "flute".', "A man plays a flute.", 3.8),
    ]
    assert splits["test"] == ([Example("sts-test-0", "A girl sings.", "A girl is singing.", None)], 0)


def test_convert_qqp_skips_and_counts_malformed_lines(tmp_path):
    path = tmp_path / "qqp.zip"
    path.write_bytes(ARCHIVES["QQP-clean.zip"])
    splits = dl.convert_qqp(path)
    train, skipped = splits["train"]
    assert skipped == 3
    assert [(e.uid, e.label) for e in train] == [("qqp-train-133273", 0), ("qqp-train-402555", 1)]
    assert set(splits) == {"train", "dev"}


def test_archive_without_expected_member_fails(tmp_path):
    path = tmp_path / "qqp.zip"
    path.write_bytes(make_zip({"QQP/readme.txt": "hi"}))
    with pytest.raises(DataError, match="has no single QQP/train.tsv"):
        dl.convert_qqp(path)


# --- fetching from a local server ---------------------------------------------------------------


class Server:
    """Serves ARCHIVES under /ok/, 404s elsewhere, and under /cut/ sends half of what it promises."""

    def __init__(self):
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                folder, _, name = self.path.strip("/").partition("/")
                body = ARCHIVES.get(name)
                if body is None or folder not in ("ok", "cut"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if folder == "ok" else body[: len(body) // 2])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(dl, "TIMEOUT_S", 5.0)
    s = Server()
    yield s
    s.close()


def urls(server, folder="ok"):
    return {task: f"{server.url}/{folder}" for task in dl.SOURCES}


def leftovers(dest: Path) -> list[str]:
    return [p.name for p in dest.rglob("*") if p.name.endswith(".tmp")]


def test_download_happy_path(tmp_path, server):
    manifest = dl.download(tmp_path, base_urls=urls(server), progress=False)
    assert sorted(server.hits) == sorted(f"/ok/{name}" for name in ARCHIVES)
    for name, body in ARCHIVES.items():
        assert (tmp_path / "archives" / name).read_bytes() == body
        assert manifest.archives[name].sha256 == sha(body)
    assert [e.text_a for e in load_split("sst", "train", tmp_path).examples][0] == "It 's a lovely film ."
    assert [e.label for e in load_split("sst", "test", tmp_path).examples] == [2, 3]  # SST test keeps labels
    assert [e.label for e in load_split("sts", "train", tmp_path).examples] == [5.0, 3.8]
    assert [e.label for e in load_split("sts", "test", tmp_path).examples] == [None]
    assert [e.label for e in load_split("para", "train", tmp_path).examples] == [0, 1]
    assert manifest.files["quora-train.csv"].rows == 2 and manifest.files["quora-train.csv"].skipped == 3
    for name, record in manifest.files.items():
        assert record.sha256 == sha((tmp_path / name).read_bytes())
    saved = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert saved["archives"]["STS-B.zip"]["sha256"] == sha(ARCHIVES["STS-B.zip"])
    assert saved["files"]["ids-sst-dev.csv"]["rows"] == 1
    assert any("CFIMDB has no public download" in note for note in manifest.notes)
    assert leftovers(tmp_path) == []


def test_rerun_skips_matching_archives_and_repairs_changes(tmp_path, server):
    dl.download(tmp_path, base_urls=urls(server), progress=False)
    first = len(server.hits)
    before = (tmp_path / "MANIFEST.json").read_text()
    dl.download(tmp_path, base_urls=urls(server), progress=False)
    assert len(server.hits) == first
    assert (tmp_path / "MANIFEST.json").read_text() == before
    # A lost output is rebuilt from the kept archive, without fetching.
    (tmp_path / "sts-dev.csv").unlink()
    dl.download(tmp_path, tasks=["sts"], base_urls=urls(server), progress=False)
    assert len(server.hits) == first and len(load_split("sts", "dev", tmp_path).examples) == 1
    # An archive that no longer matches its recorded digest is fetched again.
    (tmp_path / "archives" / "QQP-clean.zip").write_bytes(b"damaged")
    dl.download(tmp_path, tasks=["para"], base_urls=urls(server), progress=False)
    assert server.hits[first:] == ["/ok/QQP-clean.zip"]
    assert (tmp_path / "archives" / "QQP-clean.zip").read_bytes() == ARCHIVES["QQP-clean.zip"]


def test_expected_checksum_verified(tmp_path, server):
    good = {"sts": sha(ARCHIVES["STS-B.zip"])}
    dl.download(tmp_path / "a", tasks=["sts"], base_urls=urls(server), progress=False, expected_sha256=good)
    with pytest.raises(dl.DownloadError, match="checksum mismatch .* expected 00000") as info:
        dl.download(tmp_path / "b", tasks=["sts"], base_urls=urls(server), progress=False,
                    expected_sha256={"sts": "0" * 64})
    assert sha(ARCHIVES["STS-B.zip"]) in str(info.value)
    assert list((tmp_path / "b" / "archives").iterdir()) == []
    assert not (tmp_path / "b" / "sts-train.csv").exists()


def test_http_404_leaves_no_partial_file(tmp_path, server):
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download(tmp_path, tasks=["sst"], base_urls={"sst": f"{server.url}/missing"}, progress=False)
    assert list((tmp_path / "archives").iterdir()) == []
    assert not (tmp_path / "ids-sst-train.csv").exists()


def test_truncated_download_leaves_no_partial_file(tmp_path, server):
    with pytest.raises(dl.DownloadError, match="stopped after"):
        dl.download(tmp_path, tasks=["para"], base_urls=urls(server, "cut"), progress=False)
    assert list((tmp_path / "archives").iterdir()) == []
    assert leftovers(tmp_path) == []


def test_unreachable_server_fails_cleanly(tmp_path, server):
    port = server.httpd.server_address[1]
    server.close()
    with pytest.raises(dl.DownloadError, match="could not download"):
        dl.download(tmp_path, tasks=["sts"], base_urls={"sts": f"http://127.0.0.1:{port}/ok"}, progress=False)
    assert list((tmp_path / "archives").iterdir()) == []


def test_archive_placed_by_hand_is_used(tmp_path, server):
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "STS-B.zip").write_bytes(ARCHIVES["STS-B.zip"])
    manifest = dl.download(tmp_path, tasks=["sts"], base_urls={"sts": f"{server.url}/missing"}, progress=False)
    assert server.hits == []
    assert manifest.archives["STS-B.zip"].source == "placed by hand"
    assert len(load_split("sts", "train", tmp_path).examples) == 2


def test_cfimdb_and_unknown_tasks_explain(tmp_path):
    with pytest.raises(dl.DownloadError, match="CFIMDB has no public download.*minbert-default-final-project"):
        dl.download(tmp_path, tasks=["sst", "cfimdb"])
    with pytest.raises(dl.DownloadError, match="unknown task.*imdb; valid: sst, sts, para, cfimdb"):
        dl.download(tmp_path, tasks=["imdb"])
    assert not (tmp_path / "archives").exists()


def mops_data_download(*args: str) -> int:
    """`mops data download ARGS` in this process; returns its exit status."""
    with pytest.raises(SystemExit) as ended:
        main(["data", "download", *args])
    return ended.value.code


def test_the_command_prints_what_it_wrote_and_fails_in_one_line(tmp_path, server, capsys):
    assert mops_data_download(str(tmp_path), "--tasks", "sts", "--no-progress", "--base-url", f"sts={server.url}/ok") == 0
    out = capsys.readouterr().out
    assert "sts-train.csv: 2 rows, 2 malformed source lines skipped" in out and "note: CFIMDB" in out
    assert mops_data_download(str(tmp_path), "--tasks", "sts", "--base-url", "nonsense") == 1
    assert "--base-url wants TASK=VALUE" in capsys.readouterr().err


def test_interrupted_download_leaves_no_partial_file(tmp_path, server, monkeypatch):
    class InterruptingBar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt  # as if Ctrl-C arrived after the first block

    monkeypatch.setattr(dl, "tqdm", InterruptingBar)
    monkeypatch.setattr(dl, "CHUNK", 64)
    with pytest.raises(KeyboardInterrupt):
        dl.download(tmp_path, tasks=["sst"], base_urls=urls(server), progress=False)
    assert list((tmp_path / "archives").iterdir()) == []
