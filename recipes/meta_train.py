"""Meta-train MetaPerturb's φ on several tasks built from one `datasets` source (Ryu et al., NeurIPS 2020).

    accelerate launch recipes/meta_train.py --dataset_dir ../shared/data/glyphs10 --task_column task --no_flip \
        --output_dir glyphs10-phi
    python recipes/meta_train.py --config meta_train.yaml          # one process; flags override the YAML

Each process holds a contiguous block of the tasks, at most one more than any other process (one model θ_t each,
all sharing this process's φ); φ's gradient is averaged over all tasks with one all-reduce per step and every
process applies the same φ step. The result does not depend on the number of processes. See docs/recipes.md
for every flag.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mp_hub.checkpointing import (
    META_TRAIN_LAYOUT,
    load_meta_train_checkpoint,
    resolve_checkpoint,
    save_meta_train_checkpoint,
)
from mp_hub.cli_args import (
    check_at_least,
    check_finite,
    json_object,
    launch_command,
    load_phi,
    parse_args_with_config,
    run_cli,
)
from mp_hub.data import (
    SPLIT_SCHEMES,
    TaskData,
    check_columns,
    check_labels,
    class_lists_hash,
    load_image_dataset,
    recorded_split,
    split_tasks,
    task_images,
)
from mp_hub.errors import ConfigError, DataError
from mp_hub.hub import push_folder
from mp_hub.output_dir import claim_output_dir
from mp_hub.schedules import LR_SCHEDULER_TYPES, METRIC_LR_SCHEDULER_TYPES, build_lr_scheduler
from mp_hub.training.distributed import assign_tasks, broadcast_parameters, check_in_sync, reduce_min_max
from mp_hub.training.host_memory import keep_freed_memory
from mp_hub.training.meta import MetaTrainer, TaskLearner, compile_task_models, phi_sha256, seeded_phi
from mp_hub.training.report import plot_curves
from mp_hub.training.threads import cpu_thread_hint

logger = get_logger(__name__)
CURVES = "meta_train_curves.png"
# φ's schedules: those that are a function of the step alone (a resume rebuilds them from the step).
STEP_LR_SCHEDULER_TYPES = tuple(t for t in LR_SCHEDULER_TYPES if t not in METRIC_LR_SCHEDULER_TYPES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML file of flag values (the command line overrides them)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="Hub dataset id, e.g. zh-plus/tiny-imagenet")
    data.add_argument("--dataset_config_name")
    data.add_argument("--dataset_dir", help="local Hub-layout dataset folder, e.g. ../shared/data/glyphs10")
    data.add_argument("--train_dir", help="an imagefolder (one sub-folder per class)")
    data.add_argument("--image_column_name", default="image")
    data.add_argument("--label_column_name", default="label")
    data.add_argument("--cache_dir")
    tasks = parser.add_argument_group("tasks")
    tasks.add_argument("--task_column", help="one task per value of this column (e.g. glyphs10's `task`)")
    tasks.add_argument("--num_tasks", type=int, help="number of tasks (without --task_column)")
    tasks.add_argument("--split_scheme", choices=SPLIT_SCHEMES, default="halves", help="the authors' scheme: halves")
    tasks.add_argument("--image_size", type=int, default=32)
    tasks.add_argument("--no_flip", action="store_true", help="no random horizontal flip (glyphs, digits)")
    train = parser.add_argument_group("training")
    train.add_argument("--model_type", default="cifar_resnet20", help="mp_hub short name or transformers model_type")
    train.add_argument("--per_device_train_batch_size", type=int, default=128)
    train.add_argument("--max_train_steps", type=int, default=750)
    train.add_argument("--learning_rate", type=float, default=1e-3)
    train.add_argument("--weight_decay", type=float, default=5e-4)
    train.add_argument(
        "--lr_scheduler_type",
        default="constant",
        help="φ's learning-rate schedule over --max_train_steps (the authors': constant; θ's stays constant): "
        f"one of {', '.join(STEP_LR_SCHEDULER_TYPES)}",
    )
    train.add_argument("--lr_scheduler_kwargs", help='JSON for the schedule, e.g. {"min_lr_rate": 0.1}')
    train.add_argument("--num_warmup_steps", type=int, default=0, help="for the schedules with a warm-up")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--perturb_model_id",
        help="start from this φ (a zoo name, a local folder or a Hub id) instead of the authors' random init",
    )
    train.add_argument("--torch_compile", action="store_true", help="torch.compile each task model, φ's sites included")
    train.add_argument(
        "--torch_compile_backend", help="torch.compile backend with --torch_compile (default inductor; aot_eager: fast)"
    )
    train.add_argument(
        "--channels_last", action="store_true", help="task models in channels-last memory (faster convolutions on CPU)"
    )
    train.add_argument(
        "--malloc_defaults",
        action="store_true",
        help="on CPU, leave glibc's malloc as it is (default: it keeps freed memory, no page faults per step)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output_dir")
    out.add_argument("--checkpointing_steps", type=int, help="save a resumable checkpoint every N steps")
    out.add_argument("--checkpoints_total_limit", type=int, help="keep only the last N checkpoints")
    out.add_argument("--resume_from_checkpoint", help="`latest` (in --output_dir) or a checkpoint folder")
    out.add_argument("--with_tracking", action="store_true")
    out.add_argument("--report_to", default="all")
    out.add_argument("--push_to_hub", action="store_true")
    out.add_argument("--hub_model_id")
    out.add_argument("--hub_token")
    out.add_argument("--sync_check_steps", type=int, default=50, help="compare φ across processes every N steps")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (and `--config FILE.yaml` defaults), checked: a bad value is a `ConfigError` before any work."""
    args = parse_args_with_config(build_parser(), argv)
    if not args.output_dir:
        raise ConfigError("--output_dir is required")
    check_at_least(
        args,
        1,
        "per_device_train_batch_size",
        "max_train_steps",
        "image_size",
        "sync_check_steps",
        "num_tasks",
        "checkpointing_steps",
        "checkpoints_total_limit",
    )
    check_finite(args, "learning_rate", positive=True)
    check_finite(args, "weight_decay")
    check_lr_schedule(args)
    if args.torch_compile_backend is not None and not args.torch_compile:
        raise ConfigError(f"--torch_compile_backend {args.torch_compile_backend} needs --torch_compile")
    known = torch.compiler.list_backends(exclude_tags=())
    if args.torch_compile_backend is not None and args.torch_compile_backend not in known:
        raise ConfigError(f"--torch_compile_backend {args.torch_compile_backend!r} is not one of {sorted(known)}")
    return args


def check_lr_schedule(args: argparse.Namespace) -> None:
    """φ's schedule must be a function of the step (a resume rebuilds it from the step): no metric-driven one."""
    args.lr_scheduler_kwargs = json_object(args.lr_scheduler_kwargs, "--lr_scheduler_kwargs")
    check_at_least(args, 0, "num_warmup_steps")
    if args.lr_scheduler_type not in STEP_LR_SCHEDULER_TYPES:
        raise ConfigError(
            f"--lr_scheduler_type {args.lr_scheduler_type!r} is not one of {list(STEP_LR_SCHEDULER_TYPES)} "
            f"({', '.join(METRIC_LR_SCHEDULER_TYPES)} follow a metric, which meta-training has no evaluation for)"
        )
    if args.lr_scheduler_type == "constant":
        if args.num_warmup_steps or args.lr_scheduler_kwargs:
            raise ConfigError("--num_warmup_steps and --lr_scheduler_kwargs need a schedule, e.g. constant_with_warmup")
        return
    try:  # the schedule's arguments, checked on a stand-in optimizer: a wrong key fails now, not after the data loads
        build_lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), **phi_lr_schedule(args))
    except ConfigError as err:
        raise ConfigError(f"--lr_scheduler_type / --lr_scheduler_kwargs: {err}") from err


def phi_lr_schedule(args: argparse.Namespace) -> dict | None:
    """φ's schedule as recorded in a run's signature and provenance; None for the authors' constant rate."""
    if args.lr_scheduler_type == "constant":
        return None
    return dict(
        scheduler_type=args.lr_scheduler_type,
        scheduler_kwargs=args.lr_scheduler_kwargs,
        num_warmup_steps=args.num_warmup_steps,
        num_training_steps=args.max_train_steps,
    )


def compile_backend(args: argparse.Namespace, accelerator: Accelerator) -> str | None:
    """The torch.compile backend of the task models: --torch_compile's, else `accelerate launch --dynamo_backend`'s."""
    launcher = accelerator.state.dynamo_plugin.to_dict()["backend"]  # "no" unless accelerate's config sets one
    if not args.torch_compile:
        return None if launcher == "no" else launcher
    backend = args.torch_compile_backend or "inductor"
    if launcher not in ("no", backend):
        raise ConfigError(f"--torch_compile_backend {backend} disagrees with accelerate's --dynamo_backend {launcher}")
    return backend


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    accelerator = Accelerator(log_with=args.report_to if args.with_tracking else None, project_dir=args.output_dir)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        logging.getLogger("mp_hub").setLevel(logging.WARNING)
    if hint := cpu_thread_hint(accelerator.device):
        logger.info(hint)
    if accelerator.device.type == "cpu" and not args.malloc_defaults and keep_freed_memory():
        logger.info("malloc keeps freed memory for reuse: no page faults per step (--malloc_defaults to leave it)")
    with claim_output_dir(args.output_dir, accelerator):  # before any work: one run per folder, and writable
        return meta_train(args, argv, accelerator)


def meta_train(args: argparse.Namespace, argv: list[str], accelerator: Accelerator) -> Path:
    if accelerator.mixed_precision != "no":
        logger.warning(f"meta-training runs in float32: mixed precision {accelerator.mixed_precision!r} is not used")
    set_seed(args.seed)  # only for third-party code: every stream of ours has its own (seed, task) generator
    # Deterministic convolutions: a task's result must not depend on the process (or the run) that computes it.
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    output_dir = Path(args.output_dir)
    started = time.time()

    # φ to start from: the authors' init drawn from the seed, or a saved φ (loaded first: a bad id fails at once).
    if args.perturb_model_id:
        phi = load_phi(args.perturb_model_id, token=args.hub_token).train()
        initial_phi = dict(id=args.perturb_model_id, sha256=phi_sha256(phi))
    else:
        phi, initial_phi = seeded_phi(args.seed), None

    # Data: the `train` split, cut into tasks (the same on every process), then only this process's tasks decoded.
    splits = load_image_dataset(
        dataset_name=args.dataset_name,
        dataset_dir=args.dataset_dir,
        train_dir=args.train_dir,
        dataset_config_name=args.dataset_config_name,
        cache_dir=args.cache_dir,
        token=args.hub_token,
    )
    if "train" not in splits:
        raise DataError(f"the dataset has no `train` split (tasks are built from it); its splits are {list(splits)}")
    raw = splits["train"]
    check_columns(raw, args.image_column_name, args.label_column_name, (args.task_column,) if args.task_column else ())
    check_labels(raw, args.label_column_name, "train")
    task_feature = raw.features[args.task_column] if args.task_column else None
    specs = split_tasks(
        raw[args.label_column_name],
        seed=args.seed,
        num_tasks=args.num_tasks,
        split_scheme=args.split_scheme,
        task_ids=raw[args.task_column] if args.task_column else None,
        task_names=getattr(task_feature, "names", None),
    )
    local_tasks = assign_tasks(len(specs), accelerator.num_processes, accelerator.process_index)
    logger.info(
        f"{len(specs)} tasks; process {accelerator.process_index} holds {list(local_tasks)}", main_process_only=False
    )

    # One model θ_t per task of this process, all sharing φ (broadcast from the main process).
    phi = phi.to(accelerator.device)
    broadcast_parameters(phi)
    attach_logger, attach_level = logging.getLogger("mp_hub.attach"), logging.getLogger("mp_hub.attach").level
    attach_logger.setLevel(logging.WARNING)  # one site report below, not one per task model
    learners = []
    for t in local_tasks:
        train, valid = task_images(
            raw,
            specs[t],
            image_column=args.image_column_name,
            label_column=args.label_column_name,
            image_size=args.image_size,
        )
        data = TaskData(
            specs[t], train, valid, batch_size=args.per_device_train_batch_size, seed=args.seed, flip=not args.no_flip
        )
        learners.append(
            TaskLearner.build(
                data,
                phi,
                model_type=args.model_type,
                image_size=args.image_size,
                learning_rate=args.learning_rate,
                weight_decay=args.weight_decay,
                seed=args.seed,
                device=accelerator.device,
                memory_format=torch.channels_last if args.channels_last else torch.contiguous_format,
            )
        )
    attach_logger.setLevel(attach_level)
    backend = compile_backend(args, accelerator)
    if backend is not None:
        compile_task_models([learner.model for learner in learners], backend)
        logger.info(f"task models compiled with torch.compile(backend={backend!r})")
    if learners:
        logger.info(f"task {learners[0].index}: {learners[0].handle.report()}")
    schedule = phi_lr_schedule(args)
    trainer = MetaTrainer(
        phi,
        learners,
        len(specs),
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler=None if schedule is None else functools.partial(build_lr_scheduler, **schedule),
    )

    # What a checkpoint must agree with to be resumed (the world size may change: one file per task).
    source = args.dataset_name or Path(args.dataset_dir or args.train_dir).resolve().name
    run = dict(
        source_dataset=source,
        split_scheme=recorded_split(args.split_scheme, args.task_column),
        task_classes_sha256=class_lists_hash(specs),
        num_tasks=len(specs),
        architecture=args.model_type,
        seed=args.seed,
        per_device_train_batch_size=args.per_device_train_batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        image_size=args.image_size,
        flip=not args.no_flip,
        lr_schedule=schedule,  # None when constant, as in a checkpoint from before the flag: those still resume
        initial_phi=initial_phi,  # None: the seeded init, as in a checkpoint from before the flag
    )
    start_step, history, previous_wall = 0, [], 0.0
    if args.resume_from_checkpoint:
        path = resolve_checkpoint(output_dir, args.resume_from_checkpoint, META_TRAIN_LAYOUT)
        state = load_meta_train_checkpoint(path, trainer=trainer, run=run)
        start_step, history, previous_wall = state["step"], state["history"], state["wall_time_s"]
        trainer.skip_lr_schedule(start_step)

    if args.with_tracking:
        accelerator.init_trackers(
            "meta_train", {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in vars(args).items()}
        )

    # Meta-training.
    progress = tqdm(
        initial=start_step,
        total=args.max_train_steps,
        disable=not accelerator.is_local_main_process,
        desc="meta-train",
    )
    loop_started = time.time()
    for step in range(start_step + 1, args.max_train_steps + 1):
        metrics = trainer.step()
        history.append({"step": step, **metrics})
        progress.update(1)
        progress.set_postfix(valid_loss=f"{metrics['valid_loss']:.3f}", valid_acc=f"{metrics['valid_accuracy']:.3f}")
        if args.with_tracking:
            accelerator.log(metrics, step=step)
        if step % args.sync_check_steps == 0 or step == args.max_train_steps:
            check_in_sync(phi, step)
        if args.checkpointing_steps and step % args.checkpointing_steps == 0:
            save_meta_train_checkpoint(
                output_dir,
                step,
                trainer=trainer,
                is_main=accelerator.is_main_process,
                wait_for_everyone=accelerator.wait_for_everyone,
                total_limit=args.checkpoints_total_limit,
                state=dict(run=run, history=history, wall_time_s=previous_wall + time.time() - started),
            )
    progress.close()
    loop_time = time.time() - loop_started

    # φ, its provenance, the curves and the card.
    channels = reduce_min_max([c for learner in learners for c in learner.site_channels()], accelerator.device)
    wall_time = previous_wall + time.time() - started
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if history:
            plot_curves(history, output_dir / CURVES, title=f"φ on {source}")
        phi.config.provenance = dict(
            run,
            **({"source_dataset_id": args.dataset_name} if args.dataset_name else {}),
            recipe="recipes/meta_train.py",
            steps=args.max_train_steps,
            world_size=accelerator.num_processes,
            wall_time_s=round(wall_time, 1),
            site_channels=list(channels),
            final=history[-1] if history else None,
        )
        command = launch_command("recipes/meta_train.py", argv, accelerator.num_processes)
        card = dict(images=[CURVES] if history else [], reproduction=command)
        phi.save_pretrained(output_dir, card_extra=card)
        if args.push_to_hub:
            repo_id = args.hub_model_id or output_dir.resolve().name
            # One commit of the saved folder (φ, config, card and its curves); checkpoints stay local.
            push_folder(
                lambda folder, _full_repo_id: [
                    shutil.copy2(f, folder) for f in output_dir.iterdir() if f.is_file() and not f.name.startswith(".")
                ],  # hidden files (the run's lock and its holder record) stay local
                repo_id,
                private=None,
                token=args.hub_token,
                commit_message=f"meta-trained φ ({args.max_train_steps} steps, {len(specs)} tasks)",
            )
        summary = dict(output_dir=str(output_dir), tasks=len(specs), world_size=accelerator.num_processes)
        summary.update(steps_run=args.max_train_steps - start_step, train_loop_s=round(loop_time, 3))
        print(json.dumps({**summary, "wall_time_s": round(wall_time, 1), **(history[-1] if history else {})}))
    accelerator.wait_for_everyone()
    if args.with_tracking:
        accelerator.end_training()
    return output_dir


if __name__ == "__main__":
    sys.exit(run_cli("meta_train.py", main))
