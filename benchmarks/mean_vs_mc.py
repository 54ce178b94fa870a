"""How closely does one-pass "mean" mode follow the MC average, and how finely can a test set tell?

    python benchmarks/mean_vs_mc.py [--work_dirs runs/transfer_gain runs/transfer_gain_1000] [--mc_samples 20]
                                    [--mc_fit_steps 200] [--seeds 0 1]

Reads the MetaPerturb runs that `benchmarks/transfer_gain.py` saved, predicts their test images in calibrated
"mean" mode (`mp_hub.calibrate_mean_mode`, as the recipe does it) and with MC-k (`mp_hub.inference.mc_predict`,
noise seeded per run), and compares the two image by image:
  Δ          accuracy(mean) − accuracy(MC), in points;
  n10, n01   images only mean mode gets right, images only MC gets right (Δ = (n10 − n01) / N);
  agreement  the fraction of images where both predict the same class;
  se         the standard error of Δ as an estimate of the population gap: the per-image differences
             d ∈ {−1, 0, 1} are paired, so se = sqrt(((n10 + n01) / N − Δ²) / N).
Rows (target, model, regularizer, training steps) pool their seeds: Δ is the mean and se = sqrt(Σ se²) / n.
--mc_fit_steps N: the same comparison for the MC-matched calibration too (`calibrate_mean_mode(...,
mc_fit_steps=N)`, `mp_hub.mean_mode.mc_fit`), on the same MC predictions. The tiny ViT has no BatchNorm: its
"mean" row is uncalibrated (as the recipe leaves it without the fit), its "mean_fit" row has its LayerNorms
fitted.
Per-image probabilities are cached in <work_dir>/mean_vs_mc/ (rerun to re-tabulate without recomputing; the
one-pass predictions are shared by every --mc_samples), each file tied to its run's all_results.json: a run
folder trained again is predicted again.
--seeds: only the runs of those seeds (default: every seed in the work dirs).
The last line printed is JSON with every figure and the git commit, also written to
benchmarks/results/mean_vs_mc-mc<k>[-fit<N>][-seeds<...>].json (--results_dir, --results_file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch
from _common import add_results_arguments, publish, results_name, results_path
from transfer_gain import finished_runs, load_calibrated

from mp_hub.mean_mode.predict import mc_predict, mean_predict

ROOT = Path(__file__).resolve().parents[1]


def _save(obj: dict, path: Path) -> None:
    """Write-then-rename: a run killed mid-write leaves the previous cache file, not a truncated one."""
    partial = path.with_suffix(".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def _load_cache(path: Path, results: Path, source: str) -> dict:
    """A cache file's entries if they are of the run now in its folder, else none (that folder was run again:
    its results file changed). Files written before the source was recorded: kept if newer than the results."""
    if not path.exists():
        return {}
    cached = torch.load(path, weights_only=True)
    if "source" in cached:
        return cached if cached["source"] == source else {}
    return cached if path.stat().st_mtime >= results.stat().st_mtime else {}


def predictions(run_dir: Path, work_dir: Path, target: str, seed: int, mc_samples: int, fit_steps: int) -> dict:
    """Per-image class probabilities of one run: "mean" (moment-matched calibration), "mc" (MC-k) and, with
    `fit_steps`, "mean_fit" (MC-matched calibration). Cached beside the work dir, each computed once: the
    one-pass ones in <run>-mean.pt, the MC ones in <run>-mc<k>.pt."""
    cache = work_dir / "mean_vs_mc"
    mean_file, mc_file = cache / f"{run_dir.name}-mean.pt", cache / f"{run_dir.name}-mc{mc_samples}.pt"
    results = run_dir / "all_results.json"
    source = hashlib.sha256(results.read_bytes()).hexdigest()  # which run the predictions are of
    one_pass, mc = _load_cache(mean_file, results, source), _load_cache(mc_file, results, source)
    one_pass["source"] = mc["source"] = source
    fit_key = f"mean_fit{fit_steps}"
    images, labels = torch.load(work_dir / "decoded" / f"{target}.pt", weights_only=True)
    chunks = images.split(250)
    data_dir = work_dir / "data" / target
    cache.mkdir(parents=True, exist_ok=True)
    if "mean" not in one_pass or "mc" not in mc:
        model, _ = load_calibrated(run_dir, data_dir, seed)
        one_pass["mean"] = torch.cat([mean_predict(model, chunk) for chunk in chunks])
        torch.manual_seed(1000 + seed)  # the MC draws: reproducible, and not the training run's
        mc["mc"] = torch.cat([mc_predict(model, chunk, mc_samples) for chunk in chunks])
        _save(mc, mc_file)
        _save(one_pass, mean_file)
    if fit_steps and fit_key not in one_pass:
        model, handle = load_calibrated(run_dir, data_dir, seed, mc_fit_steps=fit_steps)
        one_pass[fit_key] = torch.cat([mean_predict(model, chunk) for chunk in chunks])
        one_pass[f"{fit_key}_info"] = handle.calibration.mc_fit if handle.calibration is not None else None
        _save(one_pass, mean_file)
    return {"mean": one_pass["mean"], "mc": mc["mc"], "mean_fit": one_pass.get(fit_key), "labels": labels}


def finished_phi_runs(work_dir: Path, seeds: list[int] | None = None) -> list[tuple[Path, dict]]:
    """The finished MetaPerturb runs of the main table's settings in `work_dir` (not an ablation's), with their
    parsed names; only those of `seeds` when given."""
    return [
        (run_dir, named)
        for run_dir, named in finished_runs(work_dir)
        if named["regularizer"] == "metaperturb" and (seeds is None or named["seed"] in seeds)
    ]


def compare(p_mean: torch.Tensor, p_mc: torch.Tensor, labels: torch.Tensor) -> dict:
    right_mean, right_mc = p_mean.argmax(-1) == labels, p_mc.argmax(-1) == labels
    n = len(labels)
    n10, n01 = int((right_mean & ~right_mc).sum()), int((right_mc & ~right_mean).sum())
    delta = (n10 - n01) / n
    return {
        "images": n,
        "accuracy_mean": 100 * right_mean.float().mean().item(),
        "accuracy_mc": 100 * right_mc.float().mean().item(),
        "delta": 100 * delta,
        "n10": n10,
        "n01": n01,
        "agreement": (p_mean.argmax(-1) == p_mc.argmax(-1)).float().mean().item(),
        "se": 100 * math.sqrt(max((n10 + n01) / n - delta**2, 0.0) / n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dirs", nargs="+", type=Path,
                        default=[ROOT / "runs" / "transfer_gain", ROOT / "runs" / "transfer_gain_1000"])  # fmt: skip
    parser.add_argument("--mc_samples", type=int, default=100)
    parser.add_argument("--mc_fit_steps", type=int, default=0, help="also the MC-matched calibration (0: not)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", nargs="+", type=int, help="only the runs of these seeds (default: all)")
    add_results_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = ("mean", "mean_fit") if args.mc_fit_steps else ("mean",)

    runs = []
    for work_dir in args.work_dirs:
        for run_dir, match in finished_phi_runs(work_dir, args.seeds):
            steps = json.loads((run_dir / "all_results.json").read_text())["train_steps"]
            seed = match["seed"]
            pred = predictions(run_dir, work_dir, match["target"], seed, args.mc_samples, args.mc_fit_steps)
            row = {"run": run_dir.name, "target": match["target"], "model": match["model"], "phi": match["phi"],
                   "steps": steps, "seed": seed}  # fmt: skip
            for variant in variants:
                row[variant] = compare(pred[variant], pred["mc"], pred["labels"])
                got = row[variant]
                print(f"{row['run']} ({steps} steps) {variant}: {got['accuracy_mean']:.2f}, MC-{args.mc_samples} "
                      f"{got['accuracy_mc']:.2f}, Δ {got['delta']:+.2f} ± {got['se']:.2f} (n10 {got['n10']}, "
                      f"n01 {got['n01']}, agreement {got['agreement']:.3f})", flush=True)  # fmt: skip
            runs.append(row)
    if not runs:
        which = f" of seeds {args.seeds}" if args.seeds is not None else ""
        sys.exit(f"no finished MetaPerturb run folders{which} under {[str(d) for d in args.work_dirs]}")

    groups: dict[tuple, list[dict]] = {}
    for row in runs:
        groups.setdefault((row["target"], row["model"], row["phi"], row["steps"]), []).append(row)
    table = []
    header = " | ".join(f"{v}: Δ vs MC-{args.mc_samples} (points) | se | agreement" for v in variants)
    print(f"\n| target | model | φ | steps | seeds | {header} |")
    print("|---|---|---|---|---|" + "---|---|---|" * len(variants))
    for (target, model, phi, steps), members in groups.items():
        k = len(members)
        entry = {"target": target, "model": model, "phi": phi, "steps": steps, "seeds": k}
        cells = []
        for variant in variants:
            entry[variant] = {
                "delta": sum(m[variant]["delta"] for m in members) / k,
                "se": math.sqrt(sum(m[variant]["se"] ** 2 for m in members)) / k,
                "agreement": sum(m[variant]["agreement"] for m in members) / k,
            }
            cells.append(f"{entry[variant]['delta']:+.2f} | {entry[variant]['se']:.2f} | "
                         f"{entry[variant]['agreement']:.3f}")  # fmt: skip
        table.append(entry)
        print(f"| {target} | {model} | {phi} | {steps} | {k} | {' | '.join(cells)} |")
    for variant in variants:
        within = sum(abs(e[variant]["delta"]) <= 0.3 for e in table)
        resolved = sum(abs(e[variant]["delta"]) - 2 * e[variant]["se"] <= 0.3 for e in table)
        print(f"{variant}: rows with |Δ| <= 0.3: {within} of {len(table)}; "
              f"|Δ| - 2 se <= 0.3: {resolved} of {len(table)}")  # fmt: skip
    seeds = args.seeds and "seeds" + "+".join(map(str, sorted(set(args.seeds))))
    name = results_name("mean_vs_mc", f"mc{args.mc_samples}", args.mc_fit_steps and f"fit{args.mc_fit_steps}", seeds)
    publish("mean_vs_mc", {"mc_samples": args.mc_samples, "mc_fit_steps": args.mc_fit_steps, "seeds": args.seeds,
                           "work_dirs": [str(d) for d in args.work_dirs], "table": table, "runs": runs},
            results_path(args, name))  # fmt: skip


if __name__ == "__main__":
    main()
