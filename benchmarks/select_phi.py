"""Pick one φ among meta-training runs, on a validation target that no benchmark number uses.

    python benchmarks/select_phi.py runs/glyphs10-seed0 runs/glyphs10-seed1 runs/glyphs10-seed2

Validation target: MNIST *training* images outside every subset `benchmarks/transfer_gain.py` uses (its
MNIST train subset is the seed-0 draw of 100 per class from the train split; its test images come from the
test split): 100 other train images per class to train on, and 100 more per class to evaluate on. Each φ
trains CIFAR ResNet-20 from scratch there with `recipes/transfer.py` (same budget as the benchmark, seed 0);
the φ with the highest validation accuracy (MC average) is selected. Prints the scores and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mp_hub.data import samples_per_class_subset  # noqa: E402


def build_validation_target(shared: Path, out: Path, per_class: int) -> Path:
    from datasets import load_dataset

    if (out / "data" / "test-00000-of-00001.parquet").exists():
        return out
    train = load_dataset(str(shared / "data" / "mnist"))["train"]
    labels = torch.as_tensor(train["label"])
    used = set(samples_per_class_subset(labels, 100, seed=0).tolist())  # transfer_gain.py's MNIST train subset
    free = torch.tensor([i for i in range(len(labels)) if i not in used])
    picked = free[samples_per_class_subset(labels[free], 2 * per_class, seed=1)]
    by_class = {c: picked[labels[picked] == c] for c in range(10)}
    train_rows = torch.cat([rows[:per_class] for rows in by_class.values()])
    valid_rows = torch.cat([rows[per_class:] for rows in by_class.values()])
    (out / "data").mkdir(parents=True, exist_ok=True)
    train.select(train_rows.tolist()).to_parquet(str(out / "data" / "train-00000-of-00001.parquet"))
    train.select(valid_rows.tolist()).to_parquet(str(out / "data" / "test-00000-of-00001.parquet"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("candidates", nargs="+", type=Path, help="φ folders (meta_train.py outputs)")
    parser.add_argument("--shared_dir", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "runs" / "select_phi")
    parser.add_argument("--max_train_steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eval_mc_samples", type=int, default=20)
    args = parser.parse_args()

    data_dir = build_validation_target(args.shared_dir, args.work_dir / "data" / "mnist_validation", 100)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    procs, outs = [], []
    for phi in args.candidates:
        out = args.work_dir / "runs" / phi.name
        outs.append(out)
        if (out / "all_results.json").exists():
            procs.append(None)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, str(ROOT / "recipes" / "transfer.py"), "--dataset_dir", str(data_dir),
            "--model_type", "cifar_resnet20", "--image_size", "32", "--no_flip", "--seed", "0",
            "--per_device_train_batch_size", str(args.batch_size), "--max_train_steps", str(args.max_train_steps),
            "--eval_mc_samples", str(args.eval_mc_samples), "--eval_steps", str(args.max_train_steps),
            "--mean_mode_mc_fit_steps", "0",  # the selection reads MC accuracy: the fit would only cost time
            "--perturb_model_id", str(phi), "--output_dir", str(out),
        ]  # fmt: skip
        log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 (closed when the process is waited for)
        procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    for entry in procs:
        if entry:
            entry[0].wait()
            entry[1].close()
    scores = {}
    for phi, out in zip(args.candidates, outs):
        results = json.loads((out / "all_results.json").read_text())
        scores[str(phi)] = {"accuracy": results["eval_accuracy"], "ece": results["eval_ece"]}
        print(f"{phi}: validation accuracy {results['eval_accuracy']:.4f}, ECE {results['eval_ece']:.4f}")
    selected = max(scores, key=lambda k: scores[k]["accuracy"])
    print(f"selected: {selected}")
    print(
        json.dumps(
            {
                "benchmark": "select_phi",
                "rule": "highest MC accuracy on the MNIST-train validation target",
                "validation_target": "MNIST train split, 100/class train + 100/class eval, disjoint from benchmarks",
                "max_train_steps": args.max_train_steps,
                "eval_mc_samples": args.eval_mc_samples,
                "scores": scores,
                "selected": selected,
            }
        )
    )


if __name__ == "__main__":
    main()
