"""mp_hub.cli_args: `launch_command`, the command line that reproduces a run (for its card), and the checks of
`--config` values."""

import argparse

import pytest

from mp_hub.cli_args import launch_command, parse_args_with_config
from mp_hub.errors import ConfigError


def test_launch_command_names_the_launcher_and_masks_the_token():
    argv = ["--seed", "1", "--hub_token", "hf_x", "--hub_token=hf_y"]
    assert launch_command("recipes/x.py", argv, environ={}) == (
        "python recipes/x.py --seed 1 --hub_token '<HUB_TOKEN>' '--hub_token=<HUB_TOKEN>'"
    )
    assert launch_command("r.py", [], 2, environ={}) == "accelerate launch --num_processes 2 r.py"
    assert launch_command("r.py", [], environ={"ACCELERATE_MIXED_PRECISION": "no"}) == "accelerate launch r.py"
    torchrun = {"TORCHELASTIC_RUN_ID": "1", "LOCAL_WORLD_SIZE": "2"}
    assert launch_command("r.py", [], 2, environ=torchrun) == "torchrun --nproc_per_node 2 r.py"


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--mode", choices=("mc", "mean"), default="mc")
    parser.add_argument("--precision", choices=("no", "fp16"), default=None)
    parser.add_argument("--no_flip", action="store_true")
    parser.add_argument("--private", action="store_true", default=None)
    parser.add_argument("--name")
    return parser


def test_config_values_get_the_checks_of_the_command_line(tmp_path):
    """A --config value is converted and checked as the same value on the command line is (argparse checks neither
    the type nor the choices of a default): the right ones are taken, a wrong one is a ConfigError naming the key."""
    config = tmp_path / "run.yaml"
    config.write_text("steps: 7\nrate: 1\nmode: mean\nprecision: null\nno_flip: true\nprivate: null\nname: 5\n")
    args = parse_args_with_config(_parser(), ["--config", str(config)])
    assert (args.steps, args.rate, args.mode, args.precision, args.no_flip, args.private) == (
        7,
        1.0,
        "mean",
        None,
        True,
        None,
    )
    assert isinstance(args.rate, float) and args.name == 5  # untyped flags are left to the recipe's own checks
    config.write_text("steps: '8'\nrate: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string
    assert vars(parse_args_with_config(_parser(), ["--config", str(config)])) | {"config": None} == dict(
        config=None, steps=8, rate=0.001, mode="mc", precision=None, no_flip=False, private=None, name=None
    )
    for body, match in [
        ("mode: meen\n", r"run\.yaml: mode must be one of \['mc', 'mean'\], got 'meen'"),
        ("mode: null\n", r"mode must be one of"),
        ("precision: fp8\n", r"precision must be one of \['no', 'fp16'\], got 'fp8'"),
        ("no_flip: 'no'\n", r"no_flip is a switch: true or false, got 'no'"),
        ("no_flip: 1\n", r"no_flip is a switch"),
        ("steps: 7.5\n", r"steps must be an int, got 7\.5"),
        ("steps: true\n", r"steps must be an int, got True"),
        ("steps: seven\n", r"steps must be an int, got 'seven'"),
        ("rate: [0.1]\n", r"rate must be a float, got \[0\.1\]"),
    ]:
        config.write_text(body)
        with pytest.raises(ConfigError, match=match):
            parse_args_with_config(_parser(), ["--config", str(config)])
