"""Resumable meta-training checkpoints: `output_dir/checkpoints/step_{N}/`.

Layout: `phi/` (a φ folder `MetaPerturb.from_pretrained` loads), `phi_optimizer.pt`, `trainer_state.json`
(step, metric history, wall time, the run's signature) from the main process; `task_{t:04d}.pt` (θ_t, its
optimizer, its sites' buffers, its data-order / augmentation / noise generator states) from whichever
process holds task t, one file per task so a resume may use another world size; `COMPLETE`, written last.

Atomicity (`mp_hub.checkpointing`): everything goes to a hidden temporary folder first; the `COMPLETE` marker is
written last and the folder is then renamed into place (`os.replace`), so a `step_{N}` folder is either complete
or absent. In a multi-machine run `output_dir` must be on storage shared by all machines.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpointing import (
    CHECKPOINTS,
    MARKER,
    STATE_NAME,
    atomic_write,
    check_checkpoint,
    complete_checkpoints,
    prune_checkpoints,
    resolve_intact_checkpoint,
    write_checkpoint_folder,
)
from ..errors import CheckpointError, ConfigError
from ..hub import WEIGHTS_NAME, load_safetensors, load_state_dict_strict
from .meta import MetaTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS",
    "MARKER",
    "STATE_NAME",
    "complete_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]


def _task_file(task: int) -> str:
    return f"task_{task:04d}.pt"


def save_checkpoint(
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
            atomic_write(folder / _task_file(learner.index), lambda p, s=task_state: torch.save(s, p))

    def write_phi(folder: Path) -> None:  # the main process, once every task file is in
        missing = [t for t in range(trainer.num_tasks) if not (folder / _task_file(t)).is_file()]
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


def required_files(state: dict[str, Any]) -> list[str]:
    """The files a meta-training checkpoint with trainer state `state` holds (besides the state)."""
    tasks = [_task_file(t) for t in range(int(state["run"]["num_tasks"]))]
    return [f"phi/{WEIGHTS_NAME}", "phi/config.json", "phi_optimizer.pt", *tasks]


def check_meta_checkpoint(path: Path) -> dict[str, Any]:
    """The trainer state of the checkpoint `path` if it is intact, else a CheckpointError naming the broken file."""
    return check_checkpoint(path, ("step", "history", "wall_time_s", "run"), required_files)


def resolve_checkpoint(output_dir: str | os.PathLike, which: str) -> Path:
    """`latest` → the newest intact checkpoint in `output_dir` (warning of broken newer ones); else that folder."""
    return resolve_intact_checkpoint(output_dir, which, check_meta_checkpoint)


def load_checkpoint(path: Path, *, trainer: MetaTrainer, run: dict[str, Any]) -> dict[str, Any]:
    """Restore φ, its optimizer and this process's tasks from `path`; returns the trainer state (step, history)."""
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
        task_path = path / _task_file(learner.index)
        if not task_path.is_file():
            raise CheckpointError(f"checkpoint {path} has no {task_path.name}")
        learner.load_state_dict(torch.load(task_path, map_location="cpu", weights_only=True), trainer.phi)
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state
