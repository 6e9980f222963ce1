"""The trainer: budgets, results, frozen weights untouched, NaN stops, resume after a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from embedded import requires_embedded_checkpoint

from mops.cli import main
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.run_files import load_checkpoint
from mops.multitask.training.trainer import Trainer, TrainingError

REPO = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    """A small random encoder on the demo corpus: seconds per run on a CPU."""
    settings = dict(
        tasks=["sst", "para", "sts"], plan="FS", checkpoint="random", hidden_size=32, num_layers=2,
        data="demo", steps=6, batch_size=8, max_length=32, eval_every=3, max_eval_examples=24,
        lr=1e-3, out_dir=str(tmp_path / "run"), progress=False, backend="torch", device="cpu",
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_run_writes_record_with_metrics_curve_and_accounting(tmp_path):
    record = Trainer(tiny(tmp_path)).train()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert set(record["metrics"]) == {"sst_acc", "para_acc", "sts_r", "overall"}
    assert [point["step"] for point in record["curve"]] == [3, 6]
    assert record["timing"]["steps"] == 6 and record["timing"]["examples_per_second"] > 0
    assert record["config"]["plan"] == "FS" and record["config"]["hidden_size"] == 32
    assert record["config"]["pretrained"] is False and record["config"]["corpus"] == "demo"
    assert record["accounting"]["trainable_params"] < record["accounting"]["unique_params"]
    assert set(record["accounting"]["per_task"]) == {"sst", "para", "sts"}
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()
    assert not list((tmp_path / "run").glob("*.tmp"))


# "LB": the embeddings and layer.0 under LoRA, layer.1 and the pooler under BitFit: their shared
# base is frozen like an F piece, and only the per-task updates train.
@pytest.mark.parametrize("plan", ["FS", "LB", "B[sst+para|sts]L"])
def test_frozen_pieces_are_bit_identical_after_training(tmp_path, plan):
    trainer = Trainer(tiny(tmp_path, plan=plan))
    frozen = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if not p.requires_grad}
    trained = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert frozen and trained
    trainer.train()
    params = dict(trainer.model.named_parameters())
    for name, before in frozen.items():
        assert torch.equal(params[name], before), name
        assert trainer.optimizer.state.get(params[name]) is None, name
    assert any(not torch.equal(params[name], before) for name, before in trained.items())


def test_budget_in_epochs_counts_batches_of_all_tasks(tmp_path):
    trainer = Trainer(tiny(tmp_path, steps=None, epochs=0.05))
    expected = round(0.05 * trainer.batches_per_epoch)
    assert trainer.total_steps == expected
    record = trainer.train()
    assert record["timing"]["steps"] == expected


def test_budget_in_seconds_stops_the_run_within_about_a_step(tmp_path):
    """The clock is read every step: a run goes past its seconds by one step's time, not by the
    many steps a trainer reading it now and then would add."""
    timing = Trainer(tiny(tmp_path, steps=None, seconds=1.0, eval_every=1000)).train()["timing"]
    step = timing["train_seconds"] / timing["steps"]
    assert timing["train_seconds"] >= 1.0
    assert timing["train_seconds"] - 1.0 < max(5 * step, 0.5), timing


def test_nan_loss_names_task_and_step(tmp_path, monkeypatch):
    trainer = Trainer(tiny(tmp_path, sampling="round_robin"))
    real_loss = trainer.model.loss

    def poisoned(task, outputs, labels):
        loss = real_loss(task, outputs, labels)
        return loss * float("nan") if task == "para" else loss

    monkeypatch.setattr(trainer.model, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"para loss is nan at step 2"):
        trainer.train()


@pytest.mark.parametrize("plan", ["FS", "L[sst+para|sts]B"])
def test_resume_continues_exactly_where_the_run_stopped(tmp_path, plan):
    # The first run's budget is 3 steps, the resumed one's 6: a linear schedule would differ in
    # shape between them, a constant rate does not (the killed-run test covers the default schedule).
    constant = dict(schedule="constant", plan=plan, lora_rank=2, lora_dropout=0.1)
    straight = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "straight"), steps=6, **constant))
    straight.train()
    first = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "split"), steps=3, **constant))
    first.train()
    second = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "split"), steps=6, **constant))
    record = second.train()
    assert record["resumed"] is True and record["timing"]["steps"] == 6
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [p["step"] for p in record["curve"]] == [3, 6]
    if plan != "FS":  # the updates trained: the state resumed was not the untrained one
        assert any(name.endswith("lora_B") and torch.count_nonzero(t) for name, t in second.model.state_dict().items())


def test_a_run_stopped_at_a_fraction_of_its_budget_goes_on_exactly_as_if_never_stopped(tmp_path):
    # stop_at ends the run early but keeps the linear schedule laid over all 8 steps, so the
    # beginning probed is the beginning of the very run that is later continued
    linear = dict(schedule="linear", warmup=0.25, steps=8, eval_every=100, sampling="round_robin")
    straight = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "straight"), **linear))
    uninterrupted = straight.train()
    probe = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "split"), stop_at=0.25, **linear)).train()
    assert probe["timing"]["steps"] == 2 and [p["step"] for p in probe["curve"]] == [2]
    half = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "split"), stop_at=0.5, **linear)).train()
    assert half["resumed"] and half["timing"]["steps"] == 4
    rest = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "split"), **linear))
    record = rest.train()
    assert record["timing"]["steps"] == 8 and [p["step"] for p in record["curve"]] == [2, 4, 8]
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), rest.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert record["metrics"] == uninterrupted["metrics"]
    with pytest.raises(ValueError, match=r"stop_at must be a fraction in \(0, 1\]"):
        tiny(tmp_path, stop_at=1.5)


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    Trainer(tiny(tmp_path, steps=3)).train()
    with pytest.raises(TrainingError, match="different settings.*lr"):
        Trainer(tiny(tmp_path, steps=6, lr=5e-4)).train()
    with pytest.raises(TrainingError, match="different settings.*lora_rank"):
        Trainer(tiny(tmp_path, steps=6, lora_rank=4)).train()
    record = Trainer(tiny(tmp_path, steps=3, lr=5e-4)).train(fresh=True)
    assert record["resumed"] is False


def test_trainer_applies_the_schedule_at_every_step(tmp_path):
    trainer = Trainer(tiny(tmp_path, schedule="linear", warmup=0.5, steps=4, eval_every=100))
    seen = []
    real_step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(float(trainer.optimizer.param_groups[0]["lr"]))  # a device tensor the step rewrites
        return real_step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.train()
    peak = trainer.config.lr  # mid-step progress: 1/8, 3/8, 5/8, 7/8 of the budget
    assert seen == pytest.approx([peak * 0.25, peak * 0.75, peak * 0.75, peak * 0.25])


def test_bad_settings_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        tiny(tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="sampling"):
        tiny(tmp_path, sampling="random")
    with pytest.raises(ValueError, match="schedule"):
        tiny(tmp_path, schedule="cosine")
    with pytest.raises(ValueError, match="warmup"):
        tiny(tmp_path, warmup=1.0)
    with pytest.raises(ValueError, match="covers 3 layers but the model has 2"):
        Trainer(tiny(tmp_path, plan="FSS"))
    with pytest.raises(ValueError, match="unknown task"):
        Trainer(tiny(tmp_path, tasks=["sst", "nli"]))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mops", *args]


TINY_CLI = ["train", "--checkpoint", "random", "--hidden-size", "32", "--num-layers", "2", "--plan", "SS",
            "--data", "demo", "--batch-size", "8", "--max-length", "32", "--max-eval-examples", "16",
            "--backend", "torch", "--device", "cpu", "--schedule", "constant", "--quiet"]


@requires_embedded_checkpoint  # the child process builds its encoder from it
def test_killed_run_resumes_from_its_last_checkpoint_to_the_weights_of_an_unbroken_run(tmp_path):
    """Killed at a random moment (-9, mid-step or mid-write), the run goes on from its last
    checkpoint; at a constant rate its weights then equal those of the same run never killed."""
    out = tmp_path / "killed"
    command = _cli(*TINY_CLI, "--steps", "400", "--eval-every", "2", "--out", str(out))
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").is_file():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within two minutes"
        time.sleep(0.2)
    time.sleep(1.0)
    child.send_signal(signal.SIGKILL)
    child.wait()
    saved = load_checkpoint(out / "last.pt", "retrain")["state"]["step"]
    assert 2 <= saved < 400
    budget = ["--steps", str(saved + 4), "--eval-every", "2"]
    for folder in (out, tmp_path / "unbroken"):
        finish = subprocess.run(_cli(*TINY_CLI, *budget, "--out", str(folder)), cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert finish.returncode == 0, finish.stderr
    record = json.loads((out / "results.json").read_text())
    assert record["resumed"] is True and record["timing"]["steps"] == saved + 4
    assert record["curve"][0]["step"] == 2  # the curve from before the kill is kept
    unbroken = json.loads((tmp_path / "unbroken" / "results.json").read_text())
    assert record["metrics"] == unbroken["metrics"]
    resumed, straight = (load_checkpoint(folder / "last.pt", "retrain")["model"]
                         for folder in (out, tmp_path / "unbroken"))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[name], straight[name]) for name in resumed)


def test_cli_reports_bad_plan_in_one_line(tmp_path):
    result = subprocess.run(_cli(*TINY_CLI, "--plan", "SSX", "--out", str(tmp_path / "x")), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("mops: error: ") and "'X'" in result.stderr
    assert not (tmp_path / "x").exists()


def test_padding_to_a_multiple_of_16_changes_no_output_metric_or_update(tmp_path):
    """Padded lengths rounded up (as on a GPU) stay masked: head outputs, dev metrics and trained
    weights are those of padding to the longest row, to float rounding (sums over more zero terms)."""
    settings = dict(dropout=0.0, head_dropout=0.0, steps=4, eval_every=4)
    runs = {m: Trainer(tiny(tmp_path, pad_multiple=m, out_dir=str(tmp_path / f"pad{m}"), **settings)) for m in (1, 16)}
    widths = []
    with torch.no_grad():
        for one, sixteen in zip(runs[1].data, runs[16].data):
            name, dev = one.task.name, one.dev[:8]
            short, padded = one.collate(dev), sixteen.collate(dev)
            widths.append((short.inputs.input_ids.shape[1], padded.inputs.input_ids.shape[1]))
            runs[1].model.eval()
            torch.testing.assert_close(runs[1].model(name, padded.inputs), runs[1].model(name, short.inputs),
                                       rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert all(padded % 16 == 0 and padded >= short for short, padded in widths)
    assert any(padded > short for short, padded in widths)  # some rows really got extra padding
    records = {m: r.train() for m, r in runs.items()}
    assert records[16]["pad_multiple"] == 16 and records[1]["pad_multiple"] == 1
    for key in ("sst_acc", "para_acc"):
        assert records[16]["metrics"][key] == records[1]["metrics"][key], key
    # This untrained model's STS predictions spread by ~1e-4, so Pearson's r magnifies rounding.
    assert records[16]["metrics"]["sts_r"] == pytest.approx(records[1]["metrics"]["sts_r"], abs=1e-3)
    one, sixteen = runs[1].model.state_dict(), runs[16].model.state_dict()
    for name in one:
        torch.testing.assert_close(sixteen[name], one[name], rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_the_cpu_pads_to_the_longest_row_by_default(tmp_path):
    trainer = Trainer(tiny(tmp_path))
    assert trainer.pad_multiple == 1 and trainer.data[0].collate.pad_multiple == 1


def test_a_finished_run_is_not_measured_again_and_says_so(tmp_path):
    """Running a finished run again trains nothing and keeps its record (its memory measurement
    above all); --fresh trains it again."""
    config = tiny(tmp_path)
    first = Trainer(config).train()
    kept = (tmp_path / "run" / "results.json").read_bytes()
    again = Trainer(config)
    assert again.train() == first and again.already_finished
    assert (tmp_path / "run" / "results.json").read_bytes() == kept
    fresh = Trainer(config)
    assert not fresh.already_finished and fresh.train(fresh=True)["resumed"] is False
    assert not fresh.already_finished


def test_a_finished_run_without_its_results_gets_a_record_with_no_measurement(tmp_path):
    config = tiny(tmp_path)
    first = Trainer(config).train()
    (tmp_path / "run" / "results.json").unlink()
    rebuilt = Trainer(config).train()
    assert rebuilt["memory"] is None  # nothing trained now: an idle process's memory is no measurement
    assert rebuilt["metrics"] == first["metrics"] and rebuilt["timing"]["steps"] == first["timing"]["steps"]


def test_the_command_line_says_a_finished_run_is_finished(tmp_path, capsys):
    args = ["train", "--tasks", "sst", "--plan", "FS", "--checkpoint", "random", "--hidden-size", "32",
            "--num-layers", "2", "--steps", "2", "--batch-size", "8", "--max-eval-examples", "8",
            "--backend", "torch", "--out", str(tmp_path / "run")]
    for _ in range(2):
        with pytest.raises(SystemExit) as ended:
            main(args)
        assert ended.value.code == 0
    assert "already holds this run, its budget spent: nothing trained" in capsys.readouterr().out
