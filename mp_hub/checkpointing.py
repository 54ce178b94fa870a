"""Resumable checkpoint folders of the recipes: `output_dir/checkpoints/step_{N}/`, complete or absent.

A checkpoint is built in a hidden temporary folder; the state (`trainer_state.json`) and then the `COMPLETE`
marker are written last, and the folder is renamed into place (`os.replace`), so a `step_{N}` folder is either
complete or absent. Every process may write its own files into the temporary folder, which must then be on
storage that all processes (all machines) share. `latest` resolves to the newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CheckpointError

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
STATE_NAME = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` to a hidden temporary name next to `path`, then rename it to `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


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


def latest_checkpoint(output_dir: str | os.PathLike) -> Path:
    """`--resume_from_checkpoint latest`: the newest complete checkpoint under `output_dir` (else a CheckpointError)."""
    found = complete_checkpoints(output_dir)
    if not found:
        raise CheckpointError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}/{CHECKPOINTS}")
    return found[-1][1]


def write_checkpoint_folder(
    final: Path,
    tmp: Path,
    state: dict[str, Any],
    *,
    marker: str,
    is_main: bool,
    wait_for_everyone: Callable[[], None],
    write_each: Callable[[Path], Any],
    write_main: Callable[[Path], Any] | None = None,
) -> None:
    """Build the checkpoint folder `final` in `tmp` and rename it into place. Every process must call this.

    The main process starts `tmp` afresh (one left by a run killed while saving goes); then every process runs
    `write_each(tmp)`; once all have, the main process runs `write_main(tmp)`, writes `state` as `STATE_NAME` and
    the `MARKER` (text `marker`), and renames `tmp` to `final` (replacing an older `final`, e.g. when a resumed run
    saves a step again). There is no barrier after the rename: the caller's next `wait_for_everyone()` is it.
    """
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    wait_for_everyone()
    write_each(tmp)
    wait_for_everyone()
    if is_main:
        if write_main is not None:
            write_main(tmp)
        atomic_write(tmp / STATE_NAME, lambda p: p.write_text(json.dumps(state, indent=1)))
        atomic_write(tmp / MARKER, lambda p: p.write_text(marker))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete all but the newest `total_limit` complete checkpoints (none when it is None or < 1); the deleted."""
    if total_limit is None or total_limit < 1:
        return []
    removed = [path for _, path in complete_checkpoints(output_dir)[:-total_limit]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
