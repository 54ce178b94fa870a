"""Maintainers' tool: turn a meta-training output into a bundled zoo folder (Hub-ready: weights, config, card).

    python tools/bundle_zoo.py benchmarks/results/phi_candidates/glyphs10-resnet20-b128-750-seed1 \
        metaperturb-glyphs10-resnet20 --selection benchmarks/results/select_phi-<configuration>.json \
        --benchmark benchmarks/results/transfer_gain-<configuration>.json --reproduction benchmarks/reproduce_zoo.sh \
        [--other_budget benchmarks/results/transfer_gain-<the same at another --max_train_steps>.json]

It writes into this checkout's mp_hub/zoo/bundled/ (--out_dir to write elsewhere). Every figure on the card comes
from the JSON records of benchmarks/select_phi.py and benchmarks/transfer_gain.py: the selection table, the
benchmark table (`transfer_gain.benchmark_markdown`) and "What it is good for / Where it was not better", the
φ's rows against no regularizer, DropBlock and the authors' φ in plain sentences with the goal check
(`regularization_goal.py`). A benchmark record with unfinished runs is refused.

    python tools/bundle_zoo.py benchmarks/results/phi_candidates/<candidate> --candidate \
        --selection benchmarks/results/select_phi-<configuration>.json [--benchmark <a record that tested it>]

rewrites a selection candidate's card in place (README.md only): its validation score against the selected φ's,
and what it is good for where a benchmark record tested it. With --benchmark and no --selection it rewrites the
card of an experiment's φ (one that was not a selection candidate) with what the benchmark found.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's mp_hub: the bundled folder is written into it
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmark's table and goal check, as it prints them

from _common import measured_on, write_text_atomic  # noqa: E402
from regularization_goal import (  # noqa: E402
    AT_LEAST_AS_GOOD,
    Goal,
    evaluate_goal,
    good_for,
    not_better,
    not_compared,
    phi_labels,
)
from transfer_gain import TEST_PER_CLASS, TRAIN_PER_CLASS, benchmark_markdown  # noqa: E402

from mp_hub.cards import render_phi_card  # noqa: E402
from mp_hub.errors import ConfigError, DataError  # noqa: E402
from mp_hub.perturb import MetaPerturb  # noqa: E402
from mp_hub.zoo import BUNDLED_DIR  # noqa: E402


def record_source(record: dict) -> str | None:
    """A record's source, `record of commit <12 digits>, <date>[, on <device>]`, or None for a record without its
    commit. The device is named because a CPU rounds the convolutions its own way: scores and ECE move with it."""
    if "commit" not in record:
        return None
    device = measured_on(record)
    return f"record of commit {record['commit'][:12]}, {record['utc'][:10]}{f', on {device}' if device else ''}"


def selection_markdown(selection: dict) -> str:
    source = record_source(selection)
    lines = [
        "## Selection",
        "",
        f"Rule: {selection['rule']}. Validation target: {selection['validation_target']} "
        f"({selection.get('max_train_steps')} steps, MC-{selection.get('eval_mc_samples')}; "
        f"`benchmarks/select_phi.py`{f', {source}' if source else ''}).",
        "",
        "| candidate | validation accuracy (%) | ECE (%) | NLL | |",
        "|---|---|---|---|---|",
    ]
    for candidate, score in selection["scores"].items():
        mark = "selected" if candidate == selection["selected"] else ""
        nll = f"{score['nll']:.3f}" if "nll" in score else "—"  # records before the tie-break had none
        cells = f"{score['accuracy'] * 100:.1f} | {score['ece'] * 100:.1f} | {nll}"
        lines.append(f"| {Path(candidate).name} | {cells} | {mark} |")
    return "\n".join(lines)


def model_index_rows(table: list[dict], phi_label: str, mc_samples: int) -> list[dict]:
    rows = []
    for e in table:
        if e["regularizer"] != phi_label or e["model"] != "resnet20":
            continue
        for metric, key in (("accuracy", "accuracy_mc"), ("ece", "ece_mc"), ("nll", "nll_mc")):
            rows.append(
                dict(
                    dataset_name=f"{e['target']} ({TRAIN_PER_CLASS}/class, ResNet-20 from scratch)",
                    dataset_type=e["target"],
                    metric_type=metric,
                    metric_name=f"{metric} (MC-{mc_samples}, mean of {e['seeds']} seed{'s' * (e['seeds'] != 1)})",
                    metric_value=round(e[key][0], 4),
                )
            )
    return rows


def find_phi_label(table: list[dict], name: str, phi_dir: Path, given: str | None = None) -> str:
    """The regularizer label of this φ's rows: `given`, else `metaperturb:<name>` or `metaperturb:<phi_dir's
    folder name>` (the benchmark labels a φ by the last part of what its --zoo_phi named)."""
    labels = phi_labels(table)
    if given is not None:
        if given not in labels:
            raise ConfigError(f"φ label {given!r} has no ResNet rows in the benchmark; its φ rows: {labels}")
        return given
    found = [label for label in dict.fromkeys((f"metaperturb:{name}", f"metaperturb:{Path(phi_dir).name}"))
             if label in labels]  # fmt: skip
    if len(found) != 1:
        raise ConfigError(
            f"the benchmark has {'no' if not found else 'two'} ResNet rows of φ {name!r} / {Path(phi_dir).name!r} "
            f"({found or 'neither label'}); its φ rows: {labels}: pass --benchmark_label"
        )
    return found[0]


def budget_sentence(benchmark: dict, goal: Goal) -> str:
    """What the card's figures were measured at (records before the images-per-class fields used the constants)."""
    seeds = f"mean ± std over {goal.planned_seeds} seeds" if goal.planned_seeds > 1 else "one seed (no spread measured)"
    source = record_source(benchmark)
    source = f" ({source})" if source else ""
    return (
        f"Measured by `benchmarks/transfer_gain.py`{source}: CIFAR ResNet-20 trained from scratch with "
        f"`recipes/transfer.py` on {benchmark.get('train_images_per_class', TRAIN_PER_CLASS)} training images per "
        f"class of each of {', '.join(goal.targets)}, {benchmark['max_train_steps']:,} steps of batch "
        f"{benchmark['batch_size']}, evaluated on {benchmark.get('test_images_per_class', TEST_PER_CLASS)} test "
        f"images per class with MC-{benchmark['eval_mc_samples']} (the softmax averaged over "
        f"{benchmark['eval_mc_samples']} noisy passes); {seeds}. The figures hold for this budget: at another "
        "(fewer steps, more images, another architecture) the outcome can differ."
    )


GOOD_FOR_HEADING = "What it is good for, and where it was not better"


def goal_markdown(goal: Goal, benchmark: dict, heading: str) -> str:
    """The card's "What it is good for / Where it was not better" section, every figure from `goal`."""
    good, worse, absent = good_for(goal), not_better(goal), not_compared(goal)
    lines = [heading, "", budget_sentence(benchmark, goal), ""]
    lines += ["### What it is good for", ""] + (
        [f"- {s}" for s in good] or ["- In none of accuracy, ECE and NLL, against any baseline on any target."]
    )
    lines += ["", "### Where it was not better", ""]
    lines += [f"- {s}" for s in worse] or ["- Nowhere: it did better in accuracy, ECE and NLL on every target."]
    lines += ["", *absent, ""] if absent else [""]
    lines += [
        "### The goal it was held to",
        "",
        f"Status: **{goal.status}**. Clause by clause ({AT_LEAST_AS_GOOD}; a comparison flagged for unequal "
        "seeds decides no clause):",
        "",
    ]
    lines += [f"- {c.status}: {c.statement}. " + "; ".join(c.evidence) + "." for c in goal.clauses]
    return "\n".join(lines)


RECORD_KEYS = ("table", "max_train_steps", "batch_size", "eval_mc_samples", "runs_planned", "runs_finished")


def check_record(benchmark: dict) -> None:
    """A `benchmarks/transfer_gain.py` record of finished runs, or DataError saying what it is not."""
    absent = [key for key in RECORD_KEYS if key not in benchmark]
    if absent:
        raise DataError(f"the benchmark record lacks {absent}: is it one that benchmarks/transfer_gain.py wrote?")
    if benchmark["runs_finished"] != benchmark["runs_planned"]:
        raise DataError(
            f"the benchmark record holds {benchmark['runs_finished']} of {benchmark['runs_planned']} runs: "
            "a card's figures come from a finished benchmark"
        )


def bundle(
    phi_dir: Path,
    name: str,
    *,
    selection: dict | None = None,
    benchmark: dict | None = None,
    other_budgets: Sequence[dict] = (),
    phi_label: str | None = None,
    reproduction: str | None = None,
    notes: str | None = None,
    out_dir: Path = BUNDLED_DIR,
) -> Path:
    """Save φ from `phi_dir` as `out_dir`/`name` (replacing it) with a card holding what it is good for and where
    it was not better (from `benchmark`'s rows labelled `phi_label`, default: as `find_phi_label` finds them,
    then from each record of `other_budgets`, the same benchmark at another budget), the selection, the benchmark
    table, the reproduction commands and `notes`; returns that folder."""
    phi = MetaPerturb.from_pretrained(phi_dir)
    prov = phi.config.provenance
    prov["zoo_name"] = name
    prov["datasets"] = ["glyphs10"]
    prov["license"] = prov.get("license", "apache-2.0")
    extra, good_for = [], None  # without a benchmark the card says that nothing was measured
    if benchmark:
        label = find_phi_label(benchmark["table"], name, phi_dir, phi_label)
        good_for = "\n\n".join(
            [benchmark_good_for(benchmark, label)]
            + [benchmark_good_for(other, find_phi_label(other["table"], name, phi_dir, phi_label), at_budget=True)
               for other in other_budgets]
        )  # fmt: skip
        prov["results"] = model_index_rows(benchmark["table"], label, benchmark["eval_mc_samples"])
    else:
        if other_budgets:
            raise ConfigError("other budgets' records come after the main benchmark record: pass --benchmark too")
        prov.pop("results", None)  # a re-bundled folder's rows would outlive the record they came from
    if selection:
        prov["selection"] = {k: selection[k] for k in ("rule", "validation_target")}
        # candidates by folder name: the paths are the maintainer's machine's
        prov["selection"]["scores"] = {Path(c).name: score for c, score in selection["scores"].items()}
        prov["selection"]["selected"] = Path(selection["selected"]).name
        if device := measured_on(selection):
            prov["selection"]["measured_on"] = device
        extra.append(selection_markdown(selection))
    if benchmark:
        extra.append(benchmark_markdown(benchmark["table"], benchmark))
    if notes:
        extra.append(notes)
    out = Path(out_dir) / name
    previous = out / "config.json"  # each bundle is a new revision of the zoo entry (the Hub's would be a commit)
    revision = json.loads(previous.read_text())["provenance"].get("zoo_revision", 1) if previous.exists() else 0
    prov["zoo_revision"] = revision + 1
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
            good_for=good_for,
            extra_markdown="\n\n".join(extra) or None,
        ),
    )
    return out


def benchmark_good_for(benchmark: dict, label: str, at_budget: bool = False) -> str:
    """What the φ of rows `label` is good for and where it was not better, from a finished benchmark record (a
    section headed by the record's step budget with `at_budget`)."""
    check_record(benchmark)
    planned = len(benchmark["seeds"]) if "seeds" in benchmark else None  # older records: the rows' most
    heading = (
        f"## At {benchmark['max_train_steps']:,} steps: {GOOD_FOR_HEADING[0].lower()}{GOOD_FOR_HEADING[1:]}"
        if at_budget
        else f"## {GOOD_FOR_HEADING}"
    )
    return goal_markdown(evaluate_goal(benchmark["table"], label, planned_seeds=planned), benchmark, heading)


def candidate_score(selection: dict, phi_dir: Path) -> tuple[dict, dict]:
    """The selection scores of the candidate in `phi_dir` and of the selected φ (matched by folder name: the
    record's paths are the maintainer's machine's); ConfigError when `phi_dir` was not a candidate."""
    by_name = {Path(candidate).name: score for candidate, score in selection["scores"].items()}
    if Path(phi_dir).name not in by_name:
        raise ConfigError(f"{Path(phi_dir).name!r} is not a candidate of the selection record: {sorted(by_name)}")
    return by_name[Path(phi_dir).name], by_name[Path(selection["selected"]).name]


def score_text(score: dict) -> str:
    nll = f", NLL {score['nll']:.3f}" if "nll" in score else ""  # records before the tie-break had none
    return f"{score['accuracy'] * 100:.1f} % (ECE {score['ece'] * 100:.1f} %{nll})"


def candidate_card(
    phi_dir: Path,
    selection: dict | None,
    *,
    benchmark: dict | None = None,
    phi_label: str | None = None,
    reproduction: str | None = None,
) -> Path:
    """Rewrite the card (README.md only) of a selection candidate's φ folder: how it scored on the validation
    target against the selected φ and, with a `benchmark` record that tested it, what it is good for and where it
    was not better. Without a `selection`, the card of an experiment's φ: what the `benchmark` found. Returns the
    card's path."""
    phi_dir = Path(phi_dir)
    if selection is None:
        return experiment_card(phi_dir, benchmark, phi_label=phi_label, reproduction=reproduction)
    mine, selected = candidate_score(selection, phi_dir)
    chosen = Path(selection["selected"]).name == phi_dir.name
    outcome = (
        f"It was selected, with {score_text(mine)}."
        if chosen
        else f"It was not selected: {score_text(mine)}, against {score_text(selected)} for the selected φ "
        f"`{Path(selection['selected']).name}`."
    )
    validation = (
        f"One of the {len(selection['scores'])} candidates of a selection (`benchmarks/select_phi.py`; rule: "
        f"{selection['rule']}; validation target: {selection['validation_target']}, "
        f"{selection['max_train_steps']} steps, MC-{selection['eval_mc_samples']}). {outcome}"
    )
    if benchmark:
        label = find_phi_label(benchmark["table"], phi_dir.name, phi_dir, phi_label)
        good_for = benchmark_good_for(benchmark, label) + "\n\n### On the validation target\n\n" + validation
    else:
        good_for = f"## What it is good for\n\nNot measured on a transfer benchmark. {validation}"
    extra = [selection_markdown(selection)] + ([benchmark_markdown(benchmark["table"], benchmark)] if benchmark else [])
    return rewrite_card(phi_dir, "a selection candidate", good_for, "\n\n".join(extra), reproduction)


REPRODUCTION = re.compile(r"^## Reproduction\n\n```bash\n(.*?)\n```$", re.MULTILINE | re.DOTALL)


def card_reproduction(card: Path) -> str | None:
    """The commands of a card's "Reproduction" section (what meta_train.py wrote there), or None."""
    found = REPRODUCTION.search(card.read_text(encoding="utf-8")) if card.is_file() else None
    return found.group(1) if found else None


def rewrite_card(phi_dir: Path, what: str, good_for: str, extra_markdown: str, reproduction: str | None) -> Path:
    """Write the card (README.md only) of the φ in `phi_dir`, titled with `what` it is; without new
    `reproduction` commands it keeps the card's own, which exist nowhere else."""
    reproduction = reproduction or card_reproduction(phi_dir / "README.md")
    phi = MetaPerturb.from_pretrained(phi_dir)
    prov = phi.config.provenance
    source = f"{prov.get('source_dataset', 'unknown source')}, {prov.get('architecture', 'unknown architecture')}"
    card = render_phi_card(
        phi.config,
        phi.num_parameters(),
        title=f"MetaPerturb φ `{phi_dir.name}` ({source}): {what}",
        images=sorted(png.name for png in phi_dir.glob("*.png")),
        reproduction=reproduction,
        good_for=good_for,
        extra_markdown=extra_markdown,
    )
    return write_text_atomic(phi_dir / "README.md", card)  # a killed run leaves the previous card whole


def experiment_card(
    phi_dir: Path, benchmark: dict | None, *, phi_label: str | None = None, reproduction: str | None = None
) -> Path:
    """The card of an experiment's φ (not a selection candidate): what the `benchmark` record found for it."""
    if not benchmark:
        raise ConfigError(f"{phi_dir.name}: a card without a selection record needs a benchmark record that tested it")
    label = find_phi_label(benchmark["table"], phi_dir.name, phi_dir, phi_label)
    not_scored = (
        "It was not scored on the zoo's validation target (`benchmarks/select_phi.py`): it is an experiment, not a "
        "selection candidate."
    )
    good_for = benchmark_good_for(benchmark, label) + "\n\n" + not_scored
    return rewrite_card(
        phi_dir, "an experiment", good_for, benchmark_markdown(benchmark["table"], benchmark), reproduction
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="bundle a meta-trained φ into mp_hub/zoo/bundled")
    parser.add_argument("phi_dir", type=Path)
    parser.add_argument("name", nargs="?", help="the zoo name (not with --candidate)")
    parser.add_argument("--selection", type=Path, help="JSON line printed by benchmarks/select_phi.py")
    parser.add_argument("--benchmark", type=Path, help="a record of benchmarks/transfer_gain.py (finished runs only)")
    parser.add_argument(
        "--other_budget",
        type=Path,
        action="append",
        default=[],
        help="a record of the same benchmark at another budget (repeatable): its own section on the card",
    )
    parser.add_argument(
        "--benchmark_label",
        help="this φ's regularizer label in the benchmark (default: metaperturb:NAME or metaperturb:<PHI_DIR's name>)",
    )
    parser.add_argument("--reproduction", type=Path, help="a file with the exact commands")
    parser.add_argument("--notes", type=Path, help="extra markdown for the card, after the benchmark table")
    parser.add_argument("--out_dir", type=Path, default=BUNDLED_DIR, help="where the bundled folder goes")
    parser.add_argument(
        "--candidate",
        action="store_true",
        help="bundle nothing: rewrite PHI_DIR's card as a candidate of --selection (and of --benchmark if given), "
        "or with --benchmark alone as an experiment's",
    )
    args = parser.parse_args()
    if args.candidate == (args.name is not None) or (args.candidate and not (args.selection or args.benchmark)):
        parser.error(
            "give a zoo NAME to bundle, or --candidate with --selection and/or --benchmark to rewrite a φ's card"
        )
    bundling_only = [flag for flag, given in (("--other_budget", args.other_budget), ("--notes", args.notes),
                                              ("--out_dir", args.out_dir != BUNDLED_DIR)) if given]  # fmt: skip
    if args.candidate and bundling_only:
        parser.error(f"{', '.join(bundling_only)}: for bundling only; --candidate rewrites only the candidate's card")
    selection = json.loads(args.selection.read_text()) if args.selection else None
    benchmark = json.loads(args.benchmark.read_text()) if args.benchmark else None
    reproduction = args.reproduction.read_text().strip() if args.reproduction else None
    if args.candidate:
        card = candidate_card(
            args.phi_dir, selection, benchmark=benchmark, phi_label=args.benchmark_label, reproduction=reproduction
        )
        print(f"wrote {card}")
        return
    out = bundle(
        args.phi_dir,
        args.name,
        selection=selection,
        benchmark=benchmark,
        other_budgets=[json.loads(path.read_text()) for path in args.other_budget],
        phi_label=args.benchmark_label,
        reproduction=reproduction,
        notes=args.notes.read_text() if args.notes else None,
        out_dir=args.out_dir,
    )
    print(f"bundled {args.phi_dir} as {out}")


if __name__ == "__main__":
    main()
