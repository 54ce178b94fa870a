"""The benchmark scripts' tests: benchmarks/ on sys.path (the scripts import `_common` as a sibling, and the tests
import the scripts), and `run_script`, which runs one with its results written into a tmp folder."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from _common import ROOT  # noqa: E402


def is_a_commit(text: str) -> bool:
    """Whether `text` is what `_common.git_commit` gives: a commit of this repository (another may have become
    HEAD since), with -dirty when tracked files differed from it."""
    match = re.fullmatch(r"([0-9a-f]{40})(-dirty)?", text)
    if match is None:
        return False
    exists = subprocess.run(["git", "cat-file", "-e", match[1] + "^{commit}"], cwd=ROOT, capture_output=True)
    return exists.returncode == 0


@pytest.fixture
def commit_check():
    return is_a_commit


@pytest.fixture
def run_script(tmp_path):
    """run(script, *args) -> (the printed record, the results file): the script must succeed, print its record as
    the last line and write the same record, with the git commit, into tmp_path/results (never the repo's)."""

    def run(script: str, *args: str, timeout: int = 600) -> tuple[dict, Path]:
        results = tmp_path / "results"
        command = [sys.executable, str(BENCHMARKS / script), *map(str, args), "--results_dir", str(results)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]
        printed = json.loads(done.stdout.strip().splitlines()[-1])
        files = sorted(results.glob("*.json"))
        assert len(files) == 1 and not list(results.glob(".*.tmp")), files
        written = json.loads(files[0].read_text())
        assert written == printed and is_a_commit(written["commit"]), (written["commit"], printed == written)
        assert written["command"][0] == f"benchmarks/{script}" and written["host"]["cpu_count"] >= 1
        return written, files[0]

    return run
