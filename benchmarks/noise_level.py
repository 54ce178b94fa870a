"""Where does φ's noise go in a trained model? At each site of `transfer_gain.py`'s saved ResNet-20 runs: the size of
the features φ multiplies, how many outputs the clip holds, and how much the multiplier varies between noise draws.

    python benchmarks/noise_level.py --work_dir runs/transfer_gain_2000 --target mnist [--seeds 0 1 2]
                                     [--images 200] [--draws 16]

For each run of the main table in --work_dir (`<target>-resnet20-<regularizer>-<φ>-s<seed>`), one pass over the
first --images test images (<work_dir>/decoded/<target>.pt) gives every site its real input x. Per site, over the
elements x > 0 (a ResNet site's output passes a fused ReLU): their mean, and the share at or above φ's clip value
(`clip_value`, 100). A run with φ has its sites run --draws more times on those same inputs (κ as trained, eval
mode, MC noise). From the multiplier m = y / x: its mean; the share of outputs held at the clip; the share set to
0 (where μ is so negative that softplus(μ + ε) underflows: the feature is switched off); and the spread of m over
the draws relative to its mean (the coefficient of variation, averaged over the elements not switched off), how
much one noisy pass differs from another. In eval mode the channel scale s is fixed, so that spread is the one of
z = softplus(μ + ε) where the clip does not hold the output. A run without φ gets sites at the same places (φ
attached with its noise "off", the identity) only to read their inputs. Prints each run's sites and a table per
regularizer and stage (channel count), and writes
benchmarks/results/noise_level-<target>-train<steps>-n<images>-draws<d>[-phi<n>_<digest>][-seeds<...>][-wd<W>].json
(the digest of the names of the φs read; --weight_decay W: the runs of that `transfer_gain.py` ablation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from _common import add_results_arguments, publish, results_name, results_path, seeds_setting
from confidence import add_saved_runs_arguments, phis_setting, run_label, saved_runs
from robustness import load_model
from transfer_gain import load_calibrated, weight_decay_setting

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mp_hub  # noqa: E402
from mp_hub.site import PerturbSite  # noqa: E402

POSITIVE = 1e-3  # inputs this close to 0 give no multiplier worth reading (y / x in float32)


def site_inputs(model: torch.nn.Module, images: torch.Tensor, seed: int) -> list[tuple[PerturbSite, torch.Tensor]]:
    """Every site of `model` with the input one pass over `images` gives it, in the order the pass reaches them."""
    inputs: dict[PerturbSite, torch.Tensor] = {}
    sites = [module for module in model.modules() if isinstance(module, PerturbSite)]
    hooks = [site.register_forward_hook(lambda site, args, _: inputs.setdefault(site, args[0])) for site in sites]
    try:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            model(pixel_values=images)
    finally:
        for hook in hooks:
            hook.remove()
    return list(inputs.items())


def site_figures(site: PerturbSite, x: torch.Tensor, draws: int) -> dict[str, float]:
    """The site's input figures and, with `draws` > 0, its multiplier's over that many runs on `x`."""
    keep = x > POSITIVE
    figures = {
        "channels": x.shape[1],
        "mean_input": x[keep].mean().item(),
        "input_at_clip": (x[keep] >= site.clip_value).float().mean().item(),
    }
    if draws:
        with torch.no_grad():
            outputs = torch.stack([site(x)[keep] for _ in range(draws)])  # (draws, kept elements)
        multipliers = outputs / x[keep]
        mean = multipliers.mean(dim=0)
        live = mean > 0  # softplus(μ + ε) underflows to 0 where μ is very negative: the feature is switched off
        figures["mean_multiplier"] = mean.mean().item()
        figures["output_at_clip"] = (outputs >= site.clip_value).float().mean().item()
        figures["output_zeroed"] = (outputs == 0).float().mean().item()
        figures["coefficient_of_variation"] = (multipliers.std(dim=0)[live] / mean[live]).mean().item()
    return figures


def run_figures(folder: Path, named: dict, args, images: torch.Tensor) -> list[dict[str, float]]:
    """`site_figures` of every site of one run: its own φ in MC mode, or sites switched off on a run without φ."""
    data_dir = args.work_dir / "data" / args.target
    with_phi = named["regularizer"] == "metaperturb"
    if with_phi:
        model, handle = load_calibrated(folder, data_dir, named["seed"])
        handle.set_inference_mode("mc")
    else:
        model = load_model(folder, named["regularizer"], data_dir, named["seed"])
        mp_hub.attach(model, mp_hub.MetaPerturb(), spatial_norm=32).set_inference_mode("off")
    draws = args.draws if with_phi else 0
    return [site_figures(site, x, draws) for site, x in site_inputs(model, images, named["seed"])]


def stage_summary(rows: list[dict], group: str = "regularizer", count: str = "seeds") -> list[dict]:
    """Per `group` (a regularizer; a meta-training checkpoint) and channel count (a ResNet stage): each figure
    averaged over the stage's sites, then over the group's rows (seeds; tasks), whose number goes under `count`."""
    summary = []
    for label in dict.fromkeys(row[group] for row in rows):
        runs = [row for row in rows if row[group] == label]
        for channels in dict.fromkeys(e["channels"] for e in runs[0]["sites"]):
            per_run = [[e for e in row["sites"] if e["channels"] == channels] for row in runs]
            keys = [key for key in per_run[0][0] if key != "channels"]
            means = {key: statistics.mean(statistics.mean(e[key] for e in sites) for sites in per_run) for key in keys}
            summary.append({group: label, "channels": channels, count: len(runs), **means})
    return summary


def summary_markdown(summary: list[dict], group: str = "regularizer", count: str = "seeds") -> str:
    lines = [
        f"| {group} | channels | {count} | mean x > 0 | x ≥ the clip | outputs at the clip | outputs zeroed | CV |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        at_clip = f"{100 * e['output_at_clip']:.0f} %" if "output_at_clip" in e else "—"
        zeroed = f"{100 * e['output_zeroed']:.0f} %" if "output_zeroed" in e else "—"
        spread = f"{e['coefficient_of_variation']:.2f}" if "coefficient_of_variation" in e else "—"
        lines.append(f"| {e[group]} | {e['channels']} | {e[count]} | {e['mean_input']:.3g} | "
                     f"{100 * e['input_at_clip']:.0f} % | {at_clip} | {zeroed} | {spread} |")  # fmt: skip
    return "\n".join(lines)


def results_file_name(args, train_steps: set[int], folders: list[tuple[Path, dict]]) -> str:
    """noise_level-<target>-train<N>-n<images>-draws<d>[-phi<n>_<digest>][-seeds<...>][-wd<W>].json (N: the runs'
    training steps, as robustness.py names them; the φs read as `confidence.phis_setting` names them): one file per
    configuration, so the runs of two budgets, or of other φs, never share one."""
    return results_name(
        "noise_level", args.target, "train" + "+".join(map(str, sorted(train_steps))), f"n{args.images}",
        f"draws{args.draws}", phis_setting(folders), seeds_setting(args.seeds),
        weight_decay_setting(args.weight_decay),
    )  # fmt: skip


def add_sampling_arguments(parser, images: str) -> None:
    """--images (the first N of `images`) and --draws, checked by `check_sampling`."""
    parser.add_argument("--images", type=int, default=200, help=f"the first N {images}")
    parser.add_argument("--draws", type=int, default=16, help="noise draws per site on the same input")


def check_sampling(parser, args) -> None:
    if args.images < 1 or args.draws < 2:
        parser.error("--images must be >= 1 and --draws >= 2 (a spread needs two draws)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_saved_runs_arguments(parser)
    add_sampling_arguments(parser, "test images")
    add_results_arguments(parser)
    args = parser.parse_args()
    check_sampling(parser, args)
    decoded, folders = saved_runs(parser, args)
    torch.set_num_threads(1)
    images = torch.load(decoded, weights_only=True)[0]
    if args.images > len(images):
        parser.error(f"--images {args.images}: {decoded} holds {len(images)} test images")
    images = images[: args.images]
    rows = []
    for folder, named in folders:
        sites = run_figures(folder, named, args, images)
        label = run_label(named)
        train_steps = json.loads((folder / "all_results.json").read_text())["train_steps"]
        rows.append({"run": folder.name, "regularizer": label, "seed": named["seed"], "train_steps": train_steps,
                     "sites": sites})  # fmt: skip
        cells = [f"{e['mean_input']:.3g} {e['input_at_clip']:.0%}" for e in sites]
        if "coefficient_of_variation" in sites[0]:
            cells = [
                f"{c}; {e['output_at_clip']:.0%} {e['coefficient_of_variation']:.2f}" for c, e in zip(cells, sites)
            ]
        print(f"{label} s{named['seed']}, per site: mean x > 0, share ≥ the clip[; outputs at the clip, CV]")
        print("  " + " | ".join(cells))
    summary = stage_summary(rows)
    print(summary_markdown(summary))
    figures = {"target": args.target, "seeds": args.seeds, "weight_decay": args.weight_decay, "images": len(images),
               "draws": args.draws}  # fmt: skip
    name = results_file_name(args, {row["train_steps"] for row in rows}, folders)
    publish("noise_level", {**figures, "summary": summary, "runs": rows}, results_path(args, name))


if __name__ == "__main__":
    main()
