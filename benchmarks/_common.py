"""What every benchmark shares: the git commit its figures belong to, the thread flags, the timing loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# glibc's malloc hands freed blocks of >= 128 KiB back to the OS and page-faults them in again on the next
# allocation; with these settings it keeps them (what a caching allocator such as jemalloc does)
KEEP_FREED_MEMORY = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"


def apply_process_flags() -> None:
    """The flags that act on the process, not on the script: call first, before importing torch.

    --keep-freed-memory runs this script again under GLIBC_TUNABLES=KEEP_FREED_MEMORY (glibc reads its tunables
    only at process start); --omp-passive sets OMP_WAIT_POLICY=PASSIVE (read when the OpenMP runtime starts)."""
    if "--keep-freed-memory" in sys.argv and os.environ.get("GLIBC_TUNABLES") != KEEP_FREED_MEMORY:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": KEEP_FREED_MEMORY})
    if "--omp-passive" in sys.argv:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def add_thread_arguments(parser) -> None:
    """--threads, --omp-passive and --keep-freed-memory (the last two applied by `apply_process_flags`)."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="OMP_WAIT_POLICY=PASSIVE: on an oversubscribed machine, spinning OpenMP threads make steps bimodal",
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc malloc keeps freed memory (no page faults on reallocation; see KEEP_FREED_MEMORY)",
    )


def require_at_least(parser, args, **lows: int) -> None:
    """parser.error naming the flag for each int argument below its least value: `lows` maps argparse dest
    names (threads=1, warmup=0, ...) to that value."""
    for dest, low in lows.items():
        value = getattr(args, dest)
        if value < low:
            parser.error(f"--{dest.replace('_', '-')} must be >= {low}, got {value}")


def environment() -> dict:
    """What the figures depend on besides the code: for the final JSON line."""
    return {
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }


def git_commit() -> str:
    """HEAD's hash, with "-dirty" when tracked files differ from it (the figures then include uncommitted code)."""
    try:
        run = {"cwd": ROOT, "capture_output": True, "text": True}
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def time_interleaved(variants: dict, warmup: int, repeats: int, settle: int = 0) -> dict[str, float]:
    """Median wall and CPU milliseconds of each callable, run in turn within every round (so that load on a
    shared machine falls on all variants alike): {"<name>_ms": ..., "<name>_cpu_ms": ...}, and
    "<name>_paired_ratio": the median over rounds of its wall time over the first variant's in the same round
    (a slow phase of the host then cancels out instead of shifting one median more than another), with the
    quartiles of those per-round ratios, "<name>_paired_q25" and "<name>_paired_q75": how far to trust it.
    settle: untimed calls of a variant right before each timed one, so that the timed call follows a call of
    its own kind (as in a loop that runs only that variant) rather than another variant's."""
    import statistics
    import time

    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for i in range(warmup + repeats):
        for name, fn in variants.items():
            for _ in range(settle if i >= warmup else 0):
                fn()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if i >= warmup:
                wall[name].append(1e3 * (time.perf_counter() - t0))
                cpu[name].append(1e3 * (time.process_time() - c0))
    out = {}
    first = next(iter(variants))
    for name in variants:
        out[f"{name}_ms"] = statistics.median(wall[name])
        out[f"{name}_cpu_ms"] = statistics.median(cpu[name])
        ratios = [t / b for t, b in zip(wall[name], wall[first])]
        out[f"{name}_paired_ratio"] = statistics.median(ratios)
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out[f"{name}_paired_q25"], out[f"{name}_paired_q75"] = quartiles[0], quartiles[2]
    return out
