"""The kernels' C sources: package data, one ABI version, a cache key over every file, errors at real lines."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

from mp_hub.kernels import build, sources
from mp_hub.kernels.sources import KernelBuildError

ROOT = Path(__file__).resolve().parents[2]
PADDED_REFERENCE = Path(__file__).parent / "padded_reference.c"


@pytest.fixture
def compiler():
    cc = build._compiler()
    if cc is None:
        pytest.skip("no C compiler here")
    return cc


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """A copy of csrc/ that the build uses instead of the package's."""
    folder = tmp_path / "csrc"
    shutil.copytree(sources.SOURCE_DIR, folder)
    monkeypatch.setattr(sources, "SOURCE_DIR", folder)
    monkeypatch.setattr(sources, "MAIN_SOURCE", folder / sources.MAIN_SOURCE.name)
    return folder


def test_the_abi_version_is_defined_once_in_python_and_passed_to_the_compiler():
    text = "\n".join(p.read_text() for p in sources.source_files())
    assert not re.search(r"#\s*define\s+MP_ABI_VERSION", text)
    assert "int mp_abi_version(void) { return MP_ABI_VERSION; }" in text
    assert f"-DMP_ABI_VERSION={build.ABI_VERSION}" in build._defines()


def test_the_header_declares_every_bound_kernel_with_its_argument_count():
    header = (sources.SOURCE_DIR / "mp_kernels.h").read_text()
    declared = {
        name: 0 if args.strip() == "void" else args.count(",") + 1
        for name, args in re.findall(r"^\w[\w\s\*]*?\b(mp_\w+)\(([^)]*)\);", header, re.M)
    }
    assert declared == {name: len(argtypes) for name, (argtypes, _) in build.SIGNATURES.items()}


def test_the_cache_key_changes_with_every_source_file_and_the_generated_table(source_copy, compiler, monkeypatch):
    flags = build._FLAG_SETS[-1]
    base = build.library_name(compiler, flags)
    assert build.library_name(compiler, flags) == base
    for path in sorted(source_copy.iterdir()):
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert build.library_name(compiler, flags) != base, path.name
        path.write_bytes(original)
    assert build.library_name(compiler, flags) == base
    (source_copy / "new_part.h").write_text("// an added header\n")
    assert build.library_name(compiler, flags) != base
    (source_copy / "new_part.h").unlink()
    monkeypatch.setattr(sources, "ESP_TABLE", tuple(row[:-1] + (row[-1] + 1.0,) for row in sources.ESP_TABLE))
    assert build.library_name(compiler, flags) != base
    assert build.library_name(compiler, flags, PADDED_REFERENCE) != base


def test_a_compile_error_names_the_real_source_file_and_line(source_copy, compiler, tmp_path):
    site = source_copy / "site.c"
    lines = site.read_text().splitlines()
    lines.insert(10, "this is not C;")
    site.write_text("\n".join(lines) + "\n")
    with pytest.raises(KernelBuildError, match=r"site\.c:11:") as info:
        build._compile(compiler, build._FLAG_SETS[-1], tmp_path / "out" / "broken.so")
    assert str(source_copy) in str(info.value)


def test_missing_sources_fall_back_to_the_eager_path_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAIN_SOURCE", tmp_path / "absent" / "kernels.c")
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("MP_HUB_KERNEL_CACHE", str(tmp_path / "cache"))
    assert build.load() is None
    assert "kernel sources are missing" in build.load_error()


def test_the_padded_reference_is_built_for_tests_only(compiler):
    lib = build.load()
    if lib is None:
        pytest.skip(f"fused kernels unavailable here: {build.load_error()}")
    assert not hasattr(lib, "mp_forward")  # the shipped library: the sites' kernels only
    assert "mp_forward(" not in "".join(p.read_text() for p in sources.source_files())
    reference = build.load_extended(PADDED_REFERENCE, {"mp_forward": "mp_forward_stacked"})
    assert reference.mp_forward.argtypes == build.SIGNATURES["mp_forward_stacked"][0]
    with pytest.raises(KernelBuildError, match="no kernel named 'mp_nothing'"):
        build.load_extended(PADDED_REFERENCE, {"mp_forward": "mp_nothing"})


def test_package_data_covers_every_kernel_source():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data.get("mp_hub.kernels", []) + package_data.get("*", [])
    base = sources.SOURCE_DIR.parent
    for path in sources.source_files():
        assert any(fnmatch(path.relative_to(base).as_posix(), p) for p in patterns), path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel of the package, built from a copy of the project (the build writes build/ and egg-info there)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    project = tmp / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "mp_hub", project / "mp_hub", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), "."]
    subprocess.run(cmd, cwd=project, check=True, capture_output=True, timeout=600)
    return next(tmp.glob("mp_hub-*.whl"))


def test_the_wheel_ships_the_kernel_sources_and_not_the_test_reference(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"mp_hub/kernels/csrc/{p.name}" for p in sources.source_files()}
    assert shipped <= names, shipped - names
    assert not [n for n in names if n.endswith("padded_reference.c")]


@pytest.mark.slow
def test_an_installed_wheel_builds_and_loads_the_kernels(wheel, tmp_path, compiler):
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    probe = (
        "import json, mp_hub\n"
        "from mp_hub.kernels import build, sources\n"
        "lib = build.load()\n"
        "print(json.dumps({'package': mp_hub.__file__, 'sources': str(sources.SOURCE_DIR), "
        "'error': build.load_error(), 'abi': lib and lib.mp_abi_version()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "MP_HUB_KERNEL_CACHE": str(tmp_path / "cache")}
    run = dict(env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # cwd: not the checkout
    proc = subprocess.run([sys.executable, "-c", probe], **run)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["package"].startswith(str(target)) and report["sources"].startswith(str(target))
    assert report["error"] is None and report["abi"] == build.ABI_VERSION
