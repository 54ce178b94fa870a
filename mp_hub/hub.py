"""Hub I/O: resolve a local dir, a zoo name or a Hub repo id to files; save / load strictly / push φ.

Loading reads safetensors only. A pickle (`.pth`, `.bin`) is refused here; `mp-hub convert-official`
is the one place that reads one, with `weights_only=True`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import zoo
from .cards import render_phi_card
from .config import CONFIG_NAME
from .errors import CheckpointError, NotCachedError

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pkl", ".ckpt")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in {"1", "ON", "YES", "TRUE"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve_file(
    id_or_dir: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    subfolder: str | None = None,
) -> Path:
    """Path of `filename` in a local directory, or downloaded (or found in the HF cache) from a Hub repo; in
    `subfolder` of either when given (several models in one repo or folder)."""
    local = Path(id_or_dir)
    if local.is_file():
        kind = "a pickle" if local.suffix in PICKLE_SUFFIXES else "a file"
        raise CheckpointError(
            f"{local} is {kind}, not a directory: pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}"
            + (" (convert an authors' .pth with `mp-hub convert-official PATH OUT_DIR`)" if kind == "a pickle" else "")
        )
    if local.is_dir():
        folder = local / subfolder if subfolder else local
        path = folder / filename
        if not path.is_file():
            raise CheckpointError(f"{folder} has no {filename}" + _pickle_hint(folder, filename))
        return path
    repo_id = str(id_or_dir)
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                subfolder=subfolder or None,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
                force_download=force_download,
                library_name="mp_hub",
            )
        )
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE is set" if _offline() else "local_files_only=True or the Hub is unreachable"
        raise NotCachedError(
            f"{_in_repo(filename, subfolder)} of '{repo_id}' is not in the local Hugging Face cache and {why}; "
            f"download it once online, or pass a local directory (no such directory: {local.resolve()})"
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise CheckpointError(f"could not get {_in_repo(filename, subfolder)} of Hub repo '{repo_id}': {err}") from err
    except ValueError as err:  # HFValidationError: not a valid repo id, and no such directory either
        raise CheckpointError(
            f"'{id_or_dir}' is neither an existing directory nor a valid Hub repo id ({err})"
        ) from err


def _in_repo(filename: str, subfolder: str | None) -> str:
    return f"{subfolder}/{filename}" if subfolder else filename


def _pickle_hint(directory: Path, filename: str) -> str:
    if filename != WEIGHTS_NAME:
        return ""
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return (
            f"; it holds {', '.join(pickles)}: mp_hub loads safetensors only "
            "(convert an authors' checkpoint with `mp-hub convert-official PATH OUT_DIR`)"
        )
    return ""


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors in `path`, every one finite: a saved NaN or inf would make every output NaN."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupted, truncated or not a safetensors file: {err}") from err
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if non_finite:
        raise CheckpointError(
            f"{path}: {', '.join(repr(k) for k in non_finite)} holds non-finite values (nan or inf): "
            "the state was saved from a diverged run, or the file was damaged"
        )
    return state


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `module`, refusing missing keys, unexpected keys and wrong shapes (named)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: missing keys {missing}, unexpected keys {unexpected}"
        )
    wrong = [
        f"{k}: expected {tuple(v.shape)}, got {tuple(state[k].shape)}"
        for k, v in expected.items()
        if v.shape != state[k].shape
    ]
    if wrong:
        raise CheckpointError(f"{source} has tensors of the wrong shape: " + "; ".join(wrong))
    bad_dtype = [
        f"{k}: expected {expected[k].dtype}, got {state[k].dtype}"
        for k in state
        if state[k].is_floating_point() != expected[k].is_floating_point()
    ]
    if bad_dtype:
        raise CheckpointError(f"{source} has tensors of the wrong kind (integer vs floating): " + "; ".join(bad_dtype))
    module.load_state_dict(state, strict=True)


def hub_client(token: str | None = None, api: HfApi | None = None) -> HfApi:
    """`api`, else an `HfApi` with `token`: one client for a push's calls."""
    return api or HfApi(token=token)


def create_hub_repo(
    repo_id: str, *, private: bool | None = None, token: str | None = None, api: HfApi | None = None
) -> str:
    """Create `repo_id` on the Hub unless it exists, and return its full id: a bare name ("my-model") lands in
    the namespace of the token's user, as `huggingface_hub` resolves it. `private` applies to a new repo only."""
    api = hub_client(token, api)
    return api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id


def upload_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str,
    token: str | None = None,
    branch: str | None = None,
    create_pr: bool = False,
    ignore_patterns: list[str] | None = None,
    api: HfApi | None = None,
):
    """Upload `folder` to the existing repo `repo_id` in one commit, on `branch` (created from the default branch
    unless it exists; with `create_pr` it must exist already) or as a pull request; returns the CommitInfo."""
    api = hub_client(token, api)
    if branch and not create_pr:
        api.create_branch(repo_id, branch=branch, token=token, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        token=token,
        revision=branch,
        create_pr=create_pr,
        ignore_patterns=ignore_patterns,
    )


def push_folder(
    save: Callable[[str, str], Any],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str,
    branch: str | None = None,
    create_pr: bool = False,
    api: HfApi | None = None,
):
    """Create the repo (a bare name: in the user's namespace), save into a temporary folder with
    `save(folder, full_repo_id)` (a card names the resolved repo) and upload it in one commit, on `branch` or as a
    pull request (`create_pr`); returns the CommitInfo."""
    api = hub_client(token, api)
    full_id = create_hub_repo(repo_id, private=private, token=token, api=api)
    with tempfile.TemporaryDirectory() as folder:
        save(folder, full_id)
        return upload_to_hub(
            folder, full_id, commit_message=commit_message, token=token, branch=branch, create_pr=create_pr, api=api
        )


def is_explicit_path(value: str | os.PathLike) -> bool:
    """A `pathlib.Path`, an absolute path, or a string with a path separator (`./name`): never a zoo name."""
    if not isinstance(value, str):
        return True
    separators = {os.sep, os.altsep} - {None}
    return os.path.isabs(value) or any(sep in value for sep in separators) or value in {".", ".."}


def source_of(pretrained: str | os.PathLike) -> str | os.PathLike:
    """Where `from_pretrained(pretrained)` reads from: a zoo entry by name, else the path or Hub id as given."""
    if is_explicit_path(pretrained):
        return pretrained
    source = zoo.resolve(pretrained)
    if source is None:
        return pretrained
    if Path(pretrained).exists():
        logger.warning(
            "'%s' is a zoo name: loading the zoo's φ, not the folder ./%s (pass './%s' to load that folder)",
            pretrained,
            pretrained,
            pretrained,
        )
    return source


class PhiHubMixin:
    """save_pretrained / from_pretrained / push_to_hub for φ. Strict, safetensors-only, card on every save."""

    def save_pretrained(self, save_directory: str | os.PathLike, *, card_extra: dict | None = None) -> Path:
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        # Write to temp names, then rename: a run killed mid-save never leaves a half-written φ.
        tmp_weights = directory / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(tmp_weights), metadata={"format": "pt", "library": "mp_hub"})
        os.chmod(tmp_weights, 0o666 & ~_umask())  # safetensors creates 0600; a saved model is meant to be shared
        self.config.save(directory)
        os.replace(tmp_weights, directory / WEIGHTS_NAME)
        (directory / CARD_NAME).write_text(render_phi_card(self.config, self.num_parameters(), **(card_extra or {})))
        logger.info("saved φ (%d parameters) to %s", self.num_parameters(), directory)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
    ):
        """Load φ from a zoo name (`mp-hub zoo`), a local dir or a Hub repo id; strict; eval mode.

        A zoo name wins over a same-named folder in the current directory; pass `./name` (or any path with a
        separator, or a `pathlib.Path`) to load the folder instead.
        """
        source = source_of(pretrained)
        hub_kwargs = dict(
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
        )
        config_path = resolve_file(source, CONFIG_NAME, **hub_kwargs)
        weights_path = resolve_file(source, WEIGHTS_NAME, **hub_kwargs)
        phi = cls(cls.config_class.from_json_file(config_path))
        load_state_dict_strict(phi, load_safetensors(weights_path), f"'{pretrained}' ({weights_path.name})")
        phi.source_id = str(pretrained)
        return phi.eval()

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload MetaPerturb φ with mp_hub",
        branch: str | None = None,
        create_pr: bool = False,
        card_extra: dict | None = None,
        api: HfApi | None = None,
    ):
        """Upload safetensors + config + card to `repo_id` (a bare name: in your namespace) in one commit, on
        `branch` or as a pull request (`create_pr`); `private` applies to a new repo; `card_extra` as in
        `save_pretrained` (the card's repo id is the resolved one). Returns the CommitInfo."""
        return push_folder(
            lambda folder, full_id: self.save_pretrained(folder, card_extra={**(card_extra or {}), "repo_id": full_id}),
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            branch=branch,
            create_pr=create_pr,
            api=api,
        )
