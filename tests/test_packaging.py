"""MOPS installs one top-level module, `mops`, so nothing of it can shadow another package (a
top-level `kernels` once hid Hugging Face's, which `transformers` requires) and nothing can shadow
it; and its CPU path runs where Triton cannot be installed.

Each check runs in a child process, so what this process has imported proves nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from embedded import requires_embedded_checkpoint

REPO = Path(__file__).resolve().parents[1]
# In a child's sitecustomize: Triton cannot be imported, as on macOS or Windows. A None entry in
# sys.modules makes `import triton` raise ImportError and importlib's find_spec return None.
HIDE_TRITON = "import sys\nsys.modules['triton'] = None\n"


def child(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def without_triton(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python processes (and their children) cannot import Triton."""
    site = tmp_path / "no-triton"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_TRITON)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    env.pop("TRITON_INTERPRET", None)
    return env


# ---- the wheel --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel pip builds from a copy of the working tree (the tree itself stays untouched)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "runs", "results", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--wheel-dir", str(root / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (root / "dist").glob("*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_one_top_level_module_named_mops(wheel):
    names = wheel.namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"mops"}
    # what `backend="auto"` and `cuda_graphs="auto"` read at run time travels with the code
    assert "mops/kernels/dispatch_table.json" in names
    assert "mops/multitask/training/graphs_table.json" in names


def test_the_distribution_is_named_apart_from_the_index_s_other_mops(wheel):
    """"mops" on the package index is an unrelated project: the distribution is mops-bert, the
    import name and the command stay `mops`."""
    (metadata,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
    assert "\nName: mops-bert\n" in wheel.read(metadata).decode()
    (entry_points,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    assert "mops = mops.cli:main" in wheel.read(entry_points).decode()


# ---- living beside other packages ---------------------------------------------------------------

TOGETHER = """
import json, mops.cli, mops.kernels, transformers
from transformers import BertConfig, BertModel
import torch
model = BertModel(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32))
out = model(torch.ones(1, 4, dtype=torch.long)).last_hidden_state
hub = None
if HUB:
    import kernels
    hub = kernels.__file__
print(json.dumps({"mops_kernels": mops.kernels.__file__, "hub": hub, "shape": list(out.shape)}))
"""


@pytest.mark.parametrize("where", ["repository", "elsewhere"])
def test_mops_and_hugging_face_import_together(where, tmp_path):
    """transformers (and Hugging Face's `kernels`, where installed) import and run in a process that
    has MOPS imported, whether it starts in the repository (whose folders are on sys.path) or not."""
    pytest.importorskip("transformers")
    hub = importlib.util.find_spec("kernels") is not None
    done = child(f"HUB = {hub}\n" + TOGETHER, REPO if where == "repository" else tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["shape"] == [1, 4, 16]
    assert Path(found["mops_kernels"]).resolve() == (REPO / "mops" / "kernels" / "__init__.py").resolve()
    if hub:
        installed = metadata.distribution("kernels").locate_file("kernels/__init__.py")  # Hugging Face's
        assert Path(found["hub"]).resolve() == Path(installed).resolve()


def test_python_dash_m_mops_runs_from_any_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mops", "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mops")


# ---- without Triton -----------------------------------------------------------------------------


def test_the_hidden_triton_is_really_hidden(tmp_path):
    """The stand-in for a machine without Triton: the import fails, find_spec finds nothing."""
    pytest.importorskip("triton")  # where Triton is absent anyway, there is nothing to hide
    done = child("import importlib.util\nassert importlib.util.find_spec('triton') is None\nimport triton\n",
                 tmp_path, without_triton(tmp_path))
    assert done.returncode != 0 and "ModuleNotFoundError: import of triton halted" in done.stderr


def test_the_torch_path_imports_and_trains_without_triton(tmp_path):
    env = without_triton(tmp_path)
    code = ("import sys, mops, mops.cli, mops.kernels, mops.multitask.training.trainer\n"
            "assert 'triton' not in [m for m, v in sys.modules.items() if v is not None]\n"
            "from mops.kernels.dispatch import resolve_for_device\nimport torch\n"
            "print(resolve_for_device('auto', torch.device('cpu'), 'attention'))\n")
    done = child(code, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch"
    train = [sys.executable, "-m", "mops", "train", "--checkpoint", "random", "--hidden-size", "32",
             "--num-layers", "2", "--steps", "2", "--batch-size", "4", "--max-train-examples", "8",
             "--max-eval-examples", "8", "--max-length", "16", "--quiet", "--out", str(tmp_path / "run")]
    done = subprocess.run([*train, "--backend", "torch"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "ok"


def test_asking_for_triton_where_it_is_missing_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mops", "train", "--checkpoint", "random", "--hidden-size", "32",
                           "--num-layers", "2", "--steps", "1", "--batch-size", "4", "--max-train-examples", "8",
                           "--max-eval-examples", "8", "--quiet", "--backend", "triton",
                           "--out", str(tmp_path / "run")],
                          cwd=tmp_path, env=without_triton(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mops: error: attention: backend='triton' needs the `triton` package, which is not installed"]


@requires_embedded_checkpoint
def test_the_demo_runs_without_triton(tmp_path):
    """`mops demo`, shortened: its sweep's child processes cannot import Triton either."""
    results = tmp_path / "demo" / "demo.jsonl"
    done = subprocess.run([sys.executable, "-m", "mops", "demo", "--plans", "FFFFFF", "--steps", "2",
                           "--eval-every", "2", "--max-train-examples", "16", "--max-eval-examples", "16",
                           "--results", str(results), "--quiet"],
                          cwd=tmp_path, env=without_triton(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["status"] == "ok" and record["kernels"] == dict.fromkeys(record["kernels"], "torch")
    assert "FFFFFF" in done.stdout and (tmp_path / "demo" / "pareto.png").exists()
