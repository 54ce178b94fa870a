"""Compile the fused site kernels (`csrc/`, see `sources.py`) with the system C compiler and load them with ctypes.

Why not `torch.utils.cpp_extension`: the kernels need no torch headers, and a plain C file builds in seconds
instead of the better part of a minute a torch extension takes, so the fast path can be on by default, even on a
fresh CI machine. The shared object links the same OpenMP runtime as torch (soname libgomp.so.1, already loaded by
torch), so both share one thread pool. Builds are cached under `$MP_HUB_KERNEL_CACHE` (default
`~/.cache/mp_hub/kernels`), keyed by a hash of every source file, the flags, the compiler and the CPU; a build is
written to a temporary name and renamed into place, so concurrent processes (pytest-xdist) are safe. Which cached
libraries may be loaded (this user's own, with the digest recorded at build time) is decided in `cache.py`.
The ABI version lives here only: it reaches the C code as -DMP_ABI_VERSION and comes back from mp_abi_version().
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from . import cache, sources
from .sources import KernelBuildError

logger = logging.getLogger(__name__)

ABI_VERSION = 13  # bump with any change to an exported signature (csrc/mp_kernels.h, SIGNATURES below)
# -fno-trapping-math / -fno-math-errno let gcc vectorise the selects and sqrt; no -ffast-math: the kernels rely
# on NaN comparisons (the non-finite check, the clamp) and on the order of the float operations as written.
_BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-fno-tree-loop-distribute-patterns"]
_FLAG_SETS = (
    ["-march=native", "-mprefer-vector-width=512", "-fopenmp"],
    ["-march=native", "-fopenmp"],
    ["-fopenmp"],
    ["-fopenmp-simd"],  # no OpenMP runtime (e.g. clang without libomp): single-threaded kernels
)

_P, _L, _F, _U, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_uint32, ctypes.c_int
SIGNATURES = {
    "mp_abi_version": ([], _I),
    "mp_has_masks": ([], _I),
    "mp_features": ([_P, _L, _L, _L, _L, _P, _L, _P, _P, _I, _I], _I),
    "mp_features_backward": ([_P, _P, _P, _L, _L, _L, _L, _P, _L, _P, _P, _I, _I], None),
    "mp_forward_stacked": ([_P, _P, _L, _L, _L, _L, _P, _P, _P, _P, _P, _F, _F, _I, _I, _P, _U, _U, _I, _I], None),
    "mp_backward": ([_P, _P, _P, _L, _L, _L, _L, _P, _P, _P, _P, _P, _F, _F, _I, _I, _P, _U, _U, _P, _P, _I, _I], None),
    "mp_scale_forward": ([_P, _L, _L, _L, _P, _P, _P, _F, _F, _F, _P, _P, _P], None),
    "mp_scale_backward": ([_P, _L, _L, _L, _P, _P, _P, _P, _P, _F, _F, _L, _P, _P], None),
    "mp_normal": ([_P, _L, _U, _U, _U], None),
}

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib" once loaded, "error" once failed (never retried in this process)


def cache_dir() -> Path:
    """$MP_HUB_KERNEL_CACHE, else ~/.cache/mp_hub/kernels (created 0700); a private temporary folder where that
    folder is not this user's alone (see `cache.trusted_folder`)."""
    env = os.environ.get("MP_HUB_KERNEL_CACHE")
    if env:
        return cache.trusted_folder(Path(env).expanduser())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return cache.trusted_folder(Path(base) / "mp_hub" / "kernels")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str] | None:
    """The CPU's feature flags as `cpuinfo` lists them ("flags" on x86, "Features" on Arm): what -march=native
    builds for. None where the file cannot be read (not Linux); empty where it has no such line."""
    try:
        with open(cpuinfo) as fh:
            line = next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        return None
    return line.split(":", 1)[-1].split()


def _cpu_signature() -> str:
    # -march=native output depends on the CPU: a cache shared between machines must not mix them up
    flags = cpu_flags()
    return " ".join(flags) if flags is not None else platform.processor()


@functools.cache
def _compiler_version(cc: str) -> str:
    return subprocess.run([cc, "--version"], capture_output=True, text=True).stdout


def _defines() -> list[str]:
    return [f"-DMP_ABI_VERSION={ABI_VERSION}"]


def library_name(cc: str, flags: list[str], extra: Path | None = None) -> str:
    """The cache file name of the kernels (plus the C file `extra`, see `load_extended`) built by `cc` with `flags`
    on this CPU: a hash of every source file's bytes, the compiler, the flags and the CPU."""
    digest = sources.source_digest((extra,) if extra else ())
    parts = [digest, cc, _compiler_version(cc), *_BASE_FLAGS, *flags, *_defines(), _cpu_signature()]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return f"mp_site_kernels_{extra.stem + '_' if extra else ''}{key[:20]}.so"


def _compile(cc: str, flags: list[str], out: Path, extra: Path | None = None) -> None:
    """Build `csrc/kernels.c` (or `extra`, which #includes it) into a temporary folder next to `out`, then install
    it with its digest (`cache.install`)."""
    main = Path(extra).resolve() if extra else sources.MAIN_SOURCE
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        (Path(tmp) / sources.GENERATED_HEADER).write_text(sources.esp_table_header())
        # run in the source's folder with its bare name: errors name the real files, and neither that folder nor
        # the temporary one reaches the binary (no debug info), so every build is byte-identical
        includes = ["-I", str(sources.SOURCE_DIR), "-I", tmp]
        cmd = [cc, *_BASE_FLAGS, *flags, *_defines(), *includes, main.name, "-o", str(Path(tmp) / out.name), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=main.parent)
        if proc.returncode != 0:
            raise KernelBuildError(f"{' '.join(cmd)} failed (run in {main.parent}):\n{proc.stderr[-2000:]}")
        cache.install(Path(tmp) / out.name, out)


def _bind(path: Path, signatures: dict | None = None) -> ctypes.CDLL:
    problem = cache.library_problem(path)
    if problem is not None:  # checked before CDLL: loading runs the library's constructors
        raise KernelBuildError(f"refusing to load {path}: {problem}")
    lib = ctypes.CDLL(str(path))
    for name, (argtypes, restype) in {**SIGNATURES, **(signatures or {})}.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    if lib.mp_abi_version() != ABI_VERSION:
        raise KernelBuildError(f"{path} has ABI {lib.mp_abi_version()}, expected {ABI_VERSION}")
    return lib


def _build_and_load() -> ctypes.CDLL:
    import torch  # noqa: F401  (torch's OpenMP runtime must be loaded first, so the kernels share it)

    cc = _compiler()
    if cc is None:
        raise KernelBuildError("no C compiler found (set CC, or install gcc)")
    folder, errors = cache_dir(), []
    for flags in _FLAG_SETS:
        try:
            path = folder / library_name(cc, flags)
            problem = cache.library_problem(path)
            if problem is not None:
                log = logger.info if problem in (cache.NOT_BUILT, cache.NO_DIGEST) else logger.warning
                log("compiling the fused MetaPerturb site kernels (%s) into %s: %s", " ".join(flags), path, problem)
                _compile(cc, flags, path)
            lib = _bind(path)
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as err:
            errors.append(f"[{' '.join(flags)}] {err}")
            continue
        if errors:  # slower code, but still exact: say why once
            logger.warning("fused kernels built with reduced flags %s after: %s", flags, "; ".join(errors)[-2000:])
        _state["flags"], _state["path"] = flags, path
        return lib
    raise KernelBuildError("\n".join(errors))


def load() -> ctypes.CDLL | None:
    """The compiled kernels, or None (after one warning) where they cannot be built in this process."""
    if "lib" in _state or "error" in _state:
        return _state.get("lib")  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = _build_and_load()
            except Exception as err:  # noqa: BLE001 - any failure means: use the eager path
                _state["error"] = str(err)
                logger.warning("fused MetaPerturb kernels unavailable, using the eager path: %s", err)
    return _state.get("lib")  # type: ignore[return-value]


def load_error() -> str | None:
    return _state.get("error")  # type: ignore[return-value]


def build_info() -> dict:
    """Where the loaded kernels live and with which flags (empty before `load()` or after a failure)."""
    lib = _state.get("lib")
    if lib is None:
        return {}
    return {"path": str(_state["path"]), "flags": list(_state["flags"]), "bit_masks": bool(lib.mp_has_masks())}


def load_extended(source: Path, signatures: dict[str, str | tuple[list, object]]) -> ctypes.CDLL:
    """The kernels plus the C file `source` (which `#include "kernels.c"`: one translation unit), built with the
    flags `load()` chose and cached like them. `signatures` gives `source`'s own exports: (argtypes, restype) as
    in `SIGNATURES`, or the name of an export of the kernels with the same signature.

    For tests and benchmarks that need kernels the library does not ship (the padded reference forward)."""
    if load() is None:
        raise KernelBuildError(f"the fused kernels cannot be built here: {load_error()}")
    unknown = [like for like in signatures.values() if isinstance(like, str) and like not in SIGNATURES]
    if unknown:
        raise KernelBuildError(f"no kernel named {unknown[0]!r} to copy a signature from; known: {sorted(SIGNATURES)}")
    own = {name: SIGNATURES[like] if isinstance(like, str) else like for name, like in signatures.items()}
    cc, flags, source = _compiler(), _state["flags"], Path(source)
    path = cache_dir() / library_name(cc, flags, source)
    if cache.library_problem(path) is not None:
        _compile(cc, flags, path, source)
    return _bind(path, own)
