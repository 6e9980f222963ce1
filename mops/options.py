"""Command-line options made from TrainConfig's fields, so no setting is written down twice.

Each field becomes `--field-name` (or the flag its metadata names), typed from its annotation,
with its help text, its choices and its default shown. An option left out of the command line
is left out of the settings, so the dataclass's own default applies.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Collection
from typing import Any

from mops.multitask.training.config import TrainConfig


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def comma_list(name: str, choices: Collection[str] | None) -> Callable[[str], list[str]]:
    """Parser of a comma-separated list option, checking each item against `choices`."""
    noun = name.removesuffix("s")

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if choices is not None and item not in choices]
        if unknown or not items:
            valid = f"; choose from {', '.join(choices)}" if choices is not None else ""
            raise argparse.ArgumentTypeError(f"unknown {noun}(s) {', '.join(unknown) or '(none)'}{valid}")
        return items

    return parse


def positive(kind: type) -> Callable[[str], Any]:
    """Parser of a command's own number option that must be finite and above zero."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above zero")
        return value

    parse.__name__ = kind.__name__  # what argparse names in its messages
    return parse


def _help(spec: dataclasses.Field) -> str:
    """The field's help text and its default (a default of None is explained by the help text)."""
    default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    if default is None:
        return spec.metadata["help"]
    shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
    return f"{spec.metadata['help']} (default: {shown})"


def add_config_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                       only: Collection[str] | None = None, exclude: Collection[str] = ()) -> list[str]:
    """Add an option for each TrainConfig field (those in `only`, less those in `exclude`);
    returns the field names added."""
    hints = typing.get_type_hints(TrainConfig)
    added = []
    for spec in dataclasses.fields(TrainConfig):
        if spec.name in exclude or (only is not None and spec.name not in only):
            continue
        kind, choices = _base_type(hints[spec.name]), spec.metadata["choices"]
        flag = spec.metadata["flag"] or "--" + spec.name.replace("_", "-")
        options: dict[str, Any] = dict(dest=spec.name, default=argparse.SUPPRESS)
        if kind is bool and spec.metadata["flag"]:  # a flag that turns the default over, e.g. --quiet
            options.update(action="store_const", const=not spec.default, help=spec.metadata["help"])
        elif kind is bool:
            options.update(action=argparse.BooleanOptionalAction, help=_help(spec))
        else:
            if typing.get_origin(kind) is list:
                options.update(type=comma_list(spec.name, choices), metavar="A,B,...")
            else:
                options.update(type=kind, choices=choices)
            options["help"] = _help(spec)
        parser.add_argument(flag, **options)
        added.append(spec.name)
    return added


def config_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig settings given on the command line (and only those)."""
    return {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(TrainConfig) if hasattr(args, spec.name)}


def flag_of(name: str) -> str:
    """The command-line flag of TrainConfig field `name`."""
    spec = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    return spec.metadata["flag"] or "--" + name.replace("_", "-")
