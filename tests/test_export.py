"""`mops export`: a task's trained encoder as a standard BERT folder that Hugging Face transformers
and minBERT both load to the same pooled output MOPS computes for that task; bad requests write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from embedded import requires_embedded_checkpoint
from safetensors.torch import load_file

from mops.minbert import BertModel, BertTokenizer
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.export import ExportError, export_task
from mops.multitask.training.trainer import Trainer

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
pytestmark = requires_embedded_checkpoint  # the random encoder takes its vocabulary and tokenizer from it

# Every kind of piece a task can read: embeddings and layer.0 under BitFit, layer.1 under LoRA with
# one update for sst+para and one for sts, layer.2 individual, the pooler under LoRA.
PLAN = "BL[sst+para|sts]I,pooler=L"
SENTENCES = (["a first sentence here", "short", "the third one is a little longer than the others"],
             ["its pair", "and another pair of words", "x"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Trainer]:
    """A trained run whose updates moved well away from zero (lr 1e-2)."""
    out = tmp_path_factory.mktemp("export") / "run"
    config = TrainConfig(tasks=["sst", "para", "sts"], plan=PLAN, checkpoint="random", hidden_size=32, num_layers=3,
                         data="demo", steps=6, eval_every=3, batch_size=8, max_length=32, max_train_examples=16,
                         max_eval_examples=16, lr=1e-2, lora_rank=4, lora_alpha=8.0, backend="torch", device="cpu",
                         out_dir=str(out), progress=False, pooling="pooler")
    trainer = Trainer(config)
    trainer.train()
    best = torch.load(out / "best.pt", weights_only=False)
    trainer.model.load_state_dict(best["model"])  # the weights export reads
    return out, trainer.model.eval()


def mops_pooled(model, task: str, batch) -> torch.Tensor:  # (B, H)
    with torch.no_grad():
        return model.encode(task, batch)


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_an_exported_task_loads_in_transformers_and_minbert_to_the_same_pooled_output(run, tmp_path, task):
    run_dir, model = run
    folder = export_task(run_dir, task, tmp_path / task).out_dir
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "head.safetensors",
            "head.json"} <= {p.name for p in folder.iterdir()}
    batch = BertTokenizer.from_pretrained(str(folder))(*SENTENCES)
    expected = mops_pooled(model, task, batch)
    hf = transformers.BertModel.from_pretrained(str(folder)).eval()
    ours = BertModel.from_pretrained(str(folder), backend="torch")
    with torch.no_grad():
        theirs = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    token_type_ids=batch.token_type_ids).pooler_output
        mine = ours(batch.input_ids, batch.attention_mask, batch.token_type_ids)["pooler_output"]
    torch.testing.assert_close(theirs, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(mine, expected, rtol=0, atol=1e-5)


def test_each_task_gets_its_own_encoder_with_lora_merged_and_bitfit_in_place(run, tmp_path):
    run_dir, model = run
    weights = {task: load_file(export_task(run_dir, task, tmp_path / task).out_dir / "model.safetensors")
               for task in ("sst", "para", "sts")}
    query = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(weights["sst"][query], weights["para"][query])  # one update for sst+para
    assert not torch.equal(weights["sst"][query], weights["sts"][query])
    bias = "encoder.layer.0.attention.self.query.bias"  # BitFit: each task's own bias
    assert not torch.equal(weights["sst"][bias], weights["para"][bias])
    matrix = "encoder.layer.0.attention.self.query.weight"  # BitFit's frozen matrix, shared
    assert torch.equal(weights["sst"][matrix], weights["sts"][matrix])
    assert not any("lora" in name for name in weights["sst"])


def test_the_head_file_reproduces_the_tasks_outputs(run, tmp_path):
    run_dir, model = run
    folder = export_task(run_dir, "para", tmp_path / "para").out_dir
    head = load_file(folder / "head.safetensors")
    info = json.loads((folder / "head.json").read_text())
    assert info["task"] == "para" and info["num_labels"] == 2 and info["pooled"] == "pooler_output"
    assert info["plan"] == PLAN and head["weight"].shape == (2, 32)
    batch = BertTokenizer.from_pretrained(str(folder))(*SENTENCES)
    pooled = BertModel.from_pretrained(str(folder), backend="torch")(
        batch.input_ids, batch.attention_mask, batch.token_type_ids)["pooler_output"]
    with torch.no_grad():
        torch.testing.assert_close(pooled @ head["weight"].T + head["bias"], model("para", batch),
                                   rtol=0, atol=1e-5)


def nothing_written(parent: Path, before: set[str]) -> bool:
    return {p.name for p in parent.iterdir()} == before


def test_a_task_the_run_lacks_is_an_error_that_writes_nothing(run, tmp_path):
    run_dir, _ = run
    with pytest.raises(ExportError, match="trained tasks sst, para, sts, not 'cfimdb'"):
        export_task(run_dir, "cfimdb", tmp_path / "out")
    assert nothing_written(tmp_path, set())


def test_a_run_folder_without_a_checkpoint_is_an_error_that_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="has no best.pt"):
        export_task(tmp_path / "empty", "sst", tmp_path / "out")
    with pytest.raises(ExportError, match="is not a folder"):
        export_task(tmp_path / "missing", "sst", tmp_path / "out")
    assert nothing_written(tmp_path, {"empty"})


def test_an_existing_folder_with_files_is_not_overwritten(run, tmp_path):
    run_dir, _ = run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists and is not an empty folder"):
        export_task(run_dir, "sst", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"] and nothing_written(tmp_path, {"out"})


def test_the_command_line_exports_and_reports_errors_in_one_line(run, tmp_path):
    run_dir, _ = run
    done = subprocess.run([sys.executable, "-m", "mops", "export", str(run_dir), "--task", "sts",
                           str(tmp_path / "sts")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sts's encoder from" in done.stdout and (tmp_path / "sts" / "model.safetensors").is_file()
    failed = subprocess.run([sys.executable, "-m", "mops", "export", str(run_dir), "--task", "qa",
                             str(tmp_path / "qa")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.strip().count("\n") == 0
    assert "mops: error:" in failed.stderr and "not 'qa'" in failed.stderr and not (tmp_path / "qa").exists()


def test_a_mean_pooled_cosine_run_exports_a_complete_encoder_and_its_cosine_head(tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(tasks=["sst", "sts"], plan="FSS", checkpoint="random", hidden_size=32, num_layers=3,
                         data="demo", steps=4, batch_size=8, max_length=32, max_train_examples=16,
                         max_eval_examples=16, lr=1e-2, backend="torch", device="cpu", out_dir=str(out),
                         progress=False, pooling="mean", cosine_tasks=["sts"], scale_regression=True)
    trainer = Trainer(config)
    trainer.train()
    trainer.model.load_state_dict(torch.load(out / "best.pt", weights_only=False)["model"])
    model = trainer.model.eval()
    folder = export_task(out, "sts", tmp_path / "sts").out_dir
    info = json.loads((folder / "head.json").read_text())
    head = load_file(folder / "head.safetensors")
    assert info["pooling"] == "mean" and set(head) == {"scale", "shift"} and "[0, 1]" in info["output"]
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    first, second = tokenizer(SENTENCES[0]), tokenizer(SENTENCES[1])
    exported = BertModel.from_pretrained(str(folder), backend="torch")  # complete: the pooler is there, unused

    def mean_pooled(batch):  # (B, H)
        hidden = exported(batch.input_ids, batch.attention_mask, batch.token_type_ids)["last_hidden_state"]
        mask = batch.attention_mask.unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(mean_pooled(first), mean_pooled(second), dim=-1)
        expected = model("sts", first, second).squeeze(-1)  # (B,)
        torch.testing.assert_close(head["scale"] * cosine + head["shift"], expected, rtol=0, atol=1e-5)


def test_a_symmetric_pairs_run_says_how_to_predict_and_the_recipe_gives_its_predictions(tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(tasks=["sst", "sts"], plan="SS", checkpoint="random", hidden_size=32, num_layers=2,
                         data="demo", steps=4, batch_size=8, max_length=32, max_train_examples=16,
                         max_eval_examples=16, lr=1e-2, backend="torch", device="cpu", out_dir=str(out),
                         progress=False, pooling="mean", symmetric_pairs=True)
    trainer = Trainer(config)
    trainer.train()
    trainer.model.load_state_dict(torch.load(out / "best.pt", weights_only=False)["model"])
    trainer.model.eval()
    folder = export_task(out, "sts", tmp_path / "sts").out_dir
    info = json.loads((folder / "head.json").read_text())
    assert info["symmetric"] is True and "both orders" in info["output"] and "mean score" in info["output"]
    head = load_file(folder / "head.safetensors")
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    exported = BertModel.from_pretrained(str(folder), backend="torch")

    def score(first, second):  # (B,): the head on the mean-pooled joint encoding
        batch = tokenizer(first, second)
        hidden = exported(batch.input_ids, batch.attention_mask, batch.token_type_ids)["last_hidden_state"]
        mask = batch.attention_mask.unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1) @ head["weight"].T + head["bias"]).squeeze(-1)

    ab, ba = tokenizer(*SENTENCES), tokenizer(SENTENCES[1], SENTENCES[0])
    with torch.no_grad():
        recipe = (score(*SENTENCES) + score(SENTENCES[1], SENTENCES[0])) / 2
        trained = trainer._predict("sts", {"batch": ab}, {"batch": ba})  # what the run's dev metric reads
    torch.testing.assert_close(recipe, trained, rtol=0, atol=1e-5)
    single = json.loads((export_task(out, "sst", tmp_path / "sst").out_dir / "head.json").read_text())
    assert single["symmetric"] is False and "both orders" not in single["output"]
