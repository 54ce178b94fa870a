"""Meta-training throughput with 1 and with 2 processes for the same tasks (recipes/meta_train.py), on CPU or CUDA,
eager or compiled.

    python benchmarks/meta_train_scaling.py [--tasks 4] [--steps 6] [--batch_size 32] [--cores 2] [--device cuda]
                                            [--compile] [--compile-backend inductor]

On CPU both runs use all `--cores` cores: 1 process × `cores` torch threads, then 2 processes × `cores / 2` threads
(`accelerate launch` with ACCELERATE_USE_CPU=1 --multi_gpu --num_processes 2), and a 1 process × 1 thread run for
context. With --device cuda: 1 process on one GPU, and 2 processes (one GPU each) where the machine has two or more
(a device index is ignored: the processes take GPUs 0, 1). The figure is task-steps per second of the training loop
(tasks × steps / loop time, startup and data decoding excluded), from the recipe's final JSON line. --compile adds
the recipe with --torch_compile (each task's model under torch.compile; --compile-backend, default inductor), 1
process: its loop holds the compilation, so it runs twice, for `steps` and 2 × `steps`, and its figure is the steady
rate tasks × steps / (loop time difference); the eager 1-process run is repeated the same way for the ratio
(`compiled_vs_one`: steady rates, compiled / eager). Data: a tiny generated 8-class dataset at 32×32; model:
ResNet-20. Prints the figures and ratios, and a final JSON line with the figures and the git commit, also written to
benchmarks/results/meta_train_scaling-tasks<T>-b<B>-c<C>[-<device>][-compile[-<backend>]].json (--results_dir,
--results_file). --device cuda on a machine without CUDA is refused (exit 2) before anything runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import add_results_arguments, publish, results_name, results_path
from _device import add_device_arguments, checked_device, compile_suffix, device_name

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "meta_train.py"


def make_dataset(root: Path, classes: int = 8, per_class: int = 80, size: int = 32) -> Path:
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    images = [
        PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(classes * per_class)
    ]
    labels = [i // per_class for i in range(classes * per_class)]
    features = Features({"image": Image(), "label": ClassLabel(num_classes=classes)})
    (root / "data").mkdir(parents=True)
    Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
        str(root / "data" / "train-00000-of-00001.parquet")
    )
    return root


def launch_command(processes: int, threads: int, device_type: str) -> list[str]:
    """`accelerate launch` for `processes` processes of `threads` threads each, on CPU or on one GPU each."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--num_cpu_threads_per_process", str(threads)]
    if device_type == "cuda":
        launch += ["--gpu_ids", ",".join(str(i) for i in range(processes))]
    if processes > 1:
        launch += ["--multi_gpu", "--main_process_port", "0"]
    return launch


def run(
    processes: int,
    threads: int,
    args: argparse.Namespace,
    data: Path,
    work: Path,
    compiled: bool = False,
    steps: int | None = None,
) -> dict:
    """One `accelerate launch` of the recipe (`steps`, default --steps): its loop time and task-steps/s."""
    steps = steps or args.steps
    launch = launch_command(processes, threads, args.device_type)
    recipe_args = [
        "--dataset_dir",
        str(data),
        "--cache_dir",
        str(work / "cache"),
        "--output_dir",
        str(work / f"out{processes}-{steps}{'-compiled' if compiled else ''}"),
    ]
    recipe_args += ["--num_tasks", str(args.tasks), "--split_scheme", "disjoint", "--model_type", "cifar_resnet20"]
    recipe_args += ["--per_device_train_batch_size", str(args.batch_size), "--max_train_steps", str(steps)]
    if compiled:
        recipe_args += ["--torch_compile", "--torch_compile_backend", args.compile_backend]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    if args.device_type == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    result = subprocess.run([*launch, str(RECIPE), *recipe_args], env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        sys.exit(f"{processes}-process{' compiled' if compiled else ''} run failed:\n{result.stderr[-4000:]}")
    summary = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")][-1]
    task_steps = summary["tasks"] * summary["steps_run"]
    return {
        "processes": processes,
        "threads_per_process": threads,
        "compiled": compiled,
        "loop_s": summary["train_loop_s"],
        "task_steps_per_s": round(task_steps / summary["train_loop_s"], 3),
    }


def steady_rate(processes: int, threads: int, args, data: Path, work: Path, compiled: bool) -> dict:
    """The loop's task-steps/s without its first-steps cost (compilation, warm-up): runs of `steps` and 2 × `steps`,
    tasks × steps / (difference of their loop times); None where the difference is not positive (noise)."""
    short = run(processes, threads, args, data, work, compiled)
    long = run(processes, threads, args, data, work, compiled, steps=2 * args.steps)
    extra = long["loop_s"] - short["loop_s"]
    rate = round(args.tasks * args.steps / extra, 3) if extra > 0 else None
    return {"short": short, "long": long, "steady_task_steps_per_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--cores", type=int, default=2, help="cores to share: 1 × cores threads vs 2 × cores/2")
    add_device_arguments(parser, compile_help="also the 1-process run with the recipe's --torch_compile")
    add_results_arguments(parser)
    args = parser.parse_args()
    device = checked_device(parser, args.device)
    args.device_type = device.type
    two_processes = device.type == "cpu" or torch.cuda.device_count() >= 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data")
        one = run(1, args.cores, args, data, work)
        two = run(2, max(args.cores // 2, 1), args, data, work) if two_processes else None
        # Context: one process on one thread. On a busy machine, OpenMP threads that outnumber the free cores
        # spin-wait and slow the 1 × 2 run far more than the ideal; this row shows how much of the ratio is that.
        single = run(1, 1, args, data, work) if args.cores > 1 and device.type == "cpu" else None
        steady = {kind: steady_rate(1, args.cores, args, data, work, compiled=kind == "compiled")
                  for kind in (("eager", "compiled") if args.compile else ())}  # fmt: skip
    ratio = round(two["task_steps_per_s"] / one["task_steps_per_s"], 3) if two else None
    print(f"1 process  × {one['threads_per_process']} threads: {one['task_steps_per_s']:.2f} task-steps/s")
    if two:
        print(f"2 processes × {two['threads_per_process']} threads: {two['task_steps_per_s']:.2f} task-steps/s")
        print(f"ratio (2 / 1): {ratio:.2f}")
    if single:
        print(f"(context) 1 process × 1 thread: {single['task_steps_per_s']:.2f} task-steps/s")
    rates = {kind: r["steady_task_steps_per_s"] for kind, r in steady.items()}
    compiled_ratio = round(rates["compiled"] / rates["eager"], 3) if all(rates.values()) and rates else None
    for kind, rate in rates.items():
        print(f"1 process, {kind}, steady: " + (f"{rate:.2f} task-steps/s" if rate else "not measurable (noise)"))
    if compiled_ratio:
        print(f"compiled / eager (steady): ×{compiled_ratio:.2f}")
    config = {"tasks": args.tasks, "steps": args.steps, "batch_size": args.batch_size, "model": "cifar_resnet20",
              "device": args.device, "device_name": device_name(device), "compile": args.compile,
              "compile_backend": args.compile_backend if args.compile else None}  # fmt: skip
    figures = {"one": one, "two": two, "ratio": ratio, "one_single_thread": single,
               "one_steady": steady.get("eager"), "one_compiled": steady.get("compiled"),
               "compiled_vs_one": compiled_ratio}  # fmt: skip
    name = results_name("meta_train_scaling", f"tasks{args.tasks}", f"b{args.batch_size}", f"c{args.cores}",
                        device.type != "cpu" and device.type, compile_suffix(args))  # fmt: skip
    publish("meta_train_scaling", {**config, **figures}, results_path(args, name))


if __name__ == "__main__":
    main()
