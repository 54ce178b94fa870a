"""What every benchmark shares: the git commit its figures belong to."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """HEAD's hash, with "-dirty" when tracked files differ from it (the figures then include uncommitted code)."""
    try:
        run = {"cwd": ROOT, "capture_output": True, "text": True}
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"
