#!/usr/bin/env python
"""Train or fine-tune an image classifier with a published MetaPerturb φ (or a baseline), then evaluate it.

    accelerate launch recipes/transfer.py          # CIFAR ResNet-20 on the bundled Fashion-MNIST tiny, default φ
    python recipes/transfer.py --perturb_model_id DIR_OR_HUB_ID --model_name_or_path microsoft/resnet-18 \\
        --ignore_mismatched_sizes --dataset_name uoft-cs/cifar10 --image_column_name img --samples_per_class 100

As in the authors' train_tgt.py: φ is frozen and shared by every site; only the model's parameters are trained
(Adam); sites in training mode use batch statistics; κ goes 0 → 1 over the first 40% of steps. Evaluation
averages the softmax of `--eval_mc_samples` stochastic passes in eval mode (running statistics). Outputs: the
model (with its sites and φ: `mp_hub.load_perturbed(output_dir)`), all_results.json, a reliability diagram, a
training curve and a model card. Flags follow transformers' run_image_classification_no_trainer.py.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a CPU shared with other jobs, spinning OpenMP threads wait for descheduled peers
# at every parallel region (measured 20x slower steps on 2 busy cores); passive waiting costs next to nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mp_hub.cli_args import run_cli  # noqa: E402
from mp_hub.data import derive_seed  # noqa: E402
from mp_hub.errors import CheckpointError  # noqa: E402
from mp_hub.evaluation import compute_metrics, predict_proba  # noqa: E402
from mp_hub.output_dir import claim_output_dir  # noqa: E402
from mp_hub.schedules import step_lr_lambda  # noqa: E402
from mp_hub.transfer import arguments, checkpoint, report  # noqa: E402
from mp_hub.transfer.data import EvalImages, TrainBatches, decode_splits, prepare_splits  # noqa: E402
from mp_hub.transfer.modeling import apply_regularizer, build_model  # noqa: E402

logger = logging.getLogger("transfer")

DEFAULT_STEPS = 150  # with no --max_train_steps / --num_train_epochs (keeps the no-flag run under 5 min on 2 cores)
# Arguments a resumed run must share with the run that wrote the checkpoint (else the result is not that run's).
SIGNATURE = (
    "seed",
    "per_device_train_batch_size",
    "learning_rate",
    "weight_decay",
    "lr_scheduler_type",
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


def make_scheduler(args, optimizer, total_steps: int, num_processes: int):
    # accelerate steps a prepared scheduler once per process per optimizer step: count steps the same way.
    total = total_steps * num_processes
    if args.lr_scheduler_type == "step":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, step_lr_lambda(total))
    from transformers import get_scheduler

    return get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.num_warmup_steps * num_processes,
        num_training_steps=total,
    )


def total_steps(args, batches: TrainBatches) -> int:
    if args.max_train_steps:
        return args.max_train_steps
    if args.num_train_epochs:
        return max(1, math.ceil(args.num_train_epochs * batches.steps_per_epoch))
    return DEFAULT_STEPS


def run(args, command: str | None = None) -> dict | None:
    """The whole run, holding `--output_dir` (`mp_hub.output_dir`); `command` (for the card) defaults to argv."""
    tracking = dict(log_with=args.report_to, project_dir=args.output_dir) if args.with_tracking else {}
    accelerator = Accelerator(mixed_precision=args.mixed_precision, **tracking)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO if accelerator.is_local_main_process else logging.ERROR,
    )
    with claim_output_dir(args.output_dir, accelerator):  # before any work: one run per folder, and writable
        return train_and_evaluate(args, accelerator, command)


def train_and_evaluate(args, accelerator: Accelerator, command: str | None) -> dict | None:
    start_time = time.time()
    set_seed(args.seed)  # the model's initialisation (and nothing else: every step reseeds its own streams)
    output_dir = Path(args.output_dir)

    splits = prepare_splits(args)
    built = build_model(args, splits.labels)
    reg = apply_regularizer(args, built)
    data = decode_splits(splits, args, built.image_size, built.mean, built.std)
    model = built.model
    batches = TrainBatches(
        data,
        args.per_device_train_batch_size,
        seed=args.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        flip=not args.no_flip,
    )
    steps = total_steps(args, batches)
    optimizer = torch.optim.Adam(reg.trainable_parameters(model), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = make_scheduler(args, optimizer, steps, accelerator.num_processes)
    eval_loader = torch.utils.data.DataLoader(EvalImages(data), batch_size=args.per_device_eval_batch_size)
    model, optimizer, scheduler, eval_loader = accelerator.prepare(model, optimizer, scheduler, eval_loader)
    eval_mode = args.inference_mode if reg.kind == "metaperturb" else None
    eval_every = args.eval_steps or max(1, steps // 3)  # two periodic evaluations, then the final one
    ckpt_every = batches.steps_per_epoch if args.checkpointing_steps == "epoch" else args.checkpointing_steps
    signature = {k: getattr(args, k) for k in SIGNATURE} | {
        "max_train_steps": steps,
        "num_processes": accelerator.num_processes,
    }

    def evaluate(step: int, mc_samples: int, inference_mode: str | None = eval_mode):
        probs, labels = predict_proba(
            model,
            eval_loader,
            mc_samples,
            inference_mode=inference_mode,
            seed=derive_seed(args.seed, "eval", step),
            gather=accelerator.gather_for_metrics,
            progress=accelerator.is_local_main_process,
        )
        return compute_metrics(probs, labels, args.ece_bins), probs, labels

    history, evals, start, resumed_from = [], [], 0, None
    if args.resume_from_checkpoint:
        path = checkpoint.resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        state = checkpoint.load_checkpoint(accelerator, path)
        diff = {k: (state["signature"].get(k), v) for k, v in signature.items() if state["signature"].get(k) != v}
        if diff:
            raise CheckpointError(f"{path} was written by a different run; differing (saved, now): {diff}")
        start, history, evals = state["step"], state["history"], state["evals"]
        resumed_from = start
    if args.with_tracking:
        accelerator.init_trackers(
            "transfer", {k: v for k, v in report.public_args(args).items() if isinstance(v, (int, float, str, bool))}
        )

    progress = tqdm(total=steps, initial=start, desc="training", disable=not accelerator.is_local_main_process)
    for step in range(start, steps):
        # Every random stream of a step derives from (seed, step, rank): a resumed run repeats it bit for bit.
        torch.manual_seed(derive_seed(args.seed, "noise", step, accelerator.process_index))
        sched = reg.set_step(step, steps, args)
        pixel_values, labels = batches(step)
        model.train()
        loss = model(pixel_values=pixel_values.to(accelerator.device), labels=labels.to(accelerator.device)).loss
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        row = {
            "step": step + 1,
            "loss": accelerator.gather(loss.detach()).mean().item(),
            "lr": scheduler.get_last_lr()[0],
            **sched,
        }
        history.append(row)
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.3f}")
        if args.with_tracking:
            accelerator.log({"train_loss": row["loss"], "lr": row["lr"], **sched}, step=step + 1)
        if (step + 1) % eval_every == 0 and step + 1 < steps:  # the last step gets the full evaluation below
            metrics, _, _ = evaluate(step + 1, args.periodic_eval_mc_samples)
            evals.append({"step": step + 1, **metrics})
            logger.info("step %d: %s", step + 1, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if args.with_tracking:
                accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=step + 1)
        stop = args.stop_after_steps is not None and step + 1 == args.stop_after_steps and step + 1 < steps
        if (ckpt_every and (step + 1) % ckpt_every == 0) or stop:
            checkpoint.save_checkpoint(
                accelerator,
                output_dir,
                step + 1,
                {"history": history, "evals": evals, "signature": signature, "args": report.public_args(args)},
            )
        if stop:
            progress.close()
            print(f"stopped after step {step + 1} of {steps}; continue with --resume_from_checkpoint latest")
            return None
    progress.close()

    reg.finish()
    # One pass over training images: BatchNorm statistics for the one-pass "mean" mode (mp_hub.mean_mode).
    # With --mean_mode_mc_fit_steps, its statistics are then fitted to the MC average (mp_hub.mean_mode.mc_fit);
    # a LayerNorm model (ViT) is calibrated by that fit alone.
    calibrated = reg.calibrate_mean_mode(
        data, args.mean_mode_calibration_images, args.per_device_eval_batch_size, args.seed, args.mean_mode_mc_fit_steps
    )
    metrics, probs, labels = evaluate(steps, args.eval_mc_samples)
    evals.append({"step": steps, **metrics})
    mean_mode = {}
    if eval_mode == "mc":  # the one-pass alternative, side by side (it costs one pass)
        mean_mode = {f"eval_mean_mode_{k}": v for k, v in evaluate(steps, 1, "mean")[0].items()}
    if args.with_tracking:
        accelerator.log({f"eval_{k}": v for k, v in metrics.items()}, step=steps)
        accelerator.end_training()
    results = {f"eval_{k}": v for k, v in metrics.items()} | {
        "eval_mc_samples": args.eval_mc_samples if eval_mode == "mc" else 1,
        "eval_samples": len(labels),
        "train_samples": len(data.train),
        "train_steps": steps,
        "regularizer": reg.kind,
        "perturb_model_id": reg.phi_id,
        "train_runtime_s": round(time.time() - start_time, 1),
        "resumed_from_step": resumed_from,
        "mean_mode_calibration_images": calibrated,
        "mean_mode_mc_fit_steps": args.mean_mode_mc_fit_steps if calibrated else None,
        **mean_mode,
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_outputs(
            args, accelerator, data, built, reg, metrics, results, probs, labels, history, evals, steps, command
        )
    accelerator.wait_for_everyone()
    return results


def save_outputs(args, accelerator, data, built, reg, metrics, results, probs, labels, history, evals, steps, command):
    output_dir = Path(args.output_dir)
    repo_id = args.hub_model_id or (output_dir.name if args.push_to_hub else str(output_dir))
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
    report.write_plots(output_dir, probs, labels, history, evals, args.ece_bins)
    report.write_results(output_dir, results)
    card = report.render_card(
        args,
        data=data,
        built=built,
        reg=reg,
        metrics=metrics,
        steps=steps,
        world_size=accelerator.num_processes,
        repo_id=repo_id,
        command=command or report.launch_command(),
    )
    (output_dir / "README.md").write_text(card)
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=args.hub_token)
        api.create_repo(repo_id, private=args.hub_private_repo, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(output_dir),
            ignore_patterns=["checkpoints/*", ".*"],
            commit_message=f"mp_hub transfer: {reg.kind}, {steps} steps",
        )
        logger.info("pushed to %s", getattr(info, "commit_url", repo_id))
    print(
        f"accuracy {metrics['accuracy']:.4f}  NLL {metrics['nll']:.4f}  ECE {metrics['ece']:.4f}  "
        f"({results['eval_samples']} {data.eval_split} images, {results['eval_mc_samples']} pass(es)); "
        f"saved to {output_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    # called with argv (e.g. from Python): the card shows it as the command line of this script
    command = None if argv is None else report.launch_command([os.path.relpath(__file__), *argv])
    return run_cli("transfer.py", lambda: run(arguments.parse_args(argv), command))


if __name__ == "__main__":
    sys.exit(main())
