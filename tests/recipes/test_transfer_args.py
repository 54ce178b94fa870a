"""recipes/transfer.py's arguments: the YAML config (defaults, overrides, unknown keys) and bad flag values."""

from pathlib import Path

import pytest
from _builders import load_script

from mp_hub.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _recipe():
    return load_script(ROOT / "recipes" / "transfer.py", "transfer_recipe_parts")


parse_args = _recipe().parse_args


def test_yaml_config_gives_defaults_and_cli_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.01\nmax_train_steps: 7\nregularizer: dropblock\nno_flip: true\n")
    args = parse_args(["--config", str(config), "--max_train_steps", "9"])
    assert (args.learning_rate, args.max_train_steps, args.regularizer, args.no_flip) == (0.01, 9, "dropblock", True)
    assert args.model_type == "cifar_resnet20" and args.lr_scheduler_type == "step"
    assert (args.gradient_accumulation_steps, args.dataloader_num_workers, args.torch_compile) == (1, 0, False)
    config.write_text("lr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs:\n  min_lr_rate: 0.1\n")
    assert parse_args(["--config", str(config)]).lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    # by default mean mode is calibrated by moment matching only: the MC fit is opt-in (--mean_mode_mc_fit_steps)
    assert (args.mean_mode_calibration_images, args.mean_mode_mc_fit_steps) == (2048, 0)
    config.write_text("model_config_overrides:\n  depth: 8\n")
    assert parse_args(["--config", str(config)]).model_config_overrides == {"depth": 8}
    config.write_text("learning_rat: 0.01\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_args(["--config", str(config)])
    # a YAML value gets the checks of the same value on the command line (argparse checks no default)
    for body, match in [
        ("no_flip: 'no'\n", "no_flip is a switch: true or false, got 'no'"),  # 'no' is truthy: it flipped nothing
        ("inference_mode: meen\n", r"inference_mode must be one of \['mc', 'mean'\], got 'meen'"),
        ("regularizer: dropblok\n", "regularizer must be one of"),
        ("max_train_steps: 7.5\n", "max_train_steps must be an int, got 7.5"),
    ]:
        config.write_text(body)
        with pytest.raises(ConfigError, match=match):
            parse_args(["--config", str(config)])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model_type", "vit", "--model_name_or_path", "google/vit-base-patch16-224"], "not both"),
        (["--model_config_overrides", "{depth: 8}"], "not valid JSON"),
        (["--checkpointing_steps", "often"], "checkpointing_steps"),
        (["--noise_anneal_fraction", "2"], "noise_anneal_fraction"),
        (["--eval_mc_samples", "0"], "eval_mc_samples"),
        (["--mean_mode_mc_fit_steps", "-1"], "mean_mode_mc_fit_steps"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1, got 0"),
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be >= 1, got 0"),
        (["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be >= 0, got -1"),
        (["--lr_scheduler_kwargs", "[0.1]"], "--lr_scheduler_kwargs must be a JSON object"),
        (["--lr_scheduler_type", "cosine_with_min_lr"], "min_lr"),  # a required argument is missing
        (["--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"cycles": 2}'], "cycles"),
        (["--torch_compile", "--torch_compile_backend", "inductr"], "--torch_compile_backend 'inductr'"),
        (["--torch_compile_backend", "aot_eager", "--torch_compile_mode", "max-autotune"], "inductor backend"),
        (["--torch_compile_backend", "aot_eager"], "--torch_compile_backend 'aot_eager' needs --torch_compile"),
        (["--torch_compile_mode", "max-autotune"], "--torch_compile_mode 'max-autotune' needs --torch_compile"),
        (["--eval_adversarial", "linf:8/255,l3:0.5"], "l3"),
        (["--eval_adversarial", "linf:8/255", "--adv_steps", "0"], "--adv_steps must be >= 1, got 0"),
        (["--eval_adversarial", "linf:8/255", "--adv_eot_samples", "0"], "--adv_eot_samples must be >= 1"),
    ],
)
def test_bad_arguments(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(argv)
