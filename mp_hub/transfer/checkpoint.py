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
    MARKER,
    STATE_NAME,
    complete_checkpoints,
    latest_checkpoint,
    write_checkpoint_folder,
)
from ..errors import CheckpointError

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


def resolve_checkpoint(spec: str, output_dir: str | os.PathLike) -> Path:
    """`spec` is a checkpoint folder, or "latest" (the newest complete one under `output_dir`)."""
    if spec == "latest":
        return latest_checkpoint(output_dir)
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {spec}: no such folder (or pass 'latest')")
    if not (path / MARKER).is_file() or not (path / STATE_NAME).is_file():
        raise CheckpointError(f"{spec} is not a complete transfer checkpoint (no {MARKER} / {STATE_NAME})")
    return path


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; return the saved trainer state."""
    accelerator.load_state(str(path))
    state = json.loads((path / STATE_NAME).read_text())
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state
