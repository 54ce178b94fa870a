"""A run's output folder: held by one run at a time, checked writable before any work, failed writes typed.

`claim_output_dir` creates the folder, takes its lock `LOCK_NAME` (a `filelock.FileLock`, i.e. an flock, which
the kernel drops when its holder dies: a lock left by a killed run is simply taken over), records the holder
(pid, host, start time, command) in `HOLDER_NAME` for the message a second run gets, and writes and removes a
probe file. In a distributed run the main process does this and every process gets its outcome, so a refused
run stops on every process. `writing_to` turns a failed write (a full disk, a read-only file system; torch and
safetensors report these without an OSError) into an `OutputDirError` naming the path and the cause.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout
from safetensors import SafetensorError

from .errors import MetaPerturbError, OutputDirError, OutputDirInUseError

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

LOCK_NAME = ".mp_hub.lock"
HOLDER_NAME = ".mp_hub.lock.json"
PROBE_NAME = ".mp_hub.write-probe"
# Only a write fails with these: wherever in a run they happen, the output is what could not be written.
WRITE_ONLY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
# How torch.save (its C++ stream writer) and safetensors report a failed write, e.g. on a full disk.
TORCH_WRITE_FAILURES = ("iostream error", "unexpected pos", "PytorchStreamWriter failed", "file write failed")
SAFETENSORS_WRITE_FAILURES = ("Error while serializing: I/O error",)  # not a failed read
FIX = "make room on its disk (or make it writable), or choose another --output_dir"


def is_failed_write(err: BaseException, *, any_os_error: bool) -> bool:
    """Whether `err` is a failed write: any OSError if `any_os_error`, else one only a write gives."""
    if isinstance(err, MetaPerturbError):
        return False
    if isinstance(err, OSError):
        return any_os_error or err.errno in WRITE_ONLY_ERRNOS
    if isinstance(err, SafetensorError):
        return any(text in str(err) for text in SAFETENSORS_WRITE_FAILURES)
    if isinstance(err, RuntimeError):
        return any(text in str(err) for text in TORCH_WRITE_FAILURES)
    return False


def describe_failure(err: BaseException) -> str:
    """The OS reason of a failed write (torch's own words, said to be a failed write, when it gave no OSError)."""
    if isinstance(err, OSError) and err.errno is not None:
        name = f" ({err.filename})" if err.filename else ""
        return f"{os.strerror(err.errno)} [{errno.errorcode.get(err.errno, err.errno)}]{name}"
    if isinstance(err, OSError):
        return str(err)
    return f"the write failed ({type(err).__name__}: {err}; a full disk is the usual cause)"


def free_space(path: Path) -> str:
    """The free space (", N MiB free on its disk") of the nearest existing folder of `path`; empty if unknown."""
    for folder in (path, *path.parents):
        if folder.is_dir():
            try:
                return f", {shutil.disk_usage(folder).free / 2**20:.1f} MiB free on its disk"
            except OSError:
                return ""
    return ""


def write_error(path: Path, what: str, err: BaseException) -> OutputDirError:
    """An OutputDirError for the failed write `err` of `what` at `path` (keeping the OS errno, if any)."""
    error = OutputDirError(f"could not write {what} {path}: {describe_failure(err)}{free_space(path)}; {FIX}")
    error.errno = getattr(err, "errno", None)
    return error


@contextmanager
def writing_to(path: str | os.PathLike, what: str, *, any_os_error: bool = True) -> Iterator[None]:
    """Turn a failed write in the block (see `is_failed_write`) into an `OutputDirError` naming `what` at `path`."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:
        if not is_failed_write(err, any_os_error=any_os_error):
            raise
        raise write_error(Path(path), what, err) from err


def redacted_command(argv: Sequence[str]) -> str:
    """The command line `argv` with the value of every `--*token` flag hidden (the holder file is plain text)."""
    words = list(argv)
    for i, word in enumerate(words):
        flag, equals, _ = word.partition("=")
        if flag.startswith("--") and flag.endswith("token"):
            if equals:
                words[i] = f"{flag}=<hidden>"
            elif i + 1 < len(words):
                words[i + 1] = "<hidden>"
    return shlex.join(words)


def read_holder(folder: Path) -> dict | None:
    """The holder record of `folder`'s lock, or None if there is none (or it cannot be read)."""
    try:
        holder = json.loads((folder / HOLDER_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict | None) -> str:
    if holder is None:
        return "a run that has not recorded itself yet"
    return (
        f"pid {holder.get('pid')} on {holder.get('hostname')}, started {holder.get('started')}, "
        f"command: {holder.get('command')}"
    )


def write_holder(folder: Path) -> None:
    record = dict(
        pid=os.getpid(),
        hostname=socket.gethostname(),
        started=datetime.now().astimezone().isoformat(timespec="seconds"),
        command=redacted_command([sys.executable, *sys.argv]),
    )
    tmp = folder / f"{HOLDER_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, folder / HOLDER_NAME)  # a reader sees the old record or the new one, never half of one


def check_writable(folder: Path) -> None:
    """Create `folder` and write and remove a probe file in it, else an `OutputDirError` naming it and why."""
    probe = folder / f"{PROBE_NAME}.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        error = OutputDirError(f"output folder {folder} is not writable: {describe_failure(err)}; {FIX}")
        error.errno = err.errno
        raise error from err


def acquire(folder: Path, flag: str = "--output_dir") -> FileLock:
    """Check `folder` writable and take its lock, recording this process as the holder; refuse if it is held (the
    refusal names `flag`, the option that chose the folder)."""
    check_writable(folder)
    lock = FileLock(folder / LOCK_NAME)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise OutputDirInUseError(
            f"output folder {folder} is in use by another run ({describe_holder(read_holder(folder))}); "
            f"wait for it to finish or choose another {flag}"
        ) from None
    except OSError as err:
        raise write_error(folder / LOCK_NAME, "the lock file", err) from err
    previous = read_holder(folder)
    if previous is not None:  # a run that exits releases its lock and removes its record: this one was killed
        logger.warning(
            "output folder %s: taking over from a run that ended without releasing it (%s)",
            folder,
            describe_holder(previous),
        )
    try:
        write_holder(folder)
    except OSError as err:
        lock.release()
        raise write_error(folder / HOLDER_NAME, "the lock's holder record", err) from err
    return lock


def release(folder: Path, lock: FileLock) -> None:
    (folder / HOLDER_NAME).unlink(missing_ok=True)
    lock.release()


@contextmanager
def claim_output_dir(
    path: str | os.PathLike, accelerator: Accelerator | None = None, *, flag: str = "--output_dir"
) -> Iterator[Path]:
    """Hold the output folder `path` for the block: created, writable, and written by this run alone.

    A second claim (another run, or this process again) is refused with an `OutputDirInUseError` naming the
    holder (and `flag`, the option that chose the folder, in its advice); an unwritable folder is an
    `OutputDirError` naming it and why. With an `accelerator` of several processes, every process must enter
    together: the main process claims and every process raises its refusal.
    In the block, a write that fails for lack of space or a read-only file system is an `OutputDirError`.
    """
    folder = Path(path)
    is_main = accelerator is None or accelerator.is_main_process
    lock, refusal = None, None
    if is_main:
        try:
            lock = acquire(folder, flag)
        except (OutputDirError, OutputDirInUseError) as err:
            refusal = err
    if accelerator is not None and accelerator.num_processes > 1:
        # (type, message) of the main process's refusal, shared: no process goes on while another stops.
        shared = broadcast_object_list([(type(refusal), str(refusal)) if refusal is not None else None])[0]
        if refusal is None and shared is not None:
            refusal = shared[0](shared[1])
    if refusal is not None:
        raise refusal
    try:
        with writing_to(folder, "into the output folder", any_os_error=False):
            yield folder
    finally:
        if lock is not None:
            release(folder, lock)
