"""Maintainers' tool: turn a meta-training output into a bundled zoo folder (Hub-ready: weights, config, card).

    python tools/bundle_zoo.py runs/glyphs10-seed1 metaperturb-glyphs10-resnet20 \
        --selection runs/select_phi.json --benchmark runs/transfer_gain/transfer_gain.json \
        --reproduction benchmarks/reproduce_zoo.sh

It writes into this checkout's mp_hub/zoo/bundled/ (--out_dir to write elsewhere); the card's tables are made
from the JSON records of benchmarks/select_phi.py and benchmarks/transfer_gain.py (whose table format,
`transfer_gain.benchmark_markdown`, the card reuses).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's mp_hub: the bundled folder is written into it
sys.path.insert(0, str(ROOT / "benchmarks"))  # transfer_gain's table, as the benchmark prints it

from transfer_gain import benchmark_markdown  # noqa: E402

from mp_hub.perturb import MetaPerturb  # noqa: E402
from mp_hub.zoo import BUNDLED_DIR  # noqa: E402


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
    out_dir: Path = BUNDLED_DIR,
) -> Path:
    """Save φ from `phi_dir` as `out_dir`/`name` (replacing it) with a card holding the selection, the benchmark
    table, the reproduction commands and `notes`; returns that folder."""
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
    out = Path(out_dir) / name
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
    parser.add_argument("--out_dir", type=Path, default=BUNDLED_DIR, help="where the bundled folder goes")
    args = parser.parse_args()
    out = bundle(
        args.phi_dir,
        args.name,
        selection=json.loads(args.selection.read_text()) if args.selection else None,
        benchmark=json.loads(args.benchmark.read_text()) if args.benchmark else None,
        reproduction=args.reproduction.read_text().strip() if args.reproduction else None,
        notes=args.notes.read_text() if args.notes else None,
        out_dir=args.out_dir,
    )
    print(f"bundled {args.phi_dir} as {out}")


if __name__ == "__main__":
    main()
