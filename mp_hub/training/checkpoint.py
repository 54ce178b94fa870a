"""Resumable meta-training checkpoints: `output_dir/checkpoints/step_{N}/`.

Layout: `phi/` (a φ folder `MetaPerturb.from_pretrained` loads), `phi_optimizer.pt`, `trainer_state.json`
(step, metric history, wall time, the run's signature) from the main process; `task_{t:04d}.pt` (θ_t, its
optimizer, its sites' buffers, its data-order / augmentation / noise generator states) from whichever
process holds task t, one file per task so a resume may use another world size; `COMPLETE`, written last.

Atomicity: everything goes to a hidden temporary folder first; the `COMPLETE` marker is written last and
the folder is then renamed into place (`os.replace`), so a `step_{N}` folder is either complete or absent.
In a multi-machine run `output_dir` must be on storage shared by all machines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..hub import WEIGHTS_NAME, load_safetensors, load_state_dict_strict
from .meta import MetaTrainer

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
STATE_NAME = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _task_file(task: int) -> str:
    return f"task_{task:04d}.pt"


def complete_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints under `output_dir/checkpoints`, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / MARKER).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


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
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    wait_for_everyone()
    for learner in trainer.learners:
        task_state = learner.state_dict(trainer.phi)
        _atomic_write(tmp / _task_file(learner.index), lambda p, s=task_state: torch.save(s, p))
    wait_for_everyone()
    if is_main:
        missing = [t for t in range(trainer.num_tasks) if not (tmp / _task_file(t)).is_file()]
        if missing:
            raise CheckpointError(
                f"checkpoint {final}: no file for tasks {missing} (is {root} shared by all machines?)"
            )
        trainer.phi.save_pretrained(tmp / "phi")
        optimizer_state = trainer.optimizer.state_dict()
        _atomic_write(tmp / "phi_optimizer.pt", lambda p: torch.save(optimizer_state, p))
        _atomic_write(tmp / STATE_NAME, lambda p: p.write_text(json.dumps({**state, "step": step}, indent=1)))
        _atomic_write(tmp / MARKER, lambda p: p.write_text(f"step {step}\n"))
        if final.exists():  # e.g. a resumed run passing a step it had saved before
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("saved checkpoint %s", final)
        _rotate(root, total_limit)
    wait_for_everyone()
    return final


def _rotate(root: Path, total_limit: int | None) -> None:
    for path in root.glob(".tmp-step_*"):  # left by a run killed while saving
        shutil.rmtree(path, ignore_errors=True)
    if total_limit is None or total_limit < 1:
        return
    for _, path in complete_checkpoints(root.parent)[:-total_limit]:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed old checkpoint %s (--checkpoints_total_limit %d)", path, total_limit)


def resolve_checkpoint(output_dir: str | os.PathLike, which: str) -> Path:
    """`latest` → the newest complete checkpoint in `output_dir`; otherwise a checkpoint folder."""
    if which == "latest":
        found = complete_checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}/{CHECKPOINTS}"
            )
        return found[-1][1]
    path = Path(which)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"--resume_from_checkpoint {which}: not a complete checkpoint folder (no {MARKER} file)")
    return path


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
