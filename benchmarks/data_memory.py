"""Peak memory and training throughput of recipes/transfer.py on a whole dataset (its images decoded on demand).

    python benchmarks/data_memory.py [--dataset_dir ../shared/data/fashion_mnist] [--image_size 128]
        [--batch_size 16] [--steps 30] [--warmup_steps 5] [--dataloader_num_workers N] [--threads 2]
        [--repo DIR --label before] [ANY RECIPE FLAG ...]

Runs the recipe (one CPU process, `--threads` torch threads) on the whole train split, with a small evaluation
(`--eval_samples` images, one pass, no mean-mode calibration): once for `--warmup_steps` optimizer steps, once
for `--steps`, and once for `--warmup_steps` on only `--small_data_samples` training images (the memory of
everything but the data). Figures per run: the peak RSS of the recipe's process (`resource.getrusage` in that
process, at its end), the peak proportional set size of its process tree (the recipe and its DataLoader workers,
sampled every 0.1 s; shared pages counted once), and its wall time. The training throughput is
(steps − warmup_steps) / (train_runtime_s(steps) − train_runtime_s(warmup_steps)): set-up and evaluation cancel
out, and every version of the recipe reports train_runtime_s, so `--repo` may name another checkout (e.g. the
commit before lazy decoding, with `--label before`) to compare with. The dataset's Arrow cache is built once,
before the runs, in a temporary folder. Prints the figures and a final JSON line with the git commit, also
written to benchmarks/results/data_memory-s<S>-b<B>[-w<W>]-t<T>[-<label>].json (--results_dir, --results_file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_results_arguments, publish, require_at_least, results_name, results_path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fashion_mnist"
# Runs the recipe as `python recipes/transfer.py ARGS` would, then writes the peak RSS of this process (the
# recipe's) and of its finished children (DataLoader workers) to the file named by the first argument.
RUN_AND_MEASURE = """
import json, resource, runpy, sys
out, recipe = sys.argv[1], sys.argv[2]
sys.argv = [recipe, *sys.argv[3:]]
try:
    runpy.run_path(recipe, run_name="__main__")
except SystemExit as done:
    if done.code:
        raise
finally:
    with open(out, "w") as f:
        json.dump({"self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, f)
"""


def tree_memory(pid: int) -> int:
    """Bytes of the process `pid` and its descendants: their proportional set size (PSS) where the system tells
    it, else their RSS summed."""
    import psutil

    total = 0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except psutil.NoSuchProcess:
        pass
    return total


def recipe_run(repo: Path, flags: list[str], work: Path, threads: int) -> dict:
    """Run the recipe of `repo` with `flags` in a fresh process; its results, peak memory and wall time."""
    measured = work / "memory.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(repo)}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", ACCELERATE_USE_CPU="1")
    command = [sys.executable, "-c", RUN_AND_MEASURE, str(measured), str(repo / "recipes" / "transfer.py"), *flags]
    start, peak_tree = time.perf_counter(), 0
    with open(work / "log.txt", "w") as log:
        proc = subprocess.Popen(command, env=env, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak_tree = max(peak_tree, tree_memory(proc.pid))
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"the recipe failed ({proc.returncode}):\n{(work / 'log.txt').read_text()[-4000:]}")
    memory = json.loads(measured.read_text())
    results = json.loads((work / "out" / "all_results.json").read_text())
    return {
        "train_samples": results["train_samples"],
        "train_steps": results["train_steps"],
        "train_runtime_s": results["train_runtime_s"],
        "train_steps_per_second": results.get("train_steps_per_second"),  # the loop alone, where reported
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(memory["self_kb"] / 1024, 1),
        "peak_worker_rss_mb": round(memory["children_kb"] / 1024, 1),
        "peak_tree_pss_mb": round(peak_tree / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Other flags go to the recipe as they are.", allow_abbrev=False
    )
    parser.add_argument("--dataset_dir", type=Path, default=DEFAULT_DATA, help="a Hub-layout dataset folder")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16, help="per optimizer step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup_steps", type=int, default=5, help="the shorter run, subtracted from the longer")
    parser.add_argument("--eval_samples", type=int, default=200)
    parser.add_argument("--small_data_samples", type=int, default=1000, help="the reference run's images (0: none)")
    parser.add_argument("--dataloader_num_workers", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the recipe's process")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose recipe and mp_hub run")
    parser.add_argument("--label", default="", help="added to the results' name (e.g. before)")
    add_results_arguments(parser)
    args, extra = parser.parse_known_args()
    require_at_least(parser, args, image_size=1, batch_size=1, warmup_steps=1, eval_samples=1, threads=1)
    require_at_least(parser, args, small_data_samples=0)
    if args.steps <= args.warmup_steps:
        parser.error(f"--steps must be > --warmup_steps ({args.warmup_steps}), got {args.steps}")
    if not (args.dataset_dir / "data").is_dir():
        parser.error(f"--dataset_dir {args.dataset_dir} is not a Hub-layout dataset folder (no data/ in it)")
    repo = args.repo.resolve()

    from datasets import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        load_dataset(str(args.dataset_dir), cache_dir=str(cache))  # the Arrow cache, built outside the runs

        def run(name: str, steps: int, *more: str) -> dict:
            work = Path(tmp) / name
            work.mkdir()
            flags = ["--dataset_dir", str(args.dataset_dir), "--cache_dir", str(cache), "--output_dir",
                     str(work / "out"), "--image_size", str(args.image_size), "--per_device_train_batch_size",
                     str(args.batch_size), "--max_train_steps", str(steps), "--eval_steps", str(10**9),
                     "--max_eval_samples", str(args.eval_samples), "--per_device_eval_batch_size", "100",
                     "--eval_mc_samples", "1", "--mean_mode_calibration_images", "0", *more]  # fmt: skip
            if args.dataloader_num_workers is not None:
                flags += ["--dataloader_num_workers", str(args.dataloader_num_workers)]
            figures = recipe_run(repo, [*flags, *extra], work, args.threads)
            print(f"{name}: {json.dumps(figures)}", file=sys.stderr)
            return figures

        short = run("short", args.warmup_steps)
        long = run("long", args.steps)
        small = None
        if args.small_data_samples:
            small = run("small_data", args.warmup_steps, "--max_train_samples", str(args.small_data_samples))
    seconds = long["train_runtime_s"] - short["train_runtime_s"]
    throughput = round((args.steps - args.warmup_steps) / seconds, 4) if seconds > 0 else None
    print(f"{long['train_samples']} training images at {args.image_size} px, batch {args.batch_size}:")
    print(f"  peak RSS {long['peak_rss_mb']:.0f} MB (tree PSS {long['peak_tree_pss_mb']:.0f} MB)", end="")
    print(f"; with {small['train_samples']} images: {small['peak_rss_mb']:.0f} MB" if small else "")
    print(f"  {throughput} steps/s ({args.steps} vs {args.warmup_steps} steps)")
    recipe_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    config = {
        "dataset_dir": str(args.dataset_dir),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "dataloader_num_workers": args.dataloader_num_workers,
        "threads": args.threads,
        "recipe_flags": extra,
        "repo": str(repo),
        "repo_commit": recipe_commit.stdout.strip() or "unknown",
    }
    figures = {"steps_per_second": throughput, "long": long, "short": short, "small_data": small}
    workers = f"w{args.dataloader_num_workers}" if args.dataloader_num_workers else None
    name = results_name("data_memory", f"s{args.image_size}", f"b{args.batch_size}", workers, f"t{args.threads}",
                        args.label)  # fmt: skip
    publish("data_memory", {**config, **figures}, results_path(args, name))


if __name__ == "__main__":
    main()
