"""The recipes' checkpoints, in one place: atomic, resumable folders (`folder.py`), their manifest and file checks
(`integrity.py`), and what each recipe keeps in them (`layouts.py`).

    path = resolve_checkpoint(output_dir, "latest", TRANSFER_LAYOUT)   # the newest intact one (or META_TRAIN_LAYOUT)
"""

from .folder import (
    CHECKPOINTS,
    MARKER,
    STATE_NAME,
    CheckpointLayout,
    atomic_write,
    check_checkpoint,
    complete_checkpoints,
    prune_checkpoints,
    resolve_checkpoint,
    write_checkpoint_folder,
)
from .integrity import MANIFEST_NAME, check_files, write_manifest
from .layouts import (
    META_TRAIN_LAYOUT,
    TRANSFER_LAYOUT,
    load_meta_train_checkpoint,
    load_transfer_checkpoint,
    save_meta_train_checkpoint,
    save_transfer_checkpoint,
)

__all__ = [
    "CHECKPOINTS",
    "MANIFEST_NAME",
    "MARKER",
    "META_TRAIN_LAYOUT",
    "STATE_NAME",
    "TRANSFER_LAYOUT",
    "CheckpointLayout",
    "atomic_write",
    "check_checkpoint",
    "check_files",
    "complete_checkpoints",
    "load_meta_train_checkpoint",
    "load_transfer_checkpoint",
    "prune_checkpoints",
    "resolve_checkpoint",
    "save_meta_train_checkpoint",
    "save_transfer_checkpoint",
    "write_checkpoint_folder",
    "write_manifest",
]
