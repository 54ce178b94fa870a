"""`--config FILE.yaml` for the recipes: the file's keys are the flags' names; the command line wins."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import yaml

from .errors import ConfigError


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv`; values of `--config FILE.yaml` become defaults first, so flags given on the command line override.

    `parser` must define `--config`. Unknown keys in the file are a `ConfigError` (a typo would else be ignored).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"--config {path} is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(
                f"--config {path} must hold a mapping of flag names to values, got {type(values).__name__}"
            )
        values = {str(k).lstrip("-").replace("-", "_"): v for k, v in values.items()}
        dests = {action.dest for action in parser._actions} - {"help", "config"}
        unknown = sorted(set(values) - dests)
        if unknown:
            raise ConfigError(f"--config {path} has unknown keys {unknown}; known: {sorted(dests)}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)
