"""mops.options: TrainConfig is the one source of the training options, sweep settings and the
run record: each field has an option with its choices and default, and lands in results.json."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from mops.bench.sweep import GRID_FIELDS, SET_BY_SWEEP, SweepConfig
from mops.cli import build_parser, main
from mops.multitask.training.config import TrainConfig, setting
from mops.options import add_config_options, config_settings, flag_of

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def subcommand(name: str) -> argparse.ArgumentParser:
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def options_by_field(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.option_strings}


def test_every_field_has_a_train_option_with_its_choices():
    options = options_by_field(subcommand("train"))
    assert set(FIELDS) <= set(options), f"no option for {set(FIELDS) - set(options)}"
    for spec in dataclasses.fields(TrainConfig):
        action = options[spec.name]
        assert flag_of(spec.name) in action.option_strings
        if spec.metadata["choices"] is not None and spec.type != "list[str]":
            assert tuple(action.choices) == tuple(spec.metadata["choices"]), spec.name


def test_sweeps_offer_every_field_but_those_the_grid_and_the_sweep_set():
    for command in ("sweep", "demo"):
        options = options_by_field(subcommand(command))
        assert set(FIELDS) - set(GRID_FIELDS) - set(SET_BY_SWEEP) <= set(options), command
        assert not set(GRID_FIELDS) & set(options), command


def test_options_left_out_keep_the_dataclass_defaults():
    args = build_parser().parse_args(["train"])
    assert config_settings(args) == {}
    assert TrainConfig(**config_settings(args)) == TrainConfig()
    assert TrainConfig().schedule == "linear"  # the schedule the quality bar was reached with


def test_options_parse_to_the_field_types():
    args = build_parser().parse_args(["train", "--tasks", "sts,sst", "--lr", "3e-4", "--steps", "7",
                                      "--schedule", "constant", "--dropout", "0", "--out", "x", "--quiet"])
    assert config_settings(args) == dict(tasks=["sts", "sst"], lr=3e-4, steps=7, schedule="constant",
                                         dropout=0.0, out_dir="x", progress=False)


def test_a_new_field_appears_on_the_command_line_with_no_other_edit(monkeypatch):
    @dataclasses.dataclass
    class Extended(TrainConfig):
        label_smoothing: float = setting(0.0, "smoothing of classification targets")
        mix: str = setting("a", "a choice", ("a", "b"))
        fast: bool = setting(False, "go fast")

    monkeypatch.setattr("mops.options.TrainConfig", Extended)
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    args = parser.parse_args(["--label-smoothing", "0.1", "--mix", "b", "--fast"])
    assert config_settings(args) == {"label_smoothing": 0.1, "mix": "b", "fast": True}
    assert parser.parse_args(["--no-fast"]).fast is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--mix", "c"])


def test_bad_choices_fail_in_the_dataclass_too():
    with pytest.raises(ValueError, match="backend must be one of auto, torch, triton; got 'cuda'"):
        TrainConfig(backend="cuda")
    with pytest.raises(ValueError, match="unknown task\\(s\\) nli; choose from sst, "):
        TrainConfig(tasks=["sst", "nli"])


def test_every_field_is_a_sweep_setting():
    settable = set(FIELDS) - set(GRID_FIELDS)
    SweepConfig(train={name: getattr(TrainConfig(), name) for name in settable})  # accepted, all of them
    with pytest.raises(ValueError, match="unknown training settings nonsense"):
        SweepConfig(train={"nonsense": 1})


def test_every_field_is_in_the_run_record(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as ended:
        main(["train", "--checkpoint", "random", "--hidden-size", "32", "--num-layers", "1", "--tasks", "sst",
              "--steps", "2", "--batch-size", "4", "--max-length", "16", "--max-eval-examples", "8",
              "--backend", "torch", "--out", str(out), "--quiet"])
    assert ended.value.code == 0
    config = json.loads((out / "results.json").read_text())["config"]
    assert set(FIELDS) <= set(config), f"missing from results.json: {set(FIELDS) - set(config)}"
    assert (config["steps"], config["hidden_size"], config["out_dir"], config["schedule"]) == (2, 32, str(out), "linear")
