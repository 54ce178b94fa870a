"""Resumable, atomic checkpoints of the transfer recipe: `output_dir/checkpoints/step_{N}/`.

Each holds `accelerator.save_state` (model with its sites and φ, optimizer, scheduler, RNG states) plus
`trainer_state.json` (step, history, the run's arguments) and a `COMPLETE` marker written last. Everything is
written to a hidden temporary folder that is renamed into place (`mp_hub.checkpointing`), so a `step_{N}` folder
is complete or absent. With several machines, `output_dir` must be on storage they all share.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..checkpointing import (
    CHECKPOINTS,
    STATE_NAME,
    check_checkpoint,
    complete_checkpoints,
    resolve_intact_checkpoint,
    write_checkpoint_folder,
)

logger = logging.getLogger(__name__)

checkpoints = complete_checkpoints  # (step, folder) of the complete checkpoints, oldest first


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any]) -> Path:
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


def required_files(state: dict[str, Any]) -> list[str]:
    """The files of `accelerator.save_state` a transfer checkpoint with trainer state `state` holds."""
    random_states = [f"random_states_{rank}.pkl" for rank in range(int(state["signature"]["num_processes"]))]
    return ["model.safetensors", "optimizer.bin", "scheduler.bin", *random_states]


def check_transfer_checkpoint(path: Path) -> dict[str, Any]:
    """The trainer state of the checkpoint `path` if it is intact, else a CheckpointError naming the broken file."""
    return check_checkpoint(path, ("step", "history", "evals", "signature"), required_files)


def resolve_checkpoint(spec: str, output_dir: str | os.PathLike) -> Path:
    """`spec` is a checkpoint folder, or "latest" (the newest intact one under `output_dir`, warning of newer ones)."""
    return resolve_intact_checkpoint(output_dir, spec, check_transfer_checkpoint)


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; return the saved trainer state."""
    accelerator.load_state(str(path))
    state = json.loads((path / STATE_NAME).read_text())
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state
