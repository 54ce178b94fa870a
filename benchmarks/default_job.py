"""The no-flag job at its default budget and at cheaper ones: how long `accelerate launch recipes/transfer.py` takes,
and whether the bundled φ's model is still one a user wants.

    python benchmarks/default_job.py [--budgets 2000x32 1300x28 1100x32] [--seeds 0 1] [--jobs 2]
        [--time_goal_s 240] [--work_dir DIR] [ANY RECIPE FLAG ...]

A budget STEPSxSIZE is `--max_train_steps STEPS --image_size SIZE`; every other flag is the recipe's default (the
shipped Fashion-MNIST tiny, batch 32, MC-20, the mean-mode calibration, two periodic evaluations), plus any
recipe flag given here. Each budget and seed runs twice, with the bundled φ and with `--regularizer none`, as
`accelerate launch` with no flags of its own (so one CPU thread per run, accelerate's default; OMP_NUM_THREADS is
removed from the runs' environment because accelerate would take its thread count from it). `--jobs` runs go at
once (2 on a 2-core machine: one core each, so each run's time is that of a one-thread run on a busy machine).

Figures per run: the wall time of the whole command (start-up, training, evaluation and saving) and the final
metrics. Per budget and seed, φ against none: the accuracy difference in points, and whether φ's model is "one
a user wants" (accuracy at most 1 point below none's, ECE and NLL lower) and finished within --time_goal_s.
A finished run is reused (its `job.json` in --work_dir); a run that did not finish is started again, and a second
script on the same --work_dir is refused while the first runs. Prints the table and a final JSON line with the git
commit, also written to benchmarks/results/default_job-<budgets>-seeds<...>-jobs<J>[-<recipe flags>].json
(--results_dir, --results_file; the recipe flags as `with_channels_last`, or `flags<digest>` where they do not
make a short, plain name).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import add_results_arguments, publish, require_at_least, results_name, results_path, write_json_atomic

from mp_hub.errors import OutputDirError, OutputDirInUseError
from mp_hub.output_dir import claim_output_dir

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "transfer.py"
REGULARIZERS = ("metaperturb", "none")
METRICS = ("eval_accuracy", "eval_ece", "eval_nll", "train_steps_per_second")
ACCURACY_SLACK = 0.01  # "accuracy within 1 point" of none's


def parse_budget(text: str) -> tuple[int, int]:
    """'2000x32' -> (2000, 32): steps and image size, both positive."""
    steps, sep, size = text.partition("x")
    if not sep or not steps.isdigit() or not size.isdigit() or int(steps) < 1 or int(size) < 1:
        raise argparse.ArgumentTypeError(f"a budget is STEPSxIMAGE_SIZE with both positive integers, got {text!r}")
    return int(steps), int(size)


def run_name(budget: tuple[int, int], regularizer: str, seed: int) -> str:
    return f"{budget[0]}x{budget[1]}-{regularizer}-seed{seed}"


def recipe_flags_setting(extra: list[str]) -> str | None:
    """The record name's part for the recipe flags given (None for none): readable where they are short and plain
    (`--channels_last` → `with_channels_last`), else a digest of them (the record lists them)."""
    if not extra:
        return None
    plain = "+".join(flag.removeprefix("--") for flag in extra)
    if len(plain) <= 48 and re.fullmatch(r"[A-Za-z0-9_.=+-]+", plain):
        return "with_" + plain
    return "flags" + hashlib.sha1("\0".join(extra).encode()).hexdigest()[:8]


def job_command(budget: tuple[int, int], regularizer: str, seed: int, output_dir: Path, extra: list[str]):
    """`accelerate launch recipes/transfer.py` with the budget's flags and nothing of accelerate's own."""
    steps, size = budget
    flags = ["--max_train_steps", str(steps), "--image_size", str(size), "--seed", str(seed)]
    flags += ["--regularizer", regularizer, "--output_dir", str(output_dir), *extra]
    return [sys.executable, "-m", "accelerate.commands.launch", str(RECIPE), *flags]


def launch_recipe(command: list[str], folder: Path, unset: tuple[str, ...]):
    """Run a recipe's `command` in `folder` (its output to `log.txt` there), offline and without the variables in
    `unset`: its wall time, resource usage (os.wait4's, which counts the processes it waited for) and
    `output/all_results.json`. A failed run is a SystemExit naming its log."""
    env = {k: v for k, v in os.environ.items() if k not in unset} | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4, not proc.wait: the resource usage comes with it
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{folder.name} failed (exit {proc.returncode}); its output: {folder / 'log.txt'}")
    return wall, usage, json.loads((folder / "output" / "all_results.json").read_text())


def run_job(work_dir: Path, budget: tuple[int, int], regularizer: str, seed: int, extra: list[str]) -> dict:
    """One run's figures, from its `job.json` when it finished before with the same command."""
    folder = work_dir / run_name(budget, regularizer, seed)
    record = folder / "job.json"
    command = job_command(budget, regularizer, seed, folder / "output", extra)
    if record.is_file():
        done = json.loads(record.read_text())
        if done["command"][2:] == command[2:]:  # the interpreter may differ; the recipe and its flags may not
            return done
        raise SystemExit(f"{folder} holds a run of another command ({done['command'][3:]}): use another --work_dir")
    if folder.exists():  # a run that did not finish: this script's own folder, started again from nothing
        print(f"{folder.name}: an unfinished run, started again", file=sys.stderr)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    wall, _, results = launch_recipe(command, folder, unset=("OMP_NUM_THREADS",))
    done = {"command": command, "wall_s": round(wall, 1), **{k: results[k] for k in METRICS}}
    write_json_atomic(record, done)  # a killed run leaves no job.json: it is run again
    print(f"{folder.name}: {json.dumps(done | {'command': None})}", file=sys.stderr)
    return done


def compare(phi: dict, none: dict, time_goal_s: float) -> dict:
    """φ's run against none's at the same budget and seed."""
    accuracy_gap = phi["eval_accuracy"] - none["eval_accuracy"]
    wanted = (
        accuracy_gap >= -ACCURACY_SLACK and phi["eval_ece"] < none["eval_ece"] and phi["eval_nll"] < none["eval_nll"]
    )
    return {
        "accuracy_gap_points": round(100 * accuracy_gap, 2),
        "ece_gap_points": round(100 * (phi["eval_ece"] - none["eval_ece"]), 2),
        "nll_gap": round(phi["eval_nll"] - none["eval_nll"], 4),
        "wanted": wanted,
        "within_time_goal": phi["wall_s"] <= time_goal_s,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| budget | seed | φ wall (s) | none wall (s) | φ acc / ECE / NLL | none acc / ECE / NLL | acc gap | wanted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        phi, none = r["metaperturb"], r["none"]
        figures = [
            f"{100 * m['eval_accuracy']:.1f} / {100 * m['eval_ece']:.1f} / {m['eval_nll']:.3f}" for m in (phi, none)
        ]
        lines.append(
            f"| {r['budget']} | {r['seed']} | {phi['wall_s']:.0f} | {none['wall_s']:.0f} | {figures[0]} | {figures[1]} "
            f"| {r['accuracy_gap_points']:+.2f} | {'yes' if r['wanted'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Other flags go to the recipe as they are.", allow_abbrev=False
    )
    parser.add_argument("--budgets", nargs="+", type=parse_budget, default=[(2000, 32), (1300, 28), (1100, 32)])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each one thread)")
    parser.add_argument("--time_goal_s", type=float, default=240.0, help="the longest wall time a user should wait")
    parser.add_argument("--work_dir", type=Path, default=None, help="the runs' folders (default: a temporary one)")
    add_results_arguments(parser)
    args, extra = parser.parse_known_args()
    require_at_least(parser, args, jobs=1)
    if not args.time_goal_s > 0:
        parser.error(f"--time_goal_s must be > 0, got {args.time_goal_s}")
    if len(set(args.budgets)) != len(args.budgets) or len(set(args.seeds)) != len(args.seeds):
        parser.error("--budgets and --seeds must not repeat a value")
    for flag in ("--max_train_steps", "--image_size", "--seed", "--regularizer", "--output_dir"):
        if any(e == flag or e.startswith(flag + "=") for e in extra):
            parser.error(f"{flag} is set by this script (a budget is --max_train_steps and --image_size)")

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="default_job-"))
    runs = [(b, reg, s) for b in args.budgets for s in args.seeds for reg in REGULARIZERS]
    try:  # one script per --work_dir: a second would start this one's unfinished runs again, deleting them
        with claim_output_dir(work_dir, flag="--work_dir"), ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = list(pool.map(lambda run: run_job(work_dir, *run, extra), runs))
    except (OutputDirInUseError, OutputDirError) as err:
        raise SystemExit(str(err)) from err
    by_run = dict(zip(runs, done))
    rows = []
    for budget in args.budgets:
        for seed in args.seeds:
            figures = {
                reg: {k: v for k, v in by_run[(budget, reg, seed)].items() if k != "command"} for reg in REGULARIZERS
            }
            verdict = compare(figures["metaperturb"], figures["none"], args.time_goal_s)
            rows.append({"budget": f"{budget[0]}x{budget[1]}", "seed": seed, **figures, **verdict})
    print(table(rows), file=sys.stderr)
    budgets = "+".join(f"{steps}x{size}" for steps, size in args.budgets)
    seeds = "seeds" + "+".join(map(str, args.seeds))
    name = results_name("default_job", budgets, seeds, f"jobs{args.jobs}", recipe_flags_setting(extra))
    figures = {
        "rows": rows,
        "time_goal_s": args.time_goal_s,
        "accuracy_slack_points": 100 * ACCURACY_SLACK,
        "jobs": args.jobs,
        "recipe_flags": extra,
        "launcher": "accelerate launch (no flags of its own)",
    }
    publish("default_job", figures, results_path(args, name))


if __name__ == "__main__":
    main()
