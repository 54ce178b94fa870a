"""What every benchmark shares: the git commit its figures belong to, the thread flags, the timing loop, and
where its figures are written (`benchmarks/results/<name>.json`, see `publish`)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
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


def add_results_arguments(parser) -> None:
    """--results_dir (default benchmarks/results) and --results_file (a path that replaces the derived name)."""
    parser.add_argument(
        "--results_dir", "--results-dir", type=Path, default=RESULTS_DIR, help="folder of the results file"
    )
    parser.add_argument(
        "--results_file", "--results-file", type=Path, help="write the results here instead of <results_dir>/<name>"
    )


def results_name(benchmark: str, *settings: object) -> str:
    """`<benchmark>-<setting>-...json` from the settings that tell one configuration from another (falsy ones,
    i.e. defaults left out by the caller, are skipped): different configurations never share a file."""
    parts = [benchmark, *(str(s).replace("/", "_").replace(":", "") for s in settings if s)]
    return "-".join(parts) + ".json"


def phi_set_setting(names: list[str]) -> str:
    """The record name's part for a set of φs: `phi<count>_<hash of their names>` (folder names, not paths: the
    same set given from another folder keeps its name), so that a record of other φs never replaces this one."""
    digest = hashlib.sha256(json.dumps(sorted(names)).encode()).hexdigest()[:8]
    return f"phi{len(names)}_{digest}"


def seeds_setting(seeds: list[int]) -> str | None:
    """The record name's part for the seeds: `seeds<a>+<b>...`, or None for the benchmarks' default 0, 1, 2."""
    return None if seeds == [0, 1, 2] else "seeds" + "+".join(map(str, seeds))


def results_path(args, name: str) -> Path:
    """Where `publish` writes: --results_file if given, else --results_dir/`name`."""
    return args.results_file if args.results_file is not None else args.results_dir / name


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's widest vector extension the fused kernels use (`avx512`, `avx2`; `asimd` on Arm), from the flags
    in `cpuinfo`; None where they are not known. CPUs of one model name can differ in it (a virtual machine's
    "AMD EPYC" may or may not have AVX-512), and with it the kernels' speed."""
    from mp_hub.kernels.build import cpu_flags  # here: mp_hub loads torch, which a refused command should not wait for

    flags = set(cpu_flags(cpuinfo) or ())
    widest_first = (("avx512", "avx512f"), ("avx2", "avx2"), ("asimd", "asimd"))
    return next((isa for isa, flag in widest_first if flag in flags), None)


def host() -> dict:
    """The machine and runtime the figures were measured on."""
    import torch  # here: a script refusing its arguments should not wait for torch

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_name(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity) if affinity is not None else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename: a reader never sees a
    half-written file, and a killed run leaves the previous one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(fd, 0o644)  # mkstemp's 0600 would make a results file unreadable to others
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, obj) -> Path:
    """`obj` as indented JSON, written by `write_text_atomic`."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def script_path() -> str:
    """The running script as the repository root sees it (benchmarks/overhead.py), else as it was called."""
    script = Path(sys.argv[0]).resolve()
    return str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]


def device_slug(name: str) -> str:
    """A device's name as a part of a file name: `Intel(R) Xeon(R) Processor` → `intel_xeon_processor`."""
    words = re.sub(r"\((r|tm)\)", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "_", words).strip("_") or "unknown_device"


def measured_on(record: dict) -> str | None:
    """The device a record's figures were measured on: its `device_name` (a GPU's, where a benchmark ran on one),
    else its host's CPU with its vector extension where the record has it (`AMD EPYC (avx2)`; a record made before
    hosts recorded it names the CPU alone, so a new record of that name goes beside it rather than over it)."""
    machine = record.get("host") or {}
    cpu, isa = machine.get("cpu"), machine.get("cpu_isa")
    device = record.get("device_name") or cpu
    return f"{device} ({isa})" if device and device == cpu and isa else device  # a GPU's name stands alone


def recorded_device(path: Path) -> str | None:
    """`measured_on` of the record at `path`, or None where there is no record there (no file, or not a record)."""
    try:
        return measured_on(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError):
        return None


def record_path(path: Path, device: str, earlier: str | None) -> Path:
    """Where a record measured on `device` goes when `path` holds one measured on `earlier` (`recorded_device`):
    `path`, unless `earlier` is another device; then `<stem>-<device_slug(device)>.json` beside it. A rerun on the
    same device replaces its own figures, but one machine's figures never replace another's: the docs cite each
    machine's records by name."""
    path = Path(path)
    return path if earlier in (None, device) else path.with_name(f"{path.stem}-{device_slug(device)}{path.suffix}")


def publish(benchmark: str, figures: dict, path: Path) -> dict:
    """The benchmark's record: `figures` under its name, with the git commit, the command line, the host and a
    UTC timestamp; written (atomically) to `path`, or beside it where `path` holds another device's record
    (`record_path`), and printed as the last stdout line. Returns the record."""
    record = {
        "benchmark": benchmark,
        **figures,
        "commit": git_commit(),
        "command": [script_path(), *sys.argv[1:]],
        "host": host(),
        "utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    device, earlier = measured_on(record), recorded_device(path)
    target = record_path(path, device, earlier)
    if target != Path(path):
        print(f"{path} holds figures measured on {earlier}; these, measured on {device}, go beside it", file=sys.stderr)
    write_json_atomic(target, record)
    print(f"results written to {target}", file=sys.stderr)
    print(json.dumps(record), flush=True)
    return record


def paired_ratios(times: list[float], baseline: list[float]) -> dict[str, float]:
    """Median and quartiles of the per-round ratios times[i] / baseline[i] (rounds paired by index)."""
    import statistics

    if len(times) != len(baseline) or not times:
        raise ValueError(f"paired_ratios needs as many timings as baseline ones, at least one: {len(times)} vs "
                         f"{len(baseline)}")  # fmt: skip
    ratios = [t / b for t, b in zip(times, baseline)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"ratio": statistics.median(ratios), "q25": quartiles[0], "q75": quartiles[2]}


def git_commit() -> str:
    """HEAD's hash, with "-dirty" when tracked files differ from it (the figures then include uncommitted code)."""
    try:
        run = {"cwd": ROOT, "capture_output": True, "text": True}
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def time_interleaved(
    variants: dict, warmup: int, repeats: int, settle: int = 0, baselines: dict[str, str] | None = None
) -> dict[str, float]:
    """Median wall and CPU milliseconds of each callable, run in turn within every round (so that load on a
    shared machine falls on all variants alike): {"<name>_ms": ..., "<name>_cpu_ms": ...}, and
    "<name>_paired_ratio": the median over rounds of its wall time over the first variant's in the same round
    (a slow phase of the host then cancels out instead of shifting one median more than another), with the
    quartiles of those per-round ratios, "<name>_paired_q25" and "<name>_paired_q75": how far to trust it.
    baselines: {name: other variant} for more such ratios, "<name>_vs_<other>_paired_ratio" (and _q25, _q75).
    settle: untimed calls of a variant right before each timed one, so that the timed call follows a call of
    its own kind (as in a loop that runs only that variant) rather than another variant's."""
    import statistics
    import time

    for name, other in (baselines or {}).items():  # before any timing: a typo costs no run
        if name not in variants or other not in variants:
            raise ValueError(f"baselines pairs variants that are not timed: {name} with {other}")
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
        paired = paired_ratios(wall[name], wall[first])
        out[f"{name}_paired_ratio"], out[f"{name}_paired_q25"] = paired["ratio"], paired["q25"]
        out[f"{name}_paired_q75"] = paired["q75"]
    for name, other in (baselines or {}).items():
        paired = paired_ratios(wall[name], wall[other])
        for stat in ("ratio", "q25", "q75"):
            out[f"{name}_vs_{other}_paired_{stat}"] = paired[stat]
    return out
