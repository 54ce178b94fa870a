"""The kernel cache loads only this user's own libraries, with the digest recorded when they were built.

The real kernels are compiled once per module; elsewhere the compile step copies that build (the tests are about
which folder and which file may be loaded, not about the compiler).
"""

import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from mp_hub.kernels import build, cache

PLANTED_C = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("the planted constructor ran", f); fclose(f); }
}
int mp_abi_version(void) { return 11; }
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The real kernels, built once by the real compile step into a fresh cache folder: (library, compiler)."""
    cc = build._compiler()
    if cc is None:
        pytest.skip("no C compiler here: the cache is never used")
    folder = tmp_path_factory.mktemp("real_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MP_HUB_KERNEL_CACHE", str(folder))
        mp.setattr(build, "_state", {})
        assert build.load() is not None, build.load_error()
        library = Path(build.build_info()["path"])
    return library, cc


@pytest.fixture
def fresh(monkeypatch, pristine):
    """A process that has loaded no kernels yet; its compile step copies the pristine build. Returns the calls."""
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setattr(cache, "_warned", set())
    monkeypatch.delenv("MP_HUB_KERNEL_CACHE", raising=False)
    calls = []

    def copy_pristine(cc, flags, out):
        calls.append(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent)
        os.close(fd)
        shutil.copyfile(pristine[0], tmp)
        cache.install(Path(tmp), out)

    monkeypatch.setattr(build, "_compile", copy_pristine)
    return calls


def expected_library(folder: Path, pristine) -> Path:
    return folder / build.library_name(pristine[1], build._FLAG_SETS[0])


def private_cache(tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    return folder


def plant(tmp_path: Path, target: Path) -> Path:
    """A library whose constructor writes a marker file, compiled to `target`; returns the marker's path."""
    marker = tmp_path / "constructor_ran"
    src = tmp_path / "planted.c"
    src.write_text(PLANTED_C)
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(src), "-o", str(target)], check=True)
    return marker


def test_the_real_build_records_its_digest_and_is_reused_without_rebuilding(pristine, fresh, monkeypatch):
    library, _ = pristine
    assert cache.library_problem(library) is None
    assert stat.S_IMODE(library.parent.stat().st_mode) == 0o700
    assert not [p for p in library.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    monkeypatch.setenv("MP_HUB_KERNEL_CACHE", str(library.parent))
    assert build.load() is not None and fresh == []
    assert build.build_info()["path"] == str(library)


def test_a_planted_library_with_a_wrong_digest_is_rebuilt_and_its_constructor_never_runs(
    tmp_path, fresh, pristine, monkeypatch, caplog
):
    folder = private_cache(tmp_path)
    target = expected_library(folder, pristine)
    shutil.copyfile(pristine[0], target)
    cache.digest_path(target).write_text(hashlib.sha256(pristine[0].read_bytes()).hexdigest())  # the real build's
    marker = plant(tmp_path, target)  # ... then the library is swapped
    monkeypatch.setenv("MP_HUB_KERNEL_CACHE", str(folder))
    with caplog.at_level(logging.WARNING):
        lib = build.load()
    assert not marker.exists()
    assert lib is not None and lib.mp_abi_version() == build.ABI_VERSION and fresh == [target]
    assert target.read_bytes() == pristine[0].read_bytes() and cache.library_problem(target) is None
    assert "differs from the one recorded" in caplog.text and str(target) in caplog.text
    # the probe is real: loading the planted library does run its constructor
    plant(tmp_path, tmp_path / "probe.so")
    build.ctypes.CDLL(str(tmp_path / "probe.so"))
    assert marker.exists()


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777], ids=lambda mode: f"{mode:o}")
def test_a_group_or_world_writable_cache_folder_is_refused_for_a_private_temporary_one(
    tmp_path, fresh, pristine, monkeypatch, caplog, mode
):
    folder = private_cache(tmp_path)
    target = expected_library(folder, pristine)
    marker = plant(tmp_path, target)
    cache.install(Path(shutil.copy(target, folder / "tmp.so")), target)  # another user wrote the digest too
    os.chmod(folder, mode)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setenv("MP_HUB_KERNEL_CACHE", str(folder))
    with caplog.at_level(logging.WARNING):
        assert build.load() is not None
        build.cache_dir()  # asked again: still one warning
    assert not marker.exists() and sorted(p.name for p in folder.iterdir()) == before
    used = Path(build.build_info()["path"]).parent
    assert used == cache.private_folder() and used != folder
    assert used.name != f"mp_hub_kernels_{os.getuid()}" and used.parent == Path(tempfile.gettempdir())
    assert stat.S_IMODE(used.stat().st_mode) == 0o700 and used.stat().st_uid == os.getuid()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(folder) in warnings[0] and "writable by group or others" in warnings[0]


def test_a_cache_folder_owned_by_another_user_is_refused(tmp_path, fresh, pristine, monkeypatch, caplog):
    folder = private_cache(tmp_path)
    real_stat = os.stat

    def stat_as_if_owned_by_another_user(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if os.fspath(path) == str(folder):
            fields = list(st)
            fields[stat.ST_UID] = os.getuid() + 1
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(os, "stat", stat_as_if_owned_by_another_user)
    monkeypatch.setenv("MP_HUB_KERNEL_CACHE", str(folder))
    with caplog.at_level(logging.WARNING):
        assert build.load() is not None
    assert Path(build.build_info()["path"]).parent == cache.private_folder()
    assert not any(folder.iterdir())
    assert str(folder) in caplog.text and f"owned by uid {os.getuid() + 1}" in caplog.text


def test_a_group_writable_library_in_a_private_folder_is_rebuilt(tmp_path, fresh, pristine, monkeypatch):
    folder = private_cache(tmp_path)
    target = expected_library(folder, pristine)
    cache.install(Path(shutil.copy(pristine[0], folder / "tmp.so")), target)
    os.chmod(target, 0o775)
    monkeypatch.setenv("MP_HUB_KERNEL_CACHE", str(folder))
    assert build.load() is not None and fresh == [target]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_the_default_cache_folder_is_created_0700_whatever_the_umask(tmp_path, fresh, pristine, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    old = os.umask(0)
    try:
        assert build.load() is not None
    finally:
        os.umask(old)
    folder = tmp_path / "xdg" / "mp_hub" / "kernels"
    assert Path(build.build_info()["path"]).parent == folder and fresh == [expected_library(folder, pristine)]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(fresh[0].stat().st_mode) == 0o755


def test_a_library_without_a_recorded_digest_is_rebuilt(tmp_path, fresh, pristine, monkeypatch):
    folder = private_cache(tmp_path)
    target = expected_library(folder, pristine)
    shutil.copyfile(pristine[0], target)  # as a cache written before digests were recorded
    assert cache.library_problem(target) == cache.NO_DIGEST
    monkeypatch.setenv("MP_HUB_KERNEL_CACHE", str(folder))
    assert build.load() is not None and fresh == [target]
    assert cache.library_problem(target) is None


def test_a_failed_build_leaves_nothing_in_the_cache(tmp_path, pristine):
    folder = private_cache(tmp_path)
    with pytest.raises(RuntimeError, match="failed"):
        build._compile(pristine[1], ["-fno-such-flag-mp-hub"], folder / "broken.so")
    assert not any(folder.iterdir())


def test_without_a_compiler_the_eager_path_is_used(fresh, monkeypatch):
    monkeypatch.setattr(build, "_compiler", lambda: None)
    assert build.load() is None and "no C compiler" in build.load_error() and fresh == []
