"""Pick one φ among meta-training runs, on a validation target that no benchmark number uses.

    python benchmarks/select_phi.py runs/glyphs10-seed0 runs/glyphs10-seed1 runs/glyphs10-seed2

Validation target: MNIST *training* images outside every subset `benchmarks/transfer_gain.py` uses (its
MNIST train subset is the seed-0 draw of 100 per class from the train split; its test images come from the
test split): 100 other train images per class to train on, and 100 more per class to evaluate on. Each φ
trains CIFAR ResNet-20 from scratch there with `recipes/transfer.py` (seed 0); the φ with the highest
validation accuracy (MC average) is selected, a tie broken by the lower NLL. Prints the scores and a final JSON line
(with the git commit), also written to benchmarks/results/select_phi-steps<N>-mc<k>-pc<per_class>-phi<n>_<hash>.json
(--results_dir, --results_file).

Each candidate's run lives in `--work_dir`/runs/<name>-<hash of its command>: run again with the same settings,
a finished run is reused; with other settings (or another candidate of the same name) it runs anew. If a run
fails, nothing is selected: the script exits naming the candidate and its log. `--per_class` (default 100)
sizes the validation target. A candidate must be a φ folder (config.json); bad arguments are refused before
any run starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import add_results_arguments, phi_set_setting, publish, results_name, results_path  # noqa: E402


def build_validation_target(shared: Path, out: Path, per_class: int) -> Path:
    import torch  # here, not at the top: a refused command line answers at once
    from datasets import load_dataset

    from mp_hub.data import samples_per_class_subset

    if out.is_dir():
        return out
    train = load_dataset(str(shared / "data" / "mnist"))["train"]
    labels = torch.as_tensor(train["label"])
    used = set(samples_per_class_subset(labels, 100, seed=0).tolist())  # transfer_gain.py's MNIST train subset
    free = torch.tensor([i for i in range(len(labels)) if i not in used])
    picked = free[samples_per_class_subset(labels[free], 2 * per_class, seed=1)]
    by_class = {c: picked[labels[picked] == c] for c in range(10)}
    train_rows = torch.cat([rows[:per_class] for rows in by_class.values()])
    valid_rows = torch.cat([rows[per_class:] for rows in by_class.values()])
    tmp = out.with_name(out.name + ".tmp")  # built aside and renamed: a killed build leaves no half dataset
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    train.select(train_rows.tolist()).to_parquet(str(tmp / "data" / "train-00000-of-00001.parquet"))
    train.select(valid_rows.tolist()).to_parquet(str(tmp / "data" / "test-00000-of-00001.parquet"))
    os.replace(tmp, out)
    return out


def run_key(phi: Path, command: list[str]) -> str:
    """A run's folder name: the candidate's name and a hash of its full command (which holds the candidate's
    absolute path), so that a rerun with other settings, or another candidate of the same name, is not served
    an earlier run's results."""
    return f"{phi.name}-{hashlib.sha256(json.dumps(command).encode()).hexdigest()[:10]}"


def best_candidate(scores: dict[str, dict[str, float]]) -> str:
    """The candidate with the highest accuracy; of tied ones, the lowest NLL (accuracies on 1,000 images tie
    often, and the listing order is no reason to prefer one φ)."""
    return max(scores, key=lambda name: (scores[name]["accuracy"], -scores[name]["nll"]))


def candidates_setting(candidates: list[Path]) -> str:
    """The record name's part for the candidate set (`_common.phi_set_setting` of their folder names), so that a
    selection among other candidates at the same settings never replaces this one."""
    return phi_set_setting([Path(c).name for c in candidates])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("candidates", nargs="+", type=Path, help="φ folders (meta_train.py outputs)")
    parser.add_argument("--shared_dir", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "runs" / "select_phi")
    parser.add_argument("--max_train_steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eval_mc_samples", type=int, default=20)
    parser.add_argument("--per_class", type=int, default=100, help="validation images per class, train and eval each")
    add_results_arguments(parser)
    args = parser.parse_args()
    for name in ("max_train_steps", "batch_size", "eval_mc_samples", "per_class"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for phi in args.candidates:  # before any run starts: a typo should not cost the other candidates' hours
        if not (phi / "config.json").is_file():
            parser.error(f"candidate {phi} is not a φ folder (no config.json there)")
    if len({phi.resolve() for phi in args.candidates}) < len(args.candidates):
        parser.error("a candidate is listed twice")

    data_dir = build_validation_target(
        args.shared_dir, args.work_dir / "data" / f"mnist_validation_{args.per_class}", args.per_class
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    runs = []  # (candidate as given, output folder, log, process or None when an identical finished run is reused)
    for phi in args.candidates:
        command = [
            str(ROOT / "recipes" / "transfer.py"), "--dataset_dir", str(data_dir.resolve()),
            "--model_type", "cifar_resnet20", "--image_size", "32", "--no_flip", "--seed", "0",
            "--per_device_train_batch_size", str(args.batch_size), "--max_train_steps", str(args.max_train_steps),
            "--eval_mc_samples", str(args.eval_mc_samples), "--eval_steps", str(args.max_train_steps),
            "--mean_mode_mc_fit_steps", "0",  # the selection reads MC accuracy: the fit would only cost time
            "--perturb_model_id", str(phi.resolve()),
        ]  # fmt: skip
        out = args.work_dir / "runs" / run_key(phi, command)
        log = out.with_suffix(".log")
        if (out / "all_results.json").exists():
            runs.append((phi, out, log, None))
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:  # the child holds its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, *command, "--output_dir", str(out)], stdout=fh, stderr=subprocess.STDOUT, env=env
            )
        runs.append((phi, out, log, proc))
    failed = [(phi, log) for phi, _, log, proc in runs if proc is not None and proc.wait() != 0]
    if failed:  # no selection among the rest: the failed one might have been the best
        lines = "\n".join(f"  {phi}: see {log}" for phi, log in failed)
        sys.exit(f"select_phi: {len(failed)} of {len(runs)} candidate runs failed, nothing selected:\n{lines}")
    scores = {}
    for phi, out, _, _ in runs:
        results = json.loads((out / "all_results.json").read_text())
        scores[str(phi)] = {key: results[f"eval_{key}"] for key in ("accuracy", "nll", "ece")}
        print(
            f"{phi}: validation accuracy {results['eval_accuracy']:.4f}, NLL {results['eval_nll']:.4f}, "
            f"ECE {results['eval_ece']:.4f}"
        )
    selected = best_candidate(scores)
    print(f"selected: {selected}")
    name = results_name(
        "select_phi",
        f"steps{args.max_train_steps}",
        f"mc{args.eval_mc_samples}",
        f"pc{args.per_class}",
        candidates_setting(args.candidates),
    )
    figures = {
        "rule": "highest MC accuracy on the MNIST-train validation target, a tie broken by the lower NLL",
        "validation_target": f"MNIST train split, {args.per_class}/class train + {args.per_class}/class eval, "
        "disjoint from benchmarks",
        "max_train_steps": args.max_train_steps,
        "eval_mc_samples": args.eval_mc_samples,
        "scores": scores,
        "selected": selected,
    }
    publish("select_phi", figures, results_path(args, name))


if __name__ == "__main__":
    main()
