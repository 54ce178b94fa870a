"""Are models trained with φ more robust to PGD attacks? The MetaPerturb paper's claim (its Figure 6), on the
models that `benchmarks/transfer_gain.py` trained.

    python benchmarks/robustness.py --work_dir runs/transfer_gain_1000 [--steps 200 --eot_samples 10]
    python benchmarks/robustness.py --work_dir W --seeds 0 --images 100 --steps 20 --eot_samples 2   # a smoke run

Reads the finished runs <work_dir>/runs/<target>-resnet20-<regularizer>-<φ>-s<seed> (regularizers none,
DropBlock, the zoo φ, the authors' φ) and attacks the same `--images` test images of each target (class-balanced,
from <work_dir>/decoded/<target>.pt) with EoT-PGD under every `--attacks` spec (ε in [0, 1] pixel space), as
`mp_hub.robustness.evaluate_adversarial` does it: `--steps` steps of `--relative_step`·ε (the paper: 200 of
0.025·ε), the gradient averaged over `--eot_samples` noise draws, the attacked images scored by the MC average of
`--mc_samples` passes. A model with φ is attacked twice: in "mc" mode (the sampled noise, as the paper) and in
one-pass "mean" mode (a deterministic model: plain PGD) with the recipe's calibration; a model without φ once
("plain"). Prints a table of clean and attacked accuracy (mean ± std over seeds) and each regularizer's gain over
`none`, and writes benchmarks/results/robustness-<settings>.json (the last line printed). Each run's figures are
cached in <work_dir>/robustness/ (rerun to resume), tied to its all_results.json and the attack settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from _common import add_results_arguments, publish, results_name, results_path, seeds_setting, write_json_atomic
from transfer_gain import REGULARIZERS, load_calibrated, run_dir, zoo_phi_setting

from mp_hub.data import samples_per_class_subset
from mp_hub.robustness import PAPER_RELATIVE_STEP, evaluate_adversarial, parse_attack_specs
from mp_hub.zoo import DEFAULT_PHI

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ATTACKS = "linf:1/255,linf:2/255,linf:4/255,linf:8/255,l2:0.25,l2:0.5"


def phi_of(regularizer: str, work_dir: Path, zoo_phi: str) -> tuple[str, str | None]:
    """(the recipe's --regularizer, the φ in the run's folder name) of a benchmark regularizer, as transfer_gain."""
    return {"none": ("none", None), "dropblock": ("dropblock", None), "zoo": ("metaperturb", zoo_phi),
            "official": ("metaperturb", str(work_dir / "phi" / "official"))}[regularizer]  # fmt: skip


def attacked_images(work_dir: Path, target: str, images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `images` of the target's test images, `images / classes` per class (the same for every run)."""
    pixel_values, labels = torch.load(work_dir / "decoded" / f"{target}.pt", weights_only=True)
    classes = len(torch.unique(labels))
    if images % classes:
        sys.exit(f"--images must be a multiple of {target}'s {classes} classes, got {images}")
    chosen = samples_per_class_subset(labels, images // classes, seed=0)
    return pixel_values[chosen], labels[chosen]


def load_model(folder: Path, kind: str, data_dir: Path, seed: int) -> torch.nn.Module:
    """A run's model in eval mode: with φ and the recipe's mean-mode calibration, or the plain saved model."""
    if kind == "metaperturb":
        return load_calibrated(folder, data_dir, seed)[0]
    from transformers import AutoModelForImageClassification

    import mp_hub.models  # noqa: F401  (registers the CIFAR models with the Auto classes)

    return AutoModelForImageClassification.from_pretrained(folder).eval()


def attack_run(args, folder: Path, kind: str, name: str, target: str, seed: int, images, labels) -> list[dict]:
    """One row per evaluation mode of one run ("mc" and "mean" with φ, "plain" without), cached."""
    settings = {k: getattr(args, k) for k in ("attacks", "images", "steps", "relative_step", "eot_samples",
                                              "mc_samples")}  # fmt: skip
    source = hashlib.sha256((folder / "all_results.json").read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([settings, source]).encode()).hexdigest()[:12]
    cache = args.work_dir / "robustness" / f"{folder.name}-{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    model = load_model(folder, kind, args.work_dir / "data" / target, seed)
    batches = list(zip(images.split(args.batch_size), labels.split(args.batch_size)))
    train_steps = json.loads((folder / "all_results.json").read_text())["train_steps"]
    rows = []
    for mode in ("mc", "mean") if kind == "metaperturb" else ("plain",):
        started = time.process_time()
        report = evaluate_adversarial(
            model, batches, args.specs, steps=args.steps, eot_samples=args.eot_samples, mc_samples=args.mc_samples,
            inference_mode=None if mode == "plain" else mode, seed=seed, relative_step=args.relative_step,
        )  # fmt: skip
        row = {"run": folder.name, "target": target, "regularizer": name, "mode": mode,
               "seed": seed, "train_steps": train_steps, "samples": report.samples,
               "eot_samples": report.eot_samples, "mc_samples": report.mc_samples,
               "clean": report.clean_accuracy, **{str(s): a for s, a in report.accuracy.items()},
               "cpu_s": round(time.process_time() - started, 1)}  # fmt: skip
        print(f"{folder.name} {mode}: clean {row['clean']:.4f}, "
              + ", ".join(f"{s} {a:.4f}" for s, a in report.accuracy.items()) + f" ({row['cpu_s']} CPU s)",
              flush=True)  # fmt: skip
        rows.append(row)
    write_json_atomic(cache, rows)
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    return tensor.mean().item(), tensor.std().item() if len(values) > 1 else 0.0


def summarize(rows: list[dict], columns: list[str]) -> list[dict]:
    """Per (target, regularizer, mode): seeds and (mean, std) of each accuracy column."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["regularizer"], row["mode"]), []).append(row)
    return [{"target": target, "regularizer": regularizer, "mode": mode, "seeds": len(members),
             **{c: mean_std([m[c] for m in members]) for c in columns}}
            for (target, regularizer, mode), members in groups.items()]  # fmt: skip


def gains(table: list[dict], columns: list[str]) -> list[dict]:
    """Each regularizer's accuracy minus `none`'s on the same target, in points, with the standard error of the
    difference of the two seed means; `significant`: |gain| > 2 se (None with a single seed on either side)."""
    base = {e["target"]: e for e in table if e["regularizer"] == "none"}
    out = []
    for entry in table:
        reference = base.get(entry["target"])
        if entry["regularizer"] == "none" or reference is None:
            continue
        row = {"target": entry["target"], "regularizer": entry["regularizer"], "mode": entry["mode"]}
        for column in columns:
            (mean, std), (base_mean, base_std) = entry[column], reference[column]
            se = math.sqrt(std**2 / entry["seeds"] + base_std**2 / reference["seeds"])
            one_seed = min(entry["seeds"], reference["seeds"]) < 2
            row[column] = {"gain_points": 100 * (mean - base_mean), "se_points": 100 * se,
                           "significant": None if one_seed else abs(mean - base_mean) > 2 * se}  # fmt: skip
        out.append(row)
    return out


def markdown(table: list[dict], gain_rows: list[dict], columns: list[str], args) -> str:
    lines = [f"EoT-PGD, {args.steps} steps of {args.relative_step:g}·ε, EoT {args.eot_samples}, "
             f"MC-{args.mc_samples} scoring, {args.images} test images; accuracy (%) mean ± std over seeds", "",
             "| target | regularizer | eval | seeds | " + " | ".join(columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]  # fmt: skip
    for e in table:
        cells = " | ".join(f"{100 * e[c][0]:.2f} ± {100 * e[c][1]:.2f}" for c in columns)
        lines.append(f"| {e['target']} | {e['regularizer']} | {e['mode']} | {e['seeds']} | {cells} |")
    lines += [
        "",
        "gain over none (points ± se; * where > 2 se)",
        "",
        "| target | regularizer | eval | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for g in gain_rows:
        cells = " | ".join(f"{g[c]['gain_points']:+.2f} ± {g[c]['se_points']:.2f}{'*' if g[c]['significant'] else ''}"
                           for c in columns)  # fmt: skip
        lines.append(f"| {g['target']} | {g['regularizer']} | {g['mode']} | {cells} |")
    return "\n".join(lines)


def results_file_name(args, train_steps: set[int]) -> str:
    """robustness-<targets>-train<N>-steps<S>[-step<r>]-eot<k>-n<images>[-phi_<name>][-<regularizers>][-seeds<...>]
    [-attacks<hash>] (the bracketed parts where they are not the defaults): one file per configuration."""
    return results_name(
        "robustness", "+".join(args.targets), "train" + "+".join(map(str, sorted(train_steps))),
        f"steps{args.steps}", args.relative_step != PAPER_RELATIVE_STEP and f"step{args.relative_step:g}",
        f"eot{args.eot_samples}", f"n{args.images}", zoo_phi_setting(args.zoo_phi, used="zoo" in args.regularizers),
        list(args.regularizers) != list(REGULARIZERS) and "+".join(args.regularizers),
        seeds_setting(args.seeds),
        args.attacks != DEFAULT_ATTACKS and "attacks" + hashlib.sha256(args.attacks.encode()).hexdigest()[:8],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", type=Path, default=ROOT / "runs" / "transfer_gain_1000",
                        help="a --work_dir of benchmarks/transfer_gain.py with finished runs")  # fmt: skip
    parser.add_argument("--targets", nargs="+", default=["fashion_mnist", "mnist"])
    parser.add_argument("--regularizers", nargs="+", choices=REGULARIZERS, default=list(REGULARIZERS))
    parser.add_argument("--zoo_phi", default=DEFAULT_PHI, help="the zoo φ the runs were trained with (its name)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=500, help="test images attacked, class-balanced")
    parser.add_argument("--attacks", default=DEFAULT_ATTACKS, help="norm:ε list, ε in [0, 1] pixel space")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--relative_step", type=float, default=PAPER_RELATIVE_STEP, help="the step, × ε")
    parser.add_argument("--eot_samples", type=int, default=10)
    parser.add_argument("--mc_samples", type=int, default=100, help="passes averaged to score attacked images")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    add_results_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work_dir = args.work_dir.resolve()
    args.specs = parse_attack_specs(args.attacks)
    columns = ["clean", *map(str, args.specs)]
    started = time.time()

    jobs, missing = [], []
    for seed in args.seeds:
        for target in args.targets:
            for name in args.regularizers:
                kind, phi = phi_of(name, args.work_dir, args.zoo_phi)
                folder = run_dir(args, target, kind, phi, seed, "resnet20")
                if (folder / "all_results.json").exists():
                    jobs.append((folder, kind, name, target, seed))
                else:
                    missing.append(folder.name)
    if not jobs:
        sys.exit(f"no finished runs under {args.work_dir / 'runs'} (looked for {missing[:4]}, ...)")
    if missing:
        print(f"{len(missing)} of {len(jobs) + len(missing)} runs are not finished and are left out: {missing}")
    rows, images = [], {}
    for folder, kind, name, target, seed in jobs:
        if target not in images:
            images[target] = attacked_images(args.work_dir, target, args.images)
        rows += attack_run(args, folder, kind, name, target, seed, *images[target])
    table = summarize(rows, columns)
    gain_rows = gains(table, columns)
    print(markdown(table, gain_rows, columns, args))
    summary = {"work_dir": str(args.work_dir), "attacks": args.attacks, "images": args.images, "steps": args.steps,
               "relative_step": args.relative_step, "eot_samples": args.eot_samples, "mc_samples": args.mc_samples,
               "runs_planned": len(jobs) + len(missing), "runs_evaluated": len(jobs),
               "wall_time_s": round(time.time() - started, 1), "table": table, "gains": gain_rows,
               "rows": rows}  # fmt: skip
    name = results_file_name(args, {row["train_steps"] for row in rows})
    publish("robustness", summary, results_path(args, name))


if __name__ == "__main__":
    main()
