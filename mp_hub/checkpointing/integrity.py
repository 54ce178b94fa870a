"""Is a checkpoint folder intact? Checked against its manifest, and each file by its structure.

At save time `MANIFEST.json` (every file's size and sha256) is written after all other files of the checkpoint
and before its `COMPLETE` marker. At resume every listed file must still have that size and digest. Every file is
also checked by its structure, which is all a checkpoint saved without a manifest gets: a JSON file parses, a
safetensors header parses and its tensors' byte ranges cover the file exactly, a torch file (a zip archive) opens;
without a manifest, each zip member's CRC is checked too.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..config import read_json_file
from ..errors import CheckpointError

MANIFEST_NAME = "MANIFEST.json"
TORCH_SUFFIXES = (".pt", ".bin", ".pkl")  # torch.save archives (accelerate names them .bin and .pkl)


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def checkpoint_files(folder: Path) -> list[str]:
    """The files under `folder` as relative POSIX names, sorted; hidden (temporary) names are not part of it."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def write_manifest(folder: Path, target: Path) -> None:
    """Write to `target` the size and sha256 of every file now in `folder` (the manifest itself excluded)."""
    files = {
        name: {"size": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)}
        for name in checkpoint_files(folder)
        if name != MANIFEST_NAME
    }
    target.write_text(json.dumps({"format_version": 1, "files": files}, indent=1))


def check_manifest(folder: Path) -> None:
    """Every file `folder/MANIFEST.json` lists is present with its recorded size and sha256."""
    path = folder / MANIFEST_NAME
    manifest = read_json_file(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(r, dict) and {"size", "sha256"} <= r.keys() for r in files.values()
    ):
        raise CheckpointError(f"{path} is corrupted: expected {{'files': {{name: {{'size', 'sha256'}}}}}}")
    for name, record in files.items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (listed in {MANIFEST_NAME})")
        size = file.stat().st_size
        if size != record["size"]:
            raise CheckpointError(f"{file} is truncated or corrupted: {size} bytes, {record['size']} when saved")
        if sha256_of(file) != record["sha256"]:
            raise CheckpointError(f"{file} is corrupted: its sha256 differs from the one recorded when saved")


def check_structure(path: Path, *, deep: bool) -> None:
    """`path` parses as what its name says it is; `deep` also checks the CRC of each member of a torch archive."""
    if path.suffix == ".json":
        read_json_file(path)
    elif path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt"):  # validates the header and that tensors cover the file
                pass
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is truncated or corrupted (not a valid safetensors file: {err})") from err
    elif path.suffix in TORCH_SUFFIXES:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip() if deep else None
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise CheckpointError(f"{path} is truncated or corrupted (not a valid torch archive: {err})") from err
        if bad is not None:
            raise CheckpointError(f"{path} is corrupted (its member {bad} fails its CRC check)")


def check_files(folder: Path, required: Iterable[str]) -> None:
    """Raise a CheckpointError naming the first missing or broken file of `folder` and why."""
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: {', '.join(missing)} missing")
    has_manifest = (folder / MANIFEST_NAME).is_file()
    if has_manifest:
        check_manifest(folder)
    for name in checkpoint_files(folder):
        check_structure(folder / name, deep=not has_manifest)
