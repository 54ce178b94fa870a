"""Command line of `recipes/transfer.py`: the flags of transformers' `run_image_classification_no_trainer.py`
plus MetaPerturb's, and `--config FILE.yaml` (same keys; the YAML gives defaults, the command line overrides)."""

from __future__ import annotations

import argparse
import json

from ..cli_args import check_at_least, check_finite, parse_args_with_config
from ..errors import ConfigError
from ..models import check_config_overrides
from ..zoo import DEFAULT_PHI

REGULARIZERS = ("metaperturb", "none", "dropblock")
SCHEDULERS = ("step", "cosine", "linear", "constant")
DEFAULT_OUTPUT_DIR = "outputs/transfer"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train or fine-tune an image classifier with a published MetaPerturb φ (or a baseline).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file of defaults (same keys as the flags)")
    data = p.add_argument_group("data (default: Fashion-MNIST tiny, shipped in mp_hub)")
    data.add_argument("--dataset_name", default=None, help="a Hub dataset id")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--dataset_dir", default=None, help="a local dataset in Hub layout (README.md + data/*.parquet)")
    data.add_argument("--train_dir", default=None, help="an imagefolder of training images")
    data.add_argument("--validation_dir", default=None, help="an imagefolder of validation images")
    data.add_argument("--train_val_split", type=float, default=0.15, help="held out of train when no eval split")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--samples_per_class", type=int, default=None, help="class-balanced training subset")
    data.add_argument("--image_column_name", default="image")
    data.add_argument("--label_column_name", default="label")
    data.add_argument("--no_flip", action="store_true", help="no random horizontal flip (crop only)")
    data.add_argument("--cache_dir", default=None)

    model = p.add_argument_group("model")
    model.add_argument("--model_name_or_path", default=None, help="a Hub model (or local folder) to fine-tune")
    model.add_argument("--model_type", default=None, help="train from scratch: cifar_resnet20, vit, ...")
    model.add_argument("--model_config_overrides", default=None, help='JSON for the config, e.g. {"hidden_size": 16}')
    model.add_argument("--ignore_mismatched_sizes", action="store_true", help="replace a pretrained head")
    model.add_argument("--image_size", type=int, default=None, help="default: the model's, else 32")
    model.add_argument("--trust_remote_code", action="store_true")

    reg = p.add_argument_group("regularizer")
    reg.add_argument("--regularizer", choices=REGULARIZERS, default="metaperturb")
    reg.add_argument("--perturb_model_id", default=DEFAULT_PHI, help="φ: a zoo name, a local folder or a Hub id")
    reg.add_argument("--perturb_targets", default=None, help="regex of module names (models without a resolver)")
    reg.add_argument("--noise_anneal_fraction", type=float, default=0.4, help="κ 0 → 1 over this fraction of steps")
    reg.add_argument("--inference_mode", choices=("mc", "mean"), default="mc", help="φ at evaluation")
    reg.add_argument(
        "--mean_mode_calibration_images",
        type=int,
        default=2048,
        help="training images for the mean-mode BatchNorm calibration after training (0: none)",
    )
    reg.add_argument(
        "--mean_mode_mc_fit_steps",
        type=int,
        default=200,
        help="then fit that calibration to the MC-20 average of those images, this many steps (0: moments only; "
        "a LayerNorm model such as a ViT is calibrated only by this fit)",
    )
    reg.add_argument("--dropblock_prob", type=float, default=0.1, help="final DropBlock drop rate (ramped from 0)")
    reg.add_argument("--dropblock_size", type=int, default=7, help="clipped to each feature map's size")

    train = p.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=64)
    train.add_argument("--per_device_eval_batch_size", type=int, default=100)
    train.add_argument("--learning_rate", type=float, default=1e-3)
    train.add_argument("--weight_decay", type=float, default=0.0)
    train.add_argument("--num_train_epochs", type=float, default=None, help="used when --max_train_steps is unset")
    train.add_argument("--max_train_steps", type=int, default=None, help="default 150 (when no epochs are given)")
    train.add_argument("--lr_scheduler_type", choices=SCHEDULERS, default="step", help="step: ×0.3 at 40/70/90%%")
    train.add_argument("--num_warmup_steps", type=int, default=0, help="for cosine / linear")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--mixed_precision", default=None, choices=("no", "fp16", "bf16"))

    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval_mc_samples", type=int, default=100, help="stochastic passes averaged at the end")
    ev.add_argument("--periodic_eval_mc_samples", type=int, default=5, help="passes for --eval_steps evaluations")
    ev.add_argument("--eval_steps", type=int, default=None, help="evaluate every N steps (default: steps / 3)")
    ev.add_argument("--ece_bins", type=int, default=15)

    out = p.add_argument_group("output")
    out.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR)
    out.add_argument("--checkpointing_steps", default=None, help="an integer N (every N steps) or 'epoch'")
    out.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    out.add_argument("--stop_after_steps", type=int, default=None, help="checkpoint and stop at this step")
    out.add_argument("--with_tracking", action="store_true")
    out.add_argument("--report_to", default="all")
    out.add_argument("--push_to_hub", action="store_true")
    out.add_argument("--hub_model_id", default=None)
    out.add_argument("--hub_token", default=None)
    out.add_argument("--hub_private_repo", action="store_true", default=None)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parse_args_with_config(build_parser(), argv)
    validate(args)
    return args


def validate(args: argparse.Namespace) -> None:
    if args.model_name_or_path and args.model_type:
        raise ConfigError("pass --model_name_or_path (fine-tune) or --model_type (from scratch), not both")
    if not args.model_name_or_path and not args.model_type:
        args.model_type = "cifar_resnet20"
    if args.model_config_overrides and not isinstance(args.model_config_overrides, dict):  # a dict from YAML is fine
        try:
            overrides = json.loads(args.model_config_overrides)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--model_config_overrides is not valid JSON: {err}") from err
        if not isinstance(overrides, dict):
            raise ConfigError("--model_config_overrides must be a JSON object")
        args.model_config_overrides = overrides
    if args.model_config_overrides:
        if args.model_name_or_path:  # a pretrained model keeps its config: the overrides would be ignored
            raise ConfigError(
                "--model_config_overrides goes with --model_type (a fresh model), not --model_name_or_path"
            )
        check_config_overrides(args.model_type, args.model_config_overrides)
    for name in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "eval_mc_samples",
        "periodic_eval_mc_samples",
        "ece_bins",
    ):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("max_train_steps", "eval_steps", "stop_after_steps", "max_train_samples", "max_eval_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    check_at_least(args, 1, "image_size")  # None: the model's own size
    check_at_least(args, 0, "num_warmup_steps")
    check_finite(args, "learning_rate", "num_train_epochs", positive=True)  # 0 epochs would run the default steps
    check_finite(args, "weight_decay")
    if args.mean_mode_calibration_images < 0 or args.mean_mode_calibration_images == 1:
        raise ConfigError(
            f"--mean_mode_calibration_images must be 0 (none) or >= 2, got {args.mean_mode_calibration_images}"
        )
    if args.mean_mode_mc_fit_steps < 0:
        raise ConfigError(f"--mean_mode_mc_fit_steps must be >= 0, got {args.mean_mode_mc_fit_steps}")
    if not 0.0 <= args.noise_anneal_fraction <= 1.0:
        raise ConfigError(f"--noise_anneal_fraction must be in [0, 1], got {args.noise_anneal_fraction}")
    if not 0.0 < args.train_val_split < 1.0:
        raise ConfigError(f"--train_val_split must be in (0, 1), got {args.train_val_split}")
    cs = args.checkpointing_steps
    if cs is not None and cs != "epoch":
        if not str(cs).isdigit() or int(cs) < 1:
            raise ConfigError(f"--checkpointing_steps must be a positive integer or 'epoch', got {cs!r}")
        args.checkpointing_steps = int(cs)
