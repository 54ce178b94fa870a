"""The recipes' command lines: `--config FILE.yaml` (its keys are the flags' names; the command line wins),
shared checks of flag values, `load_phi` (the φ a flag names), `launch_command` (the command that reproduces a run,
for its card) and `run_cli` (a typed error is one line on stderr and exit code 2)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import CheckpointError, ConfigError, MetaPerturbError, NotCachedError
from .perturb import MetaPerturb

ZOO_HINT = "zoo names are listed by `mp-hub zoo`"


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
        actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            raise ConfigError(f"--config {path} has unknown keys {unknown}; known: {sorted(actions)}")
        parser.set_defaults(**{k: _config_value(actions[k], v, f"--config {path}: {k}") for k, v in values.items()})
    return parser.parse_args(argv)


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A `--config` value converted and checked as argparse would the same value on the command line (it checks
    neither the type nor the choices of a default): a switch takes true / false, a typed flag a value of its type,
    a flag with choices one of them (null only where the flag's default is None)."""
    unset = value is None and action.default is None
    if action.nargs == 0:  # store_true / store_false
        if not (isinstance(value, bool) or unset):
            raise ConfigError(f"{where} is a switch: true or false, got {value!r}")
        return value
    if action.type in (int, float) and value is not None:
        wrong = f"{where} must be {'an int' if action.type is int else 'a float'}, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(wrong)
        try:
            value = action.type(str(value))  # as argparse converts the flag's text: 7.5 is no int
        except ValueError:
            raise ConfigError(wrong) from None
    if action.choices is not None and value not in action.choices and not unset:
        raise ConfigError(f"{where} must be one of {list(action.choices)}, got {value!r}")
    return value


def check_at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    """Each flag in `names` that is set (not None) is >= `minimum`, else a `ConfigError` naming it."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ConfigError(f"--{name} must be >= {minimum}, got {value}")


def check_finite(args: argparse.Namespace, *names: str, positive: bool = False) -> None:
    """Each flag in `names` that is set is a finite number (> 0 with `positive`, else >= 0), else a `ConfigError`."""
    for name in names:
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value < 0 or (positive and value == 0)):
            bound = "> 0" if positive else ">= 0"
            raise ConfigError(f"--{name} must be a finite number {bound}, got {value}")


def json_object(value: str | Mapping[str, Any] | None, flag: str) -> dict[str, Any] | None:
    """A flag's JSON object: a string is parsed, a mapping (from a YAML --config) taken as is, None or "" is None;
    anything else is a `ConfigError` naming `flag`."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{flag} is not valid JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise ConfigError(f"{flag} must be a JSON object")
    return parsed


def load_phi(model_id: str, *, flag: str = "--perturb_model_id", token: str | None = None) -> MetaPerturb:
    """φ from a zoo name, a local folder or a Hub id given as `flag`; an error names the flag and the zoo listing."""
    try:
        return MetaPerturb.from_pretrained(model_id, token=token)
    except NotCachedError as err:
        raise NotCachedError(f"{flag}: {err}; or pass a zoo name ({ZOO_HINT})") from err
    except CheckpointError as err:
        raise CheckpointError(f"{flag} '{model_id}': {err}; {ZOO_HINT}") from err


def launch_command(
    script: str, argv: Sequence[str], num_processes: int = 1, environ: Mapping[str, str] | None = None
) -> str:
    """The shell command of this run: `python script ARGV`, `accelerate launch [--num_processes N] script ARGV` or
    `torchrun --nproc_per_node N script ARGV` (from the launcher's environment); `--hub_token`'s value is masked."""
    env = os.environ if environ is None else environ
    args = list(argv)
    for i, arg in enumerate(args):  # never write a token into a card
        if arg == "--hub_token" and i + 1 < len(args):
            args[i + 1] = "<HUB_TOKEN>"
        elif arg.startswith("--hub_token="):
            args[i] = "--hub_token=<HUB_TOKEN>"
    if "TORCHELASTIC_RUN_ID" in env:
        launcher = f"torchrun --nproc_per_node {env.get('LOCAL_WORLD_SIZE', num_processes)}"
    elif num_processes > 1:
        launcher = f"accelerate launch --num_processes {num_processes}"
    elif "ACCELERATE_MIXED_PRECISION" in env:  # set by `accelerate launch` for its children
        launcher = "accelerate launch"
    else:
        launcher = "python"
    return f"{launcher} {shlex.join([script, *args])}"


def run_cli(prog: str, command: Callable[[], object]) -> int:
    """Run `command`: 0, or 2 after printing a `MetaPerturbError` as one line `PROG: error (Type): message`."""
    try:
        command()
    except MetaPerturbError as err:
        message = " ".join(str(err).split())  # one line, whatever the message's own line breaks
        print(f"{prog}: error ({type(err).__name__}): {message}", file=sys.stderr)
        return 2
    return 0
