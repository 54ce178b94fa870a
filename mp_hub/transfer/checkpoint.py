"""Resumable, atomic checkpoints of the transfer recipe: `output_dir/checkpoints/step_{N}/`.

Each holds `accelerator.save_state` (model with its sites and φ, optimizer, scheduler, RNG states) plus
`trainer_state.json` (step, history, the run's arguments) and a `COMPLETE` marker written last. Everything is
written to a hidden temporary folder that is renamed into place, so a `step_{N}` folder is complete or absent.
With several machines, `output_dir` must be on storage they all share.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_NAME = "trainer_state.json"
MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / MARKER).is_file()]
    return sorted(found)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any]) -> Path:
    """Save the run at `step` (call on every process: each writes its own RNG state)."""
    root = Path(output_dir) / CHECKPOINTS
    final, tmp = root / f"step_{step}", root / f".step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a run killed while saving
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_NAME).write_text(json.dumps({"step": step, **state}, indent=1))
        (tmp / MARKER).write_text("")
        if final.exists():  # a rerun of the same step: the new one replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(spec: str, output_dir: str | os.PathLike) -> Path:
    """`spec` is a checkpoint folder, or "latest" (the newest complete one under `output_dir`)."""
    if spec == "latest":
        found = checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}/{CHECKPOINTS}"
            )
        return found[-1][1]
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
