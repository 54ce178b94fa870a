"""Over- or under-confident? Mean confidence against accuracy of `transfer_gain.py`'s saved ResNet-20 runs on one
target, and the ECE of several independent MC draws: how much of an ECE difference the noise draws alone make.

    python benchmarks/confidence.py --work_dir runs/transfer_gain_2000 --target mnist [--seeds 0 1 2]
                                    [--mc_samples 20] [--draws 3]

Each run folder `<target>-resnet20-<regularizer>-<φ>-s<seed>` of --work_dir (the main table's runs, or with
--weight_decay W that ablation's `...-wd<W>-s<seed>`) is evaluated on the test images `transfer_gain.py` decoded
(<work_dir>/decoded/<target>.pt): models with φ by MC (--mc_samples passes, each of --draws with its own noise
seed), the others in one pass. Per run: accuracy, mean confidence (the top probability), their gap (positive:
over-confident), the mean confidence of the wrong predictions, and the ECE (15 bins) of every draw. Prints a table
and writes benchmarks/results/confidence-<target>-mc<k>-draws<d>[-phi<n>_<digest>][-seeds<...>][-wd<W>].json
(the digest of the names of the φs read; the record lists the runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from _common import add_results_arguments, phi_set_setting, publish, results_name, results_path, seeds_setting
from robustness import load_model
from transfer_gain import finished_runs, weight_decay_setting

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mp_hub.evaluation import compute_metrics, predict_proba  # noqa: E402


def confidence_summary(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, mean top probability, their gap (> 0: over-confident) and the wrong predictions' mean confidence."""
    confidence, predicted = probs.max(dim=1)
    correct = predicted == labels
    wrong = confidence[~correct]
    return {
        "accuracy": correct.float().mean().item(),
        "mean_confidence": confidence.mean().item(),
        "confidence_gap": (confidence.mean() - correct.float().mean()).item(),
        "wrong_mean_confidence": wrong.mean().item() if len(wrong) else None,
    }


def run_folders(
    work_dir: Path, target: str, seeds: list[int], weight_decay: float | None = None
) -> list[tuple[Path, dict]]:
    """The main table's ResNet-20 runs of `target` with those seeds (or those of the `weight_decay` ablation),
    finished, with what their names say (`transfer_gain.parse_run_name`)."""
    return [
        (folder, named)
        for folder, named in finished_runs(work_dir, weight_decay)
        if (named["target"], named["model"]) == (target, "resnet20") and named["seed"] in seeds
    ]


def run_label(named: dict) -> str:
    """A run's row label, as `transfer_gain.py`'s table has it: `metaperturb:<φ>` for a run with φ, else the
    regularizer."""
    return f"metaperturb:{named['phi']}" if named["regularizer"] == "metaperturb" else named["regularizer"]


def add_saved_runs_arguments(parser) -> None:
    """--work_dir, --target, --seeds and --weight_decay: which of `transfer_gain.py`'s saved runs a diagnostic
    reads."""
    parser.add_argument("--work_dir", type=Path, required=True, help="transfer_gain.py's --work_dir")
    parser.add_argument("--target", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--weight_decay", type=float, default=None, help="the runs of transfer_gain.py's --weight_decay ablation"
    )


def saved_runs(parser, args) -> tuple[Path, list[tuple[Path, dict]]]:
    """The target's decoded test images and `run_folders`, or parser.error saying which is missing."""
    decoded = args.work_dir / "decoded" / f"{args.target}.pt"
    if not decoded.exists():
        parser.error(f"{decoded} is missing: run transfer_gain.py on --work_dir with this target first")
    folders = run_folders(args.work_dir, args.target, args.seeds, args.weight_decay)
    if not folders:
        which = "" if args.weight_decay is None else f" of the --weight_decay {args.weight_decay:g} ablation"
        parser.error(
            f"no finished {args.target} ResNet-20 runs{which} with seeds {args.seeds} in {args.work_dir / 'runs'}"
        )
    return decoded, folders


def phis_setting(folders: list[tuple[Path, dict]]) -> str | None:
    """The record name's part for the φs whose runs were read (`_common.phi_set_setting`; None where no run has
    φ), so that a work dir holding another φ's runs never writes over this record."""
    names = sorted({named["phi"] for _, named in folders if named["regularizer"] == "metaperturb"})
    return phi_set_setting(names) if names else None


def results_file_name(args, folders: list[tuple[Path, dict]]) -> str:
    """confidence-<target>-mc<k>-draws<d>[-phi<n>_<digest>][-seeds<...>][-wd<W>].json (the seeds where not the
    default): one file per configuration."""
    return results_name(
        "confidence", args.target, f"mc{args.mc_samples}", f"draws{args.draws}", phis_setting(folders),
        seeds_setting(args.seeds), weight_decay_setting(args.weight_decay),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_saved_runs_arguments(parser)
    parser.add_argument("--mc_samples", type=int, default=20)
    parser.add_argument("--draws", type=int, default=3, help="independent MC predictions per run (noise seeds)")
    add_results_arguments(parser)
    args = parser.parse_args()
    if args.mc_samples < 1 or args.draws < 1:
        parser.error("--mc_samples and --draws must be >= 1")
    decoded, folders = saved_runs(parser, args)
    torch.set_num_threads(1)
    images, labels = torch.load(decoded, weights_only=True)
    batches = list(zip(images.split(200), labels.split(200)))
    rows = []
    for folder, named in folders:
        model = load_model(folder, named["regularizer"], args.work_dir / "data" / args.target, named["seed"])
        stochastic = named["regularizer"] == "metaperturb"
        draws = []
        for draw in range(args.draws if stochastic else 1):
            probs, _ = predict_proba(model, batches, args.mc_samples if stochastic else 1, seed=draw)
            draws.append({**confidence_summary(probs, labels), "ece": compute_metrics(probs, labels)["ece"]})
        label = run_label(named)
        row = {"run": folder.name, "regularizer": label, "seed": named["seed"], "draws": draws}
        eces = [d["ece"] for d in draws]
        row["ece_mean"], row["ece_min"], row["ece_max"] = statistics.mean(eces), min(eces), max(eces)
        row["confidence_gap_mean"] = statistics.mean(d["confidence_gap"] for d in draws)
        rows.append(row)
        print(f"{label:48s} s{row['seed']}  acc {100 * draws[0]['accuracy']:.2f} %  "
              f"conf − acc {100 * row['confidence_gap_mean']:+.2f} points  "
              f"wrong ones' conf {draws[0]['wrong_mean_confidence']:.3f}  "
              f"ECE {100 * row['ece_min']:.2f}–{100 * row['ece_max']:.2f} % over {len(draws)} draw(s)")  # fmt: skip
    figures = {"target": args.target, "seeds": args.seeds, "weight_decay": args.weight_decay,
               "mc_samples": args.mc_samples, "draws": args.draws,
               "test_images": len(labels), "runs": rows}  # fmt: skip
    publish("confidence", figures, results_path(args, results_file_name(args, folders)))


if __name__ == "__main__":
    main()
