"""Maintainers' tool: turn a meta-training output into a bundled zoo folder (Hub-ready: weights, config, card).

    python -m mp_hub.zoo.bundle runs/glyphs10-seed1 metaperturb-glyphs10-resnet20 \
        --selection runs/select_phi.json --benchmark runs/transfer_gain/transfer_gain.json \
        --reproduction reproduce.sh
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..perturb import MetaPerturb
from . import BUNDLED_DIR


def benchmark_markdown(table: list[dict], settings: dict) -> str:
    lines = [
        "## Benchmark: does it regularize?",
        "",
        f"CIFAR ResNet-20 from scratch, 100 training images per class, {settings.get('max_train_steps')} steps of "
        f"batch {settings.get('batch_size')}, 2,000 test images, mean ± std over seeds; accuracy with "
        f"MC-{settings.get('eval_mc_samples')} and with one-pass `mean` mode, calibrated (BatchNorm statistics "
        "of mean-mode activations on the training images, `mp_hub.calibrate_mean_mode`) and not "
        "(`benchmarks/transfer_gain.py`).",
        "",
        "| target | model | regularizer | seeds | acc MC (%) | acc mean (%) | acc mean, uncalibrated (%) "
        "| ECE MC (%) | ECE mean (%) | NLL MC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("accuracy_mc", "accuracy_mean", "accuracy_mean_uncalibrated", "ece_mc", "ece_mean")
    for e in table:
        nll = f"{e['nll_mc'][0]:.3f} ± {e['nll_mc'][1]:.3f}" if "nll_mc" in e else "—"
        cells = " | ".join(_percent(e, key) for key in keys) + f" | {nll}"
        lines.append(f"| {e['target']} | {e['model']} | {e['regularizer']} | {e['seeds']} | {cells} |")
    return "\n".join(lines)


def _percent(entry: dict, key: str) -> str:
    """(mean, std) fractions as "mean ± std" percentages; — where the run had no such figure."""
    return f"{entry[key][0] * 100:.2f} ± {entry[key][1] * 100:.2f}" if key in entry else "—"


def selection_markdown(selection: dict) -> str:
    lines = [
        "## Selection",
        "",
        f"Rule: {selection['rule']}. Validation target: {selection['validation_target']} "
        f"({selection.get('max_train_steps')} steps, MC-{selection.get('eval_mc_samples')}; "
        "`benchmarks/select_phi.py`).",
        "",
        "| candidate | validation accuracy (%) | ECE (%) | |",
        "|---|---|---|---|",
    ]
    for candidate, score in selection["scores"].items():
        mark = "selected" if candidate == selection["selected"] else ""
        lines.append(f"| {candidate} | {score['accuracy'] * 100:.1f} | {score['ece'] * 100:.1f} | {mark} |")
    return "\n".join(lines)


def model_index_rows(table: list[dict], phi_label: str) -> list[dict]:
    rows = []
    for e in table:
        if e["regularizer"] != phi_label or e["model"] != "resnet20":
            continue
        for metric, key in (("accuracy", "accuracy_mc"), ("ece", "ece_mc")):
            rows.append(
                dict(
                    dataset_name=f"{e['target']} (100/class, ResNet-20 from scratch)",
                    dataset_type=e["target"],
                    metric_type=metric,
                    metric_name=f"{metric} (MC, mean of {e['seeds']} seeds)",
                    metric_value=round(e[key][0], 4),
                )
            )
    return rows


def bundle(
    phi_dir: Path,
    name: str,
    *,
    selection: dict | None = None,
    benchmark: dict | None = None,
    reproduction: str | None = None,
    notes: str | None = None,
) -> Path:
    phi = MetaPerturb.from_pretrained(phi_dir)
    prov = phi.config.provenance
    prov["zoo_name"] = name
    prov["datasets"] = ["glyphs10"]
    prov["license"] = prov.get("license", "apache-2.0")
    extra = []
    if selection:
        prov["selection"] = {k: selection[k] for k in ("rule", "validation_target", "scores", "selected")}
        extra.append(selection_markdown(selection))
    if benchmark:
        prov["results"] = model_index_rows(benchmark["table"], f"metaperturb:{name}")
        extra.append(benchmark_markdown(benchmark["table"], benchmark))
    if notes:
        extra.append(notes)
    out = BUNDLED_DIR / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    images = []
    for png in sorted(Path(phi_dir).glob("*.png")):
        shutil.copy(png, out / png.name)
        images.append(png.name)
    phi.save_pretrained(
        out,
        card_extra=dict(
            title=f"MetaPerturb φ `{name}` (glyphs10, CIFAR ResNet-20)",
            repo_id=name,
            images=images,
            reproduction=reproduction,
            extra_markdown="\n\n".join(extra) or None,
        ),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="bundle a meta-trained φ into mp_hub/zoo/bundled")
    parser.add_argument("phi_dir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--selection", type=Path, help="JSON line printed by benchmarks/select_phi.py")
    parser.add_argument("--benchmark", type=Path, help="transfer_gain.json written by benchmarks/transfer_gain.py")
    parser.add_argument("--reproduction", type=Path, help="a file with the exact commands")
    parser.add_argument("--notes", type=Path, help="markdown to add to the card")
    args = parser.parse_args()
    out = bundle(
        args.phi_dir,
        args.name,
        selection=json.loads(args.selection.read_text()) if args.selection else None,
        benchmark=json.loads(args.benchmark.read_text()) if args.benchmark else None,
        reproduction=args.reproduction.read_text().strip() if args.reproduction else None,
        notes=args.notes.read_text() if args.notes else None,
    )
    print(f"bundled {args.phi_dir} as {out}")


if __name__ == "__main__":
    main()
