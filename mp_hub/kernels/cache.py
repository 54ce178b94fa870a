"""Which cached kernel libraries may be loaded: `ctypes.CDLL` runs a library's constructors, so trust nothing planted.

A library is loaded only from a folder owned by this user and not writable by group or others, only when the
file itself passes the same check, and only when its sha256 equals the digest recorded next to it (a
`.sha256` sidecar) when this user built it. Anything else is rebuilt. A cache folder that fails the check is
not used at all: the kernels are built into a private temporary folder instead, never a predictable shared path.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DIGEST_SUFFIX = ".sha256"
# the harmless reasons to rebuild (first use, a cache from before digests were recorded): not worth a warning
NOT_BUILT = "it is not built yet"
NO_DIGEST = "no digest was recorded when it was built"
_warned: set[str] = set()
_private: list[Path] = []  # this process's private temporary folder, once made


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None  # no POSIX owners (Windows): only the digest is checked


def _owner_problem(st: os.stat_result, what: str) -> str | None:
    uid = _uid()
    if uid is not None and st.st_uid != uid:
        return f"{what} is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if uid is not None and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def folder_problem(path: Path) -> str | None:
    """Why the folder `path` may not hold libraries to load, or None where it may."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    problem = _owner_problem(st, "it")
    if problem is None and not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable by this user"
    return problem


def _make_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return  # an existing folder keeps its mode: `folder_problem` judges it
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask


def private_folder() -> Path:
    """A fresh folder only this user can use (mkdtemp: 0700, unpredictable name), removed when the process exits."""
    if not _private:
        path = Path(tempfile.mkdtemp(prefix="mp_hub_kernels_"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)  # the loaded library stays mapped after removal
        _private.append(path)
    return _private[0]


def trusted_folder(path: Path) -> Path:
    """`path` (created 0700 if missing) where it passes `folder_problem`; else, warned once, `private_folder()`."""
    path = Path(os.path.realpath(path))  # judge and use the folder itself, not a link that could be re-pointed
    try:
        _make_private(path)
        problem = folder_problem(path)
    except OSError as err:
        problem = f"it cannot be created or read ({err})"
    if problem is None:
        return path
    if str(path) not in _warned:
        _warned.add(str(path))
        logger.warning(
            "not loading fused kernels from the cache folder %s: %s. Building them into a private temporary folder "
            "instead (make the folder yours with mode 700, or set MP_HUB_KERNEL_CACHE to such a folder)",
            path,
            problem,
        )
    return private_folder()


def _read_own_file(path: Path, what: str) -> tuple[bytes | None, str | None]:
    """The bytes of `path` if it is this user's regular file, not writable by others (never through a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"{what} cannot be opened ({err})"
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, f"{what} is not a regular file"
        problem = _owner_problem(st, what)
        return (None, problem) if problem else (fh.read(), None)


def digest_path(library: Path) -> Path:
    return library.with_name(library.name + DIGEST_SUFFIX)


def library_problem(library: Path) -> str | None:
    """Why the cached `library` may not be loaded (see the module docstring), or None where it may."""
    data, problem = _read_own_file(library, "it")
    if problem or data is None:
        return problem or NOT_BUILT
    recorded, problem = _read_own_file(digest_path(library), "its digest file")
    if problem or recorded is None:
        return problem or NO_DIGEST
    actual = hashlib.sha256(data).hexdigest()
    if recorded.decode("ascii", "replace").strip() != actual:
        return f"its sha256 {actual} differs from the one recorded when it was built"
    return None


def install(built: Path, library: Path) -> str:
    """Move the freshly built `built` (same folder tree as `library`) into place with its digest; returns the digest.

    The digest is written first, each file by an atomic rename: a concurrent reader sees either the old pair, a
    mismatch (and rebuilds), or the new pair, never a half-written file.
    """
    os.chmod(built, 0o755)  # a loose umask must not leave it group-writable (it would then be refused)
    digest = hashlib.sha256(built.read_bytes()).hexdigest()
    fd, tmp = tempfile.mkstemp(dir=library.parent, prefix=".digest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(digest + "\n")
        os.replace(tmp, digest_path(library))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(built, library)
    return digest
