"""The recipes' resumable checkpoint folders: `output_dir/checkpoints/step_{N}/`, complete or absent.

A checkpoint is built in a hidden temporary folder; the state (`trainer_state.json`) and then the `COMPLETE`
marker are written last, and the folder is renamed into place (`os.replace`), so a `step_{N}` folder is either
complete or absent. Every process may write its own files into the temporary folder, which must then be on
storage that all processes (all machines) share. Before the marker, a manifest of every file's size and sha256
is written (`integrity.py`). `latest` resolves to the newest complete checkpoint that is intact,
with a warning naming each broken newer one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import read_json_file
from ..errors import CheckpointError
from ..output_dir import writing_to
from .integrity import MANIFEST_NAME, check_files, write_manifest

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
STATE_NAME = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` to a hidden temporary name next to `path`, then rename it to `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no partial file behind
        raise


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
    A failed write (a full disk) is an `OutputDirError` naming `final` and the cause; `tmp` is then removed and
    the checkpoints saved before stay as they were.
    """
    try:
        with writing_to(final, "the checkpoint"):
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
                atomic_write(tmp / MANIFEST_NAME, lambda p: write_manifest(tmp, p))
                atomic_write(tmp / MARKER, lambda p: p.write_text(marker))
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class CheckpointLayout:
    """What a recipe's checkpoint holds: `state_keys` in its trainer state, and the files `required_files(state)`."""

    name: str
    state_keys: tuple[str, ...]
    required_files: Callable[[dict[str, Any]], Iterable[str]]


def check_checkpoint(folder: Path, layout: CheckpointLayout) -> dict[str, Any]:
    """Its trainer state if `folder` is an intact `layout` checkpoint, else a CheckpointError naming the broken or
    missing file and why."""
    path = folder / STATE_NAME
    state = read_json_file(path)
    keys = layout.state_keys
    missing = [key for key in keys if key not in state] if isinstance(state, dict) else list(keys)
    if missing:
        raise CheckpointError(f"{path} is corrupted: no {', '.join(missing)} in it")
    try:
        required = list(layout.required_files(state))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupted: {err!r} when reading the files it needs") from err
    check_files(folder, [STATE_NAME, *required])
    return state


def resolve_checkpoint(output_dir: str | os.PathLike, which: str, layout: CheckpointLayout) -> Path:
    """`--resume_from_checkpoint which`: "latest" or a checkpoint folder, an intact `layout` checkpoint.

    "latest" is the newest complete checkpoint under `output_dir` that is intact; each newer broken one is skipped
    with a warning naming it, the broken file and why. A folder named explicitly gets no fallback.
    """
    if which == "latest":
        broken = []
        for _, path in reversed(complete_checkpoints(output_dir)):
            try:
                check_checkpoint(path, layout)
            except CheckpointError as err:
                logger.warning("checkpoint %s is broken, trying the one before it: %s", path, err)
                broken.append(str(err))
                continue
            return path
        if broken:
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no intact checkpoint in {output_dir}/{CHECKPOINTS}: "
                + "; ".join(broken)
            )
        raise CheckpointError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}/{CHECKPOINTS}")
    path = Path(which)
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {which}: no such folder (or pass 'latest')")
    if not (path / MARKER).is_file():
        raise CheckpointError(f"--resume_from_checkpoint {which}: not a complete checkpoint folder (no {MARKER} file)")
    check_checkpoint(path, layout)
    return path


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete all but the newest `total_limit` complete checkpoints (none when it is None or < 1); the deleted."""
    if total_limit is None or total_limit < 1:
        return []
    removed = [path for _, path in complete_checkpoints(output_dir)[:-total_limit]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
