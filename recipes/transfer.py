#!/usr/bin/env python
"""Train or fine-tune an image classifier with a published MetaPerturb φ (or a baseline), then evaluate it.

    accelerate launch recipes/transfer.py          # CIFAR ResNet-20 on the bundled Fashion-MNIST tiny, default φ
    python recipes/transfer.py --perturb_model_id DIR_OR_HUB_ID --model_name_or_path microsoft/resnet-18 \\
        --ignore_mismatched_sizes --dataset_name uoft-cs/cifar10 --image_column_name img --samples_per_class 100

As in the authors' train_tgt.py: φ is frozen and shared by every site; only the model's parameters are trained
(Adam); sites in training mode use batch statistics; κ goes 0 → 1 over the first 40% of steps. Evaluation
averages the softmax of `--eval_mc_samples` stochastic passes in eval mode (running statistics). Outputs: the
model (with its sites and φ: `mp_hub.load_perturbed(output_dir)`), all_results.json, a reliability diagram, a
training curve and a model card. Flags follow transformers' run_image_classification_no_trainer.py; see
docs/recipes.md for every flag.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a CPU shared with other jobs, spinning OpenMP threads wait for descheduled peers
# at every parallel region; passive waiting costs next to nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mp_hub.cards import render_transfer_card  # noqa: E402
from mp_hub.checkpointing import (  # noqa: E402
    TRANSFER_LAYOUT,
    atomic_write,
    load_transfer_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    save_transfer_checkpoint,
)
from mp_hub.cli_args import (  # noqa: E402
    check_at_least,
    check_finite,
    json_object,
    launch_command,
    load_phi,
    parse_args_with_config,
    run_cli,
)
from mp_hub.data import (  # noqa: E402
    ClassificationData,
    EvalImages,
    TrainBatches,
    calibration_batches,
    derive_seed,
    lazy_splits,
    load_splits,
    train_loader,
)
from mp_hub.datasets import FASHION_MNIST_TINY  # noqa: E402
from mp_hub.errors import AttachError, CheckpointError, ConfigError, NotCachedError  # noqa: E402
from mp_hub.evaluation import compute_metrics, predict_proba  # noqa: E402
from mp_hub.hub import create_hub_repo, hub_client, upload_to_hub  # noqa: E402
from mp_hub.metrics import plot_reliability_diagram  # noqa: E402
from mp_hub.models import check_config_overrides  # noqa: E402
from mp_hub.models.classifier import Classifier, build_classifier, check_image_size  # noqa: E402
from mp_hub.output_dir import claim_output_dir  # noqa: E402
from mp_hub.regularizers import REGULARIZERS, Regularization, apply_regularizer  # noqa: E402
from mp_hub.robustness import (  # noqa: E402
    RobustnessReport,
    evaluate_adversarial,
    parse_attack_specs,
    plot_accuracy_vs_epsilon,
    robustness_markdown,
)
from mp_hub.schedules import LR_SCHEDULER_TYPES, METRIC_LR_SCHEDULER_TYPES, build_lr_scheduler  # noqa: E402
from mp_hub.training import cpu_thread_hint, keep_freed_memory, plot_training_curve  # noqa: E402
from mp_hub.zoo import DEFAULT_PHI  # noqa: E402

logger = logging.getLogger("transfer")

DEFAULT_OUTPUT_DIR = "outputs/transfer"
# With no --max_train_steps / --num_train_epochs: long enough on 100 images per class for the model to overfit without
# φ (a regularizer has nothing to correct before that), short enough for a few CPU-minutes (docs/results.md).
DEFAULT_STEPS = 2000
RESULTS_NAME = "all_results.json"
RELIABILITY_PNG = "reliability_diagram.png"
CURVE_PNG = "training_curve.png"
ADVERSARIAL_PNG = "adversarial_accuracy.png"
# Arguments a resumed run must share with the run that wrote the checkpoint (else the result is not that run's).
SIGNATURE = (
    "seed",
    "per_device_train_batch_size",
    "learning_rate",
    "weight_decay",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "num_warmup_steps",
    "regularizer",
    "perturb_model_id",
    "model_type",
    "model_name_or_path",
    "model_config_overrides",
    "dataset_name",
    "dataset_dir",
    "train_dir",
    "max_train_samples",
    "samples_per_class",
    "noise_anneal_fraction",
    "dropblock_prob",
    "dropblock_size",
    "image_size",
    "no_flip",
)
# What a checkpoint written before a signature key existed implies for it (that release's only behaviour).
SIGNATURE_DEFAULTS = {"gradient_accumulation_steps": 1, "lr_scheduler_kwargs": None}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# --- the command line ----------------------------------------------------------------------------------------------


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
    data.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="processes decoding batches ahead (0: the main one)"
    )

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
        default=0,
        help="then fit that calibration to the MC-20 average of those images, this many steps (0: moments only; "
        "a LayerNorm model such as a ViT is calibrated only by this fit)",
    )
    reg.add_argument("--dropblock_prob", type=float, default=0.1, help="final DropBlock drop rate (ramped from 0)")
    reg.add_argument("--dropblock_size", type=int, default=7, help="clipped to each feature map's size")

    train = p.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=32)
    train.add_argument("--per_device_eval_batch_size", type=int, default=100)
    train.add_argument("--learning_rate", type=float, default=1e-3)
    train.add_argument("--weight_decay", type=float, default=0.0)
    train.add_argument("--num_train_epochs", type=float, default=None, help="used when --max_train_steps is unset")
    train.add_argument("--max_train_steps", type=int, default=None, help="default 2000 (when no epochs are given)")
    train.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="batches per optimizer step (steps count these)"
    )
    train.add_argument(
        "--lr_scheduler_type",
        choices=LR_SCHEDULER_TYPES,
        default="step",
        help="step: ×0.3 at 40/70/90%%; or any transformers SchedulerType (reduce_lr_on_plateau and greedy are "
        "stepped with the NLL of each --eval_steps evaluation)",
    )
    train.add_argument(
        "--lr_scheduler_kwargs",
        default=None,
        help='JSON for the schedule, e.g. {"min_lr_rate": 0.1} (cosine_with_min_lr), {"gamma": 0.1} (step)',
    )
    train.add_argument("--num_warmup_steps", type=int, default=0, help="for the schedules with a warm-up")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--mixed_precision", default=None, choices=("no", "fp16", "bf16"))
    train.add_argument("--torch_compile", action="store_true", help="torch.compile the model (training and eval)")
    train.add_argument("--torch_compile_backend", default="inductor", help="a torch.compiler.list_backends() name")
    train.add_argument("--torch_compile_mode", choices=COMPILE_MODES, default=None, help="inductor's mode")
    train.add_argument(
        "--channels_last", action="store_true", help="the model in channels-last memory (faster convolutions on CPU)"
    )
    train.add_argument(
        "--malloc_defaults",
        action="store_true",
        help="on CPU, leave glibc's malloc as it is (default: it keeps freed memory, no page faults per step)",
    )

    ev = p.add_argument_group("evaluation")
    ev.add_argument(
        "--eval_mc_samples", type=int, default=20, help="stochastic passes averaged at the end (the paper: 100)"
    )
    ev.add_argument("--periodic_eval_mc_samples", type=int, default=5, help="passes for --eval_steps evaluations")
    ev.add_argument("--eval_steps", type=int, default=None, help="evaluate every N steps (default: steps / 3)")
    ev.add_argument("--ece_bins", type=int, default=15)
    ev.add_argument(
        "--eval_adversarial",
        default=None,
        help="also attack the evaluation images with EoT-PGD: a norm:ε list, ε in [0, 1] pixels "
        "(e.g. linf:2/255,linf:8/255,l2:0.5); docs/robustness.md",
    )
    ev.add_argument("--adv_steps", type=int, default=200, help="PGD steps of 0.025·ε each (the paper's 200)")
    ev.add_argument("--adv_eot_samples", type=int, default=10, help="noise draws averaged per PGD step (EoT)")
    ev.add_argument("--adv_max_samples", type=int, default=500, help="evaluation images attacked (the first N)")

    out = p.add_argument_group("output")
    out.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR)
    out.add_argument("--checkpointing_steps", default=None, help="an integer N (every N steps) or 'epoch'")
    out.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep only the last N checkpoints")
    out.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    out.add_argument("--stop_after_steps", type=int, default=None, help="checkpoint and stop at this step")
    out.add_argument("--with_tracking", action="store_true")
    out.add_argument("--report_to", default="all")
    out.add_argument("--push_to_hub", action="store_true")
    out.add_argument("--hub_model_id", default=None)
    out.add_argument("--hub_token", default=None)
    out.add_argument("--hub_private_repo", action="store_true", default=None)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags (and `--config FILE.yaml` defaults), checked: a bad value is a `ConfigError` before any work."""
    args = parse_args_with_config(build_parser(), argv)
    validate(args)
    return args


def validate(args: argparse.Namespace) -> None:
    """Flag values that argparse cannot check alone; fills in `--model_type` and parses `--model_config_overrides`."""
    if args.model_name_or_path and args.model_type:
        raise ConfigError("pass --model_name_or_path (fine-tune) or --model_type (from scratch), not both")
    if not args.model_name_or_path and not args.model_type:
        args.model_type = "cifar_resnet20"
    args.model_config_overrides = json_object(args.model_config_overrides, "--model_config_overrides")
    args.lr_scheduler_kwargs = json_object(args.lr_scheduler_kwargs, "--lr_scheduler_kwargs")
    if args.model_config_overrides:
        if args.model_name_or_path:  # a pretrained model keeps its config: the overrides would be ignored
            raise ConfigError(
                "--model_config_overrides goes with --model_type (a fresh model), not --model_name_or_path"
            )
        check_config_overrides(args.model_type, args.model_config_overrides)
    for name in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
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
    check_at_least(args, 1, "adv_steps", "adv_eot_samples", "adv_max_samples")
    if args.eval_adversarial is not None:
        parse_attack_specs(args.eval_adversarial)  # a bad spec is a ConfigError now, not after training
    check_at_least(args, 1, "image_size", "checkpoints_total_limit")  # None: the model's own size, keep all
    check_at_least(args, 0, "num_warmup_steps", "dataloader_num_workers")
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
    if args.regularizer == "dropblock" and not 0.0 <= args.dropblock_prob < 1.0:
        raise ConfigError(f"--dropblock_prob must be in [0, 1), got {args.dropblock_prob}")
    if not 0.0 < args.train_val_split < 1.0:
        raise ConfigError(f"--train_val_split must be in (0, 1), got {args.train_val_split}")
    cs = args.checkpointing_steps
    if cs is not None and cs != "epoch":
        if not str(cs).isdigit() or int(cs) < 1:
            raise ConfigError(f"--checkpointing_steps must be a positive integer or 'epoch', got {cs!r}")
        args.checkpointing_steps = int(cs)
    try:  # a schedule's arguments, checked on a stand-in optimizer: a wrong key fails now, not after the data loads
        stand_in = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        build_lr_scheduler(
            stand_in, args.lr_scheduler_type, num_training_steps=10**6, scheduler_kwargs=args.lr_scheduler_kwargs
        )
    except ConfigError as err:
        raise ConfigError(f"--lr_scheduler_type / --lr_scheduler_kwargs: {err}") from err
    if args.torch_compile and args.torch_compile_backend not in torch.compiler.list_backends(exclude_tags=()):
        raise ConfigError(
            f"--torch_compile_backend {args.torch_compile_backend!r} is not one of "
            f"{torch.compiler.list_backends(exclude_tags=())}"
        )
    if args.torch_compile_mode is not None and args.torch_compile_backend != "inductor":
        raise ConfigError(f"--torch_compile_mode goes with the inductor backend, not {args.torch_compile_backend!r}")
    if not args.torch_compile:  # without it nothing is compiled: a backend or mode given alone would be ignored
        for name, value in (("backend", args.torch_compile_backend), ("mode", args.torch_compile_mode)):
            if value not in (None, "inductor"):  # inductor: the default backend
                raise ConfigError(f"--torch_compile_{name} {value!r} needs --torch_compile")


# --- the recipe's parts ---------------------------------------------------------------------------------------------


def public_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's arguments without secrets (for the card, the results and checkpoints)."""
    return {k: v for k, v in sorted(vars(args).items()) if k != "hub_token"}


def build_model(args: argparse.Namespace, labels: list[str]) -> Classifier:
    """`--model_type` (fresh) or `--model_name_or_path` (pretrained), checked to take `--image_size` images."""
    try:
        built = build_classifier(
            labels,
            model_type=None if args.model_name_or_path else args.model_type,
            model_name_or_path=args.model_name_or_path,
            config_overrides=args.model_config_overrides,
            image_size=args.image_size,
            ignore_mismatched_sizes=args.ignore_mismatched_sizes,
            token=args.hub_token,
            trust_remote_code=args.trust_remote_code,
            cache_dir=args.cache_dir,
        )
    except NotCachedError as err:
        raise NotCachedError(f"--model_name_or_path: {err}") from err
    try:
        check_image_size(built.model, built.image_size)
    except ConfigError as err:
        raise ConfigError(f"--image_size: {err}") from err
    return built


def regularize(args: argparse.Namespace, built: Classifier) -> Regularization:
    """`--regularizer` on the model: φ (`--perturb_model_id`) or DropBlock at the sites, or nothing."""
    phi = load_phi(args.perturb_model_id, token=args.hub_token) if args.regularizer == "metaperturb" else None
    try:
        return apply_regularizer(
            built.model,
            args.regularizer,
            phi=phi,
            phi_id=args.perturb_model_id,
            image_size=built.image_size,
            targets=args.perturb_targets,
            noise_anneal_fraction=args.noise_anneal_fraction,
            dropblock_prob=args.dropblock_prob,
            dropblock_size=args.dropblock_size,
        )
    except AttachError as err:
        raise AttachError(f"--regularizer {args.regularizer}: {err} (here: --perturb_targets REGEX)") from err


def total_steps(args: argparse.Namespace, batches: TrainBatches) -> int:
    """Optimizer steps: --max_train_steps, else --num_train_epochs (each step takes --gradient_accumulation_steps
    batches), else DEFAULT_STEPS."""
    if args.max_train_steps:
        return args.max_train_steps
    if args.num_train_epochs:
        return max(1, math.ceil(args.num_train_epochs * batches.steps_per_epoch / args.gradient_accumulation_steps))
    return DEFAULT_STEPS


def periodic_eval_interval(eval_steps: int | None, steps: int) -> int:
    """--eval_steps, else a third of the steps rounded up: two periodic evaluations before the final one, and none
    a step or two before it."""
    return eval_steps or -(-steps // 3)


def make_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps: int, num_processes: int):
    # accelerate steps a prepared scheduler once per process per optimizer step: count steps the same way.
    return build_lr_scheduler(
        optimizer,
        args.lr_scheduler_type,
        num_training_steps=steps * num_processes,
        num_warmup_steps=args.num_warmup_steps * num_processes,
        scheduler_kwargs=args.lr_scheduler_kwargs,
    )


def compiled(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """With --torch_compile, the model compiled for its forward passes (training and evaluation); the weights,
    saving and checkpoints stay the prepared model's. Else the model itself."""
    if not args.torch_compile:
        return model
    return torch.compile(model, backend=args.torch_compile_backend, mode=args.torch_compile_mode)


# --- the run --------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0, or 2 after printing a typed error as one line."""
    return run_cli("transfer.py", lambda: run(parse_args(argv), argv))


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict | None:
    """The whole run, holding `--output_dir`; `argv` (the card's command line) defaults to the process's."""
    tracking = dict(log_with=args.report_to, project_dir=args.output_dir) if args.with_tracking else {}
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps, **tracking
    )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO if accelerator.is_local_main_process else logging.ERROR,
    )
    command = launch_command("recipes/transfer.py", sys.argv[1:] if argv is None else argv, accelerator.num_processes)
    if hint := cpu_thread_hint(accelerator.device):
        logger.info(hint)
    if accelerator.device.type == "cpu" and not args.malloc_defaults and keep_freed_memory():
        logger.info("malloc keeps freed memory for reuse: no page faults per step (--malloc_defaults to leave it)")
    with claim_output_dir(args.output_dir, accelerator):  # before any work: one run per folder, and writable
        return train_and_evaluate(args, accelerator, command)


def train_and_evaluate(args: argparse.Namespace, accelerator: Accelerator, command: str) -> dict | None:
    start_time = time.time()
    set_seed(args.seed)  # the model's initialisation (and nothing else: every step reseeds its own streams)
    output_dir = Path(args.output_dir)

    # Data (default: Fashion-MNIST tiny, shipped in mp_hub), the model, its regularizer; then the images, decoded
    # batch by batch as they are needed (any dataset size) at the model's size and normalisation.
    if not (args.dataset_name or args.dataset_dir or args.train_dir):
        args.dataset_dir = str(FASHION_MNIST_TINY)
    splits = load_splits(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        dataset_dir=args.dataset_dir,
        train_dir=args.train_dir,
        validation_dir=args.validation_dir,
        image_column=args.image_column_name,
        label_column=args.label_column_name,
        train_val_split=args.train_val_split,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        samples_per_class=args.samples_per_class,
        seed=args.seed,
        cache_dir=args.cache_dir,
        token=args.hub_token,
    )
    built = build_model(args, splits.labels)
    reg = regularize(args, built)
    data = lazy_splits(splits, built.image_size, built.mean, built.std)
    model = built.model
    if args.channels_last:  # its convolutions' outputs follow, and φ's fused sites read that layout as it is
        model.to(memory_format=torch.channels_last)
    batches = TrainBatches(
        data,
        args.per_device_train_batch_size,
        seed=args.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        flip=not args.no_flip,
    )

    # Optimizer and schedule, in optimizer steps: the model's parameters only (φ stays frozen).
    steps = total_steps(args, batches)
    accumulate = args.gradient_accumulation_steps
    optimizer = torch.optim.Adam(reg.trainable_parameters(model), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = make_scheduler(args, optimizer, steps, accelerator.num_processes)
    eval_loader = torch.utils.data.DataLoader(
        EvalImages(data), batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers
    )
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    scheduler = accelerator.prepare_scheduler(scheduler)  # any schedule (GreedyLR is no LRScheduler) is checkpointed
    steps_on_metric = args.lr_scheduler_type in METRIC_LR_SCHEDULER_TYPES
    forward_model = compiled(model, args)
    eval_mode = args.inference_mode if reg.kind == "metaperturb" else None
    eval_every = periodic_eval_interval(args.eval_steps, steps)
    epoch_steps = max(1, batches.steps_per_epoch // accumulate)
    ckpt_every = epoch_steps if args.checkpointing_steps == "epoch" else args.checkpointing_steps
    signature = {k: getattr(args, k) for k in SIGNATURE} | {
        "max_train_steps": steps,
        "num_processes": accelerator.num_processes,
    }

    def evaluate(step: int, mc_samples: int, inference_mode: str | None = eval_mode):
        probs, labels = predict_proba(
            forward_model,
            eval_loader,
            mc_samples,
            inference_mode=inference_mode,
            seed=derive_seed(args.seed, "eval", step),
            gather=accelerator.gather_for_metrics,
            progress=accelerator.is_local_main_process,
        )
        return compute_metrics(probs, labels, args.ece_bins), probs, labels

    # Resume: only the run that wrote the checkpoint (same signature).
    history, evals, start, resumed_from = [], [], 0, None
    if args.resume_from_checkpoint:
        path = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint, TRANSFER_LAYOUT)
        state = load_transfer_checkpoint(accelerator, path)
        saved = SIGNATURE_DEFAULTS | state["signature"]
        diff = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
        if diff:
            raise CheckpointError(f"{path} was written by a different run; differing (saved, now): {diff}")
        start, history, evals = state["step"], state["history"], state["evals"]
        resumed_from = start
    if args.with_tracking:
        accelerator.init_trackers(
            "transfer", {k: v for k, v in public_args(args).items() if isinstance(v, (int, float, str, bool))}
        )

    # Training, with periodic evaluations and checkpoints. Optimizer step s takes the batches s·A … s·A + A − 1
    # (A = --gradient_accumulation_steps), decoded ahead by --dataloader_num_workers processes.
    progress = tqdm(total=steps, initial=start, desc="training", disable=not accelerator.is_local_main_process)
    pin_memory = accelerator.device.type == "cuda"
    loader = train_loader(
        batches, start * accumulate, steps * accumulate, num_workers=args.dataloader_num_workers, pin_memory=pin_memory
    )
    next_batch, loop_time = iter(loader), 0.0
    for step in range(start, steps):
        step_start = time.perf_counter()
        # Every random stream of a step derives from (seed, step, rank): a resumed run repeats it bit for bit.
        torch.manual_seed(derive_seed(args.seed, "noise", step, accelerator.process_index))
        sched = reg.set_step(step, steps)
        model.train()
        losses = []
        for _ in range(accumulate):
            pixel_values, labels = next(next_batch)
            with accelerator.accumulate(model):  # the gradients are averaged; the optimizer steps on the last
                loss = forward_model(
                    pixel_values=pixel_values.to(accelerator.device), labels=labels.to(accelerator.device)
                ).loss
                accelerator.backward(loss)
                optimizer.step()
                if not steps_on_metric:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        row = {
            "step": step + 1,
            "loss": accelerator.gather(torch.stack(losses).mean()).mean().item(),
            "lr": optimizer.param_groups[0]["lr"],
            **sched,
        }
        loop_time += time.perf_counter() - step_start
        history.append(row)
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.3f}")
        if args.with_tracking:
            accelerator.log({"train_loss": row["loss"], "lr": row["lr"], **sched}, step=step + 1)
        if (step + 1) % eval_every == 0 and step + 1 < steps:  # the last step gets the full evaluation below
            metrics, _, _ = evaluate(step + 1, args.periodic_eval_mc_samples)
            evals.append({"step": step + 1, **metrics})
            logger.info("step %d: %s", step + 1, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if steps_on_metric:  # as the Trainer: the evaluation loss drives reduce_lr_on_plateau and greedy
                scheduler.scheduler.step(metrics["nll"])
            if args.with_tracking:
                accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=step + 1)
        stop = args.stop_after_steps is not None and step + 1 == args.stop_after_steps and step + 1 < steps
        if (ckpt_every and (step + 1) % ckpt_every == 0) or stop:
            save_transfer_checkpoint(
                accelerator,
                output_dir,
                step + 1,
                {"history": history, "evals": evals, "signature": signature, "args": public_args(args)},
            )
            if accelerator.is_main_process:
                for removed in prune_checkpoints(output_dir, args.checkpoints_total_limit):
                    logger.info("removed %s (--checkpoints_total_limit %d)", removed, args.checkpoints_total_limit)
        if stop:
            progress.close()
            print(f"stopped after step {step + 1} of {steps}; continue with --resume_from_checkpoint latest")
            return None
    progress.close()

    # Evaluation: the full φ; mean mode calibrated on training images (and, with --mean_mode_mc_fit_steps, fitted
    # to the MC average: a LayerNorm model such as a ViT is calibrated by that fit alone).
    reg.finish()
    calibrated = reg.calibrate_mean_mode(
        calibration_batches(data, args.per_device_eval_batch_size, args.seed),
        max_images=args.mean_mode_calibration_images,
        seed=args.seed,
        mc_fit_steps=args.mean_mode_mc_fit_steps,
        progress=accelerator.is_local_main_process,
    )
    metrics, probs, labels = evaluate(steps, args.eval_mc_samples)
    evals.append({"step": steps, **metrics})
    mean_mode = {}
    if eval_mode == "mc":  # the one-pass alternative, side by side (it costs one pass)
        mean_mode = {f"eval_mean_mode_{k}": v for k, v in evaluate(steps, 1, "mean")[0].items()}
    adversarial = adversarial_evaluation(args, accelerator, model, data, built, eval_mode)
    if args.with_tracking:
        accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=steps)
        accelerator.end_training()
    results = {f"eval_{k}": v for k, v in metrics.items()} | {
        "eval_mc_samples": args.eval_mc_samples if eval_mode == "mc" else 1,
        "eval_samples": len(labels),
        "train_samples": len(data.train),
        "train_steps": steps,
        "train_loss": sum(row["loss"] for row in history) / len(history),
        "regularizer": reg.kind,
        "perturb_model_id": reg.phi_id,
        "mixed_precision": accelerator.mixed_precision,  # the figures depend on it: "no", "fp16" or "bf16"
        "train_runtime_s": round(time.time() - start_time, 1),
        # the training steps of this process's run alone (no evaluation, checkpoint or set-up)
        "train_steps_per_second": round((steps - start) / loop_time, 4) if loop_time > 0 else None,
        "resumed_from_step": resumed_from,
        "mean_mode_calibration_images": calibrated,
        "mean_mode_mc_fit_steps": args.mean_mode_mc_fit_steps if calibrated else None,
        **mean_mode,
        **adversarial_results(args, adversarial, eval_mode),
    }

    # Save (and push) the model, its results, plots and card.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_outputs(
            args,
            accelerator,
            data,
            built,
            reg,
            metrics,
            results,
            (probs, labels),
            (history, evals),
            command,
            adversarial,
        )
    accelerator.wait_for_everyone()
    return results


def adversarial_evaluation(
    args: argparse.Namespace,
    accelerator: Accelerator,
    model: torch.nn.Module,
    data: ClassificationData,
    built: Classifier,
    eval_mode: str | None,
) -> dict[str, RobustnessReport]:
    """With --eval_adversarial: EoT-PGD on the first --adv_max_samples evaluation images (each process attacks its
    shard), label → report, in the evaluation's mode and, for a run evaluated in MC mode, in one-pass mean mode."""
    if args.eval_adversarial is None:
        return {}
    images = torch.utils.data.Subset(EvalImages(data), range(min(args.adv_max_samples, len(data.eval))))
    loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(images, batch_size=args.per_device_eval_batch_size)
    )
    modes = {f"MC-{args.eval_mc_samples}": "mc", "mean mode": "mean"} if eval_mode == "mc" else {"one pass": eval_mode}
    return {
        label: evaluate_adversarial(
            accelerator.unwrap_model(model),  # not DDP's wrapper: the attack's backward reaches no parameter
            loader,
            parse_attack_specs(args.eval_adversarial),
            steps=args.adv_steps,
            eot_samples=args.adv_eot_samples,
            mc_samples=args.eval_mc_samples,
            inference_mode=mode,
            pixel_mean=built.mean,
            pixel_std=built.std,
            seed=derive_seed(args.seed, "adversarial"),
            gather=accelerator.gather_for_metrics,
            progress=accelerator.is_local_main_process,
        )
        for label, mode in modes.items()
    }


def adversarial_results(
    args: argparse.Namespace, adversarial: dict[str, RobustnessReport], eval_mode: str | None
) -> dict[str, Any]:
    """all_results.json's eval_adv_* keys (eval_mean_mode_adv_* for the mean-mode attack of an MC-evaluated run)."""
    out: dict[str, Any] = {}
    for report in adversarial.values():
        mean_beside_mc = eval_mode == "mc" and report.inference_mode == "mean"
        out |= report.metrics("eval_mean_mode_adv_" if mean_beside_mc else "eval_adv_")
    if adversarial:
        first = next(iter(adversarial.values()))
        out |= {"eval_adversarial": args.eval_adversarial, "eval_adv_steps": first.steps,
                "eval_adv_eot_samples": first.eot_samples}  # fmt: skip
    return out


def save_outputs(
    args: argparse.Namespace,
    accelerator: Accelerator,
    data: ClassificationData,
    built: Classifier,
    reg: Regularization,
    metrics: dict[str, float],
    results: dict[str, Any],
    predictions: tuple[torch.Tensor, torch.Tensor],
    curves: tuple[list[dict], list[dict]],
    command: str,
    adversarial: dict[str, RobustnessReport],
) -> None:
    output_dir = Path(args.output_dir)
    repo_id = args.hub_model_id or (output_dir.name if args.push_to_hub else str(output_dir))
    if args.push_to_hub:  # first: a bare name is created in the token's namespace, and the card names the full id
        api = hub_client(args.hub_token)
        repo_id = create_hub_repo(repo_id, private=args.hub_private_repo, token=args.hub_token, api=api)
    if reg.kind == "metaperturb":
        if args.inference_mode == "mean":
            reg.handle.set_inference_mode("mean")
        reg.handle.save_pretrained(output_dir, repo_id=repo_id)  # base model + φ + sites, one-call reload
    else:
        if reg.placement is not None:
            reg.placement.remove()  # DropBlock holds no weights: what is left is the plain model
        accelerator.unwrap_model(built.model).save_pretrained(output_dir)
    if built.processor is not None:
        built.processor.save_pretrained(output_dir)
    plot_reliability_diagram(*predictions, output_dir / RELIABILITY_PNG, n_bins=args.ece_bins)
    plot_training_curve(*curves, output_dir / CURVE_PNG)
    if adversarial:
        plot_accuracy_vs_epsilon(adversarial, output_dir / ADVERSARIAL_PNG)
    # whole or absent: a run killed while writing leaves no truncated file
    text = json.dumps(results, indent=2, sort_keys=True)
    atomic_write(output_dir / RESULTS_NAME, lambda tmp: tmp.write_text(text))
    card = render_transfer_card(
        model_name=args.model_name_or_path or args.model_type,
        model_class=type(built.model).__name__,
        base_model=built.base_model,
        dataset_id=data.dataset_id,
        hub_dataset=args.dataset_name,
        eval_split=data.eval_split,
        num_train=len(data.train),
        num_eval=len(data.eval),
        num_labels=len(data.labels),
        regularizer=reg.kind,
        metrics=metrics,
        steps=results["train_steps"],
        batch_size=args.per_device_train_batch_size * accelerator.num_processes,
        learning_rate=args.learning_rate,
        lr_scheduler=args.lr_scheduler_type,
        image_size=built.image_size,
        repo_id=repo_id,
        command=command,
        arguments=public_args(args),
        phi_id=reg.phi_id,
        num_sites=reg.info.get("sites"),
        noise_anneal_fraction=args.noise_anneal_fraction,
        dropblock_prob=args.dropblock_prob,
        dropblock_size=args.dropblock_size,
        inference_mode=args.inference_mode,
        eval_mc_samples=args.eval_mc_samples,
        reliability_png=RELIABILITY_PNG,
        curve_png=CURVE_PNG,
        robustness=robustness_markdown(adversarial) if adversarial else None,
        robustness_png=ADVERSARIAL_PNG,
    )
    (output_dir / "README.md").write_text(card)
    if args.push_to_hub:
        info = upload_to_hub(
            output_dir,
            repo_id,
            commit_message=f"mp_hub transfer: {reg.kind}, {results['train_steps']} steps",
            token=args.hub_token,
            ignore_patterns=["checkpoints/*", ".*"],
            api=api,
        )
        logger.info("pushed to %s", getattr(info, "commit_url", repo_id))
    print(
        f"accuracy {metrics['accuracy']:.4f}  NLL {metrics['nll']:.4f}  ECE {metrics['ece']:.4f}  "
        f"({results['eval_samples']} {data.eval_split} images, {results['eval_mc_samples']} pass(es)); "
        f"saved to {output_dir}"
    )


if __name__ == "__main__":
    sys.exit(main())
