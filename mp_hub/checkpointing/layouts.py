"""What each recipe keeps in a checkpoint folder (`folder.py` makes the folder atomic and checks it).

Meta-training (`META_TRAIN_LAYOUT`): `phi/` (a φ folder `MetaPerturb.from_pretrained` loads), `phi_optimizer.pt`
and `trainer_state.json` (step, metric history, wall time, the run's signature) from the main process;
`task_{t:04d}.pt` (θ_t, its optimizer, its sites' buffers, its data-order / augmentation / noise generator states)
from whichever process holds task t, one file per task so a resume may use another world size.

Transfer (`TRANSFER_LAYOUT`): `accelerate.save_state` (model with its sites and φ, optimizer, scheduler, one RNG
file per process) plus `trainer_state.json` (step, history, evaluations, the run's signature and arguments).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError, ConfigError
from ..hub import WEIGHTS_NAME, load_safetensors, load_state_dict_strict
from .folder import (
    CHECKPOINTS,
    STATE_NAME,
    CheckpointLayout,
    atomic_write,
    prune_checkpoints,
    write_checkpoint_folder,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..training.meta import MetaTrainer

logger = logging.getLogger(__name__)


def task_file(task: int) -> str:
    return f"task_{task:04d}.pt"


def _meta_train_files(state: dict[str, Any]) -> list[str]:
    tasks = [task_file(t) for t in range(int(state["run"]["num_tasks"]))]
    return [f"phi/{WEIGHTS_NAME}", "phi/config.json", "phi_optimizer.pt", *tasks]


def _transfer_files(state: dict[str, Any]) -> list[str]:
    random_states = [f"random_states_{rank}.pkl" for rank in range(int(state["signature"]["num_processes"]))]
    return ["model.safetensors", "optimizer.bin", "scheduler.bin", *random_states]


META_TRAIN_LAYOUT = CheckpointLayout("meta_train", ("step", "history", "wall_time_s", "run"), _meta_train_files)
TRANSFER_LAYOUT = CheckpointLayout("transfer", ("step", "history", "evals", "signature"), _transfer_files)


def save_meta_train_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    *,
    trainer: MetaTrainer,
    state: dict[str, Any],
    is_main: bool,
    wait_for_everyone: Callable[[], None],
    total_limit: int | None = None,
) -> Path:
    """Write `step_{step}` collectively (every process must call this); keep the last `total_limit`."""
    root = Path(output_dir) / CHECKPOINTS
    tmp, final = root / f".tmp-step_{step}", root / f"step_{step}"

    def write_tasks(folder: Path) -> None:  # every process: its own tasks
        for learner in trainer.learners:
            task_state = learner.state_dict(trainer.phi)
            atomic_write(folder / task_file(learner.index), lambda p, s=task_state: torch.save(s, p))

    def write_phi(folder: Path) -> None:  # the main process, once every task file is in
        missing = [t for t in range(trainer.num_tasks) if not (folder / task_file(t)).is_file()]
        if missing:
            raise CheckpointError(
                f"checkpoint {final}: no file for tasks {missing} (is {root} shared by all machines?)"
            )
        trainer.phi.save_pretrained(folder / "phi")
        optimizer_state = trainer.optimizer.state_dict()
        atomic_write(folder / "phi_optimizer.pt", lambda p: torch.save(optimizer_state, p))

    write_checkpoint_folder(
        final,
        tmp,
        {**state, "step": step},
        marker=f"step {step}\n",
        is_main=is_main,
        wait_for_everyone=wait_for_everyone,
        write_each=write_tasks,
        write_main=write_phi,
    )
    if is_main:
        logger.info("saved checkpoint %s", final)
        for path in root.glob(".tmp-step_*"):  # left by a run killed while saving
            shutil.rmtree(path, ignore_errors=True)
        for path in prune_checkpoints(output_dir, total_limit):
            logger.info("removed old checkpoint %s (--checkpoints_total_limit %d)", path, total_limit)
    wait_for_everyone()
    return final


def load_meta_train_checkpoint(path: Path, *, trainer: MetaTrainer, run: dict[str, Any]) -> dict[str, Any]:
    """Restore φ, its optimizer and this process's tasks from `path`; returns the trainer state (step, history).

    `run` is the signature of this run: a checkpoint whose signature differs is a `ConfigError`."""
    state = json.loads((path / STATE_NAME).read_text())
    differences = {key: (state["run"].get(key), value) for key, value in run.items() if state["run"].get(key) != value}
    if differences:
        raise ConfigError(
            f"checkpoint {path} belongs to another run; (checkpoint, now) differ for "
            + ", ".join(f"{k}: {v[0]!r} vs {v[1]!r}" for k, v in sorted(differences.items()))
        )
    load_state_dict_strict(trainer.phi, load_safetensors(path / "phi" / WEIGHTS_NAME), f"checkpoint {path}")
    trainer.optimizer.load_state_dict(torch.load(path / "phi_optimizer.pt", map_location="cpu", weights_only=True))
    for learner in trainer.learners:
        task_path = path / task_file(learner.index)
        if not task_path.is_file():
            raise CheckpointError(f"checkpoint {path} has no {task_path.name}")
        learner.load_state_dict(torch.load(task_path, map_location="cpu", weights_only=True), trainer.phi)
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state


def save_transfer_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any]
) -> Path:
    """Save the run at `step` (call on every process: each writes its own RNG state)."""
    root = Path(output_dir) / CHECKPOINTS
    final, tmp = root / f"step_{step}", root / f".step_{step}.tmp"
    write_checkpoint_folder(
        final,
        tmp,
        {"step": step, **state},
        marker="",
        is_main=accelerator.is_main_process,
        wait_for_everyone=accelerator.wait_for_everyone,
        write_each=lambda folder: accelerator.save_state(str(folder)),
    )
    if accelerator.is_main_process:
        logger.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def load_transfer_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; return the saved trainer state."""
    accelerator.load_state(str(path))
    state = json.loads((path / STATE_NAME).read_text())
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state
