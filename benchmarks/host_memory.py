"""glibc's malloc keeping freed memory (the recipes' default on CPU) against its own defaults (`--malloc_defaults`),
side by side: the recipe's no-flag job at one budget, with each setting in turn.

    python benchmarks/host_memory.py [--budget 500x32] [--repeats 3] [--jobs 1] [--work_dir DIR] [ANY RECIPE FLAG ...]

Each repeat launches the two runs, `accelerate launch recipes/transfer.py` with no flags of its own (one CPU thread
each), the same budget and seed: one after the other with `--jobs 1` (a user's job alone on the machine), or both
at once with `--jobs 2` (one core each on a 2-core machine, as `default_job.py` runs). The setting that goes first
alternates over the repeats. Per run: the wall time of the whole command, the training loop's steps per second, and
the minor page faults and system CPU seconds of the launch (os.wait4's resource usage, which counts the recipe
process it waited for). Reported: each setting's medians, and the paired ratios kept / defaults of wall time and of
steps per second (`_common.paired_ratios`). Keeping memory moves where tensors live, not what they hold: the two
runs' final accuracy and NLL must be equal, and the script fails if they are not. The runs' folders go to
--work_dir (default: a temporary folder), one per repeat and setting. The last line printed is JSON with the
figures and the git commit, also written to benchmarks/results/host_memory-<budget>-r<repeats>-jobs<J>[-<recipe
flags>].json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import add_results_arguments, paired_ratios, publish, require_at_least, results_name, results_path
from default_job import job_command, launch_recipe, parse_budget, recipe_flags_setting

SETTINGS = {"kept": [], "defaults": ["--malloc_defaults"]}  # the recipe flags of each setting
SEED = 0


def launch(folder: Path, command: list[str]) -> dict:
    """Run `command` in `folder`; its wall time, page faults and system time, and the recipe's results."""
    folder.mkdir(parents=True)
    wall, usage, results = launch_recipe(command, folder, unset=("OMP_NUM_THREADS", "GLIBC_TUNABLES"))
    return {
        "wall_s": round(wall, 1),
        "train_steps_per_second": results["train_steps_per_second"],
        "minor_page_faults": usage.ru_minflt,
        "system_s": round(usage.ru_stime, 1),
        "eval_accuracy": results["eval_accuracy"],
        "eval_nll": results["eval_nll"],
    }


def repeat_pair(work_dir: Path, budget: tuple[int, int], repeat: int, jobs: int, extra: list[str]) -> dict[str, dict]:
    """Both settings, `jobs` at a time; the one that goes first alternates over the repeats."""
    order = list(SETTINGS) if repeat % 2 == 0 else list(reversed(SETTINGS))

    def run(setting: str) -> dict:
        folder = work_dir / f"repeat{repeat}-{setting}"
        return launch(folder, job_command(budget, "metaperturb", SEED, folder / "output", [*extra, *SETTINGS[setting]]))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {setting: pool.submit(run, setting) for setting in order}
        pair = {setting: future.result() for setting, future in futures.items()}
    for key in ("eval_accuracy", "eval_nll"):
        if pair["kept"][key] != pair["defaults"][key]:
            raise SystemExit(f"repeat {repeat}: {key} differs between the settings: {pair}")
    print(f"repeat {repeat}: {json.dumps(pair)}", file=sys.stderr)
    return pair


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Other flags go to the recipe as they are.", allow_abbrev=False
    )
    parser.add_argument("--budget", type=parse_budget, default=(500, 32), help="STEPSxIMAGE_SIZE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="1: one run after the other; 2: at once")
    parser.add_argument("--work_dir", type=Path, default=None, help="the runs' folders (default: a temporary one)")
    add_results_arguments(parser)
    args, extra = parser.parse_known_args()
    require_at_least(parser, args, repeats=1)
    for flag in ("--max_train_steps", "--image_size", "--seed", "--regularizer", "--output_dir", "--malloc_defaults"):
        if any(e == flag or e.startswith(flag + "=") for e in extra):
            parser.error(f"{flag} is set by this script")
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="host_memory-"))
    if work_dir.exists() and any(work_dir.iterdir()):
        parser.error(f"--work_dir {work_dir} is not empty: the runs are not reused, give an empty or new folder")

    pairs = [repeat_pair(work_dir, args.budget, r, args.jobs, extra) for r in range(args.repeats)]
    runs = {setting: [pair[setting] for pair in pairs] for setting in SETTINGS}
    medians = {
        setting: {key: statistics.median(run[key] for run in done) for key in done[0]} for setting, done in runs.items()
    }

    def kept_and_defaults(key: str) -> tuple[list[float], list[float]]:
        return [run[key] for run in runs["kept"]], [run[key] for run in runs["defaults"]]

    figures = {
        "budget": f"{args.budget[0]}x{args.budget[1]}",
        "runs": runs,
        "medians": medians,
        "wall_kept_vs_defaults": paired_ratios(*kept_and_defaults("wall_s")),
        "steps_per_second_kept_vs_defaults": paired_ratios(*kept_and_defaults("train_steps_per_second")),
        "recipe_flags": extra,
        "jobs": args.jobs,
        "launcher": "accelerate launch (no flags of its own): one CPU thread per run",
    }
    for setting, m in medians.items():
        print(
            f"{setting:>8}: wall {m['wall_s']:.1f} s, {m['train_steps_per_second']:.2f} steps/s, "
            f"{m['minor_page_faults']:,.0f} minor faults, {m['system_s']:.1f} s system",
            file=sys.stderr,
        )
    print(f"kept / defaults: wall ×{figures['wall_kept_vs_defaults']['ratio']:.3f}", file=sys.stderr)
    name = results_name(
        "host_memory", figures["budget"], f"r{args.repeats}", f"jobs{args.jobs}", recipe_flags_setting(extra)
    )
    publish("host_memory", figures, results_path(args, name))


if __name__ == "__main__":
    main()
