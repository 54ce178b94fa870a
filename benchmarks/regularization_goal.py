"""Does a φ meet the regularization goal? Its ResNet rows of a `transfer_gain.py` table, target by target, against
training with no regularizer, DropBlock and the authors' φ.

The goal (issue 18, item 4), clause by clause: accuracy ≥ `none`'s on every target within one standard deviation,
and above it on at least half the targets; ECE and NLL below `none`'s on every target; at least as good as
DropBlock on every target; at least as good as the authors' φ on at least half the targets (`AT_LEAST_AS_GOOD`
says what "at least as good" means). A clause passes or fails on like-for-like rows only: a comparison with a row
of fewer seeds than planned, or with unequal seeds, is flagged and leaves the clause unsettled unless the
like-for-like targets decide it. `transfer_gain.py` records and prints the check; `tools/bundle_zoo.py` writes it
into the φ's card as plain sentences (`good_for`, `not_better`, `not_compared`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mp_hub.errors import ConfigError, DataError

MODEL = "resnet20"  # the goal is about the CNN rows: the tiny ViT is a side table
NONE, DROPBLOCK, AUTHORS_PHI = "none", "dropblock", "metaperturb:official"
BASELINES = (NONE, DROPBLOCK, AUTHORS_PHI)
BASELINE_NAMES = {NONE: "training with no regularizer", DROPBLOCK: "DropBlock", AUTHORS_PHI: "the authors' φ"}
METRICS = {"accuracy": "accuracy_mc", "ece": "ece_mc", "nll": "nll_mc"}  # the table's MC figures
AT_LEAST_AS_GOOD = (
    "at least as good as a baseline on a target means worse than it by no more than one standard deviation (the "
    "larger of the two rows' standard deviations over seeds) in each of accuracy, ECE and NLL"
)
PASS, FAIL, UNSETTLED = "pass", "fail", "unsettled"


@dataclass(frozen=True)
class Spread:
    """A figure's mean and standard deviation over seeds (fractions for accuracy and ECE)."""

    mean: float
    std: float


@dataclass(frozen=True)
class Row:
    """One regularizer's ResNet row on one target."""

    label: str
    seeds: int
    accuracy: Spread
    ece: Spread
    nll: Spread


@dataclass(frozen=True)
class Comparison:
    """φ's row against a baseline's on one target. `flag` says why it cannot settle a clause (None: like for like)."""

    target: str
    phi: Row
    baseline: Row
    flag: str | None

    def gain(self, metric: str) -> float:
        """φ's advantage in `metric`: positive where φ is better (higher accuracy, lower ECE or NLL)."""
        delta = getattr(self.phi, metric).mean - getattr(self.baseline, metric).mean
        return delta if metric == "accuracy" else -delta

    def std(self, metric: str) -> float:
        return max(getattr(self.phi, metric).std, getattr(self.baseline, metric).std)

    def better(self, metric: str) -> bool:
        return self.gain(metric) > 0

    def within_one_std(self, metric: str) -> bool:
        """Not worse than the baseline by more than one standard deviation."""
        return self.gain(metric) >= -self.std(metric)

    def at_least_as_good(self) -> bool:
        return all(self.within_one_std(metric) for metric in METRICS)


@dataclass(frozen=True)
class Clause:
    statement: str
    status: str  # PASS, FAIL or UNSETTLED
    evidence: tuple[str, ...]  # per target, the numbers it was decided on


@dataclass(frozen=True)
class Goal:
    phi: str
    targets: tuple[str, ...]
    planned_seeds: int
    comparisons: tuple[Comparison, ...]
    missing: tuple[tuple[str, str], ...]  # (target, baseline) with no baseline row
    clauses: tuple[Clause, ...]

    @property
    def status(self) -> str:
        statuses = {clause.status for clause in self.clauses}
        return "not met" if FAIL in statuses else "unsettled" if UNSETTLED in statuses else "met"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for a benchmark record."""
        return {
            "phi": self.phi,
            "status": self.status,
            "at_least_as_good": AT_LEAST_AS_GOOD,
            "planned_seeds": self.planned_seeds,
            "clauses": [
                {"clause": c.statement, "status": c.status, "evidence": list(c.evidence)} for c in self.clauses
            ],
            "comparisons": [comparison_dict(c) for c in self.comparisons],
            "missing": [{"target": target, "baseline": baseline} for target, baseline in self.missing],
        }


def comparison_dict(c: Comparison) -> dict[str, Any]:
    entry: dict[str, Any] = {"target": c.target, "baseline": c.baseline.label, "seeds": [c.phi.seeds, c.baseline.seeds]}
    for metric in METRICS:
        phi, base = getattr(c.phi, metric), getattr(c.baseline, metric)
        entry[metric] = {"phi": [phi.mean, phi.std], "baseline": [base.mean, base.std], "std": c.std(metric)}
        if metric == "accuracy":
            entry[metric]["delta"] = phi.mean - base.mean
        else:
            entry[metric]["lower"] = "phi" if phi.mean < base.mean else "baseline" if base.mean < phi.mean else "equal"
    entry["flag"] = c.flag
    return entry


def resnet_rows(table: list[dict[str, Any]]) -> dict[tuple[str, str], Row]:
    """(target, regularizer label) → its ResNet row; a row without MC accuracy, ECE or NLL raises DataError."""
    rows = {}
    for entry in table:
        if entry.get("model") != MODEL:
            continue
        absent = [key for key in ("target", "regularizer", "seeds", *METRICS.values()) if key not in entry]
        if absent:
            raise DataError(f"a {MODEL} row of the benchmark table lacks {absent}: {entry}")
        spreads = {metric: Spread(*map(float, entry[key])) for metric, key in METRICS.items()}
        rows[(entry["target"], entry["regularizer"])] = Row(entry["regularizer"], int(entry["seeds"]), **spreads)
    return rows


def phi_labels(table: list[dict[str, Any]]) -> list[str]:
    """The MetaPerturb labels with ResNet rows, in table order."""
    return list(dict.fromkeys(label for _, label in resnet_rows(table) if label.startswith("metaperturb:")))


def seed_flag(phi: Row, baseline: Row, planned: int) -> str | None:
    if phi.seeds < planned or baseline.seeds < planned:
        return f"seeds {phi.seeds} vs {baseline.seeds} of {planned} planned"
    if phi.seeds != baseline.seeds:
        return f"unequal seeds, {phi.seeds} vs {baseline.seeds}"
    return None


def evaluate_goal(table: list[dict[str, Any]], phi_label: str, *, planned_seeds: int | None = None) -> Goal:
    """The goal check of `phi_label`'s ResNet rows in `table` (`transfer_gain.summarize`'s entries).

    `planned_seeds`: how many seeds each row should have (default: the most any ResNet row has); a row with fewer
    is flagged. The authors' φ is not compared with itself (its clause is left out when `phi_label` is it)."""
    rows = resnet_rows(table)
    targets = tuple(target for target, label in rows if label == phi_label)
    if not targets:
        raise ConfigError(f"no {MODEL} rows labelled {phi_label!r} in the table; its φ labels: {phi_labels(table)}")
    planned = planned_seeds if planned_seeds is not None else max(row.seeds for row in rows.values())
    comparisons, missing = [], []
    for baseline in (b for b in BASELINES if b != phi_label):
        for target in targets:
            other = rows.get((target, baseline))
            if other is None:
                missing.append((target, baseline))
            else:
                phi = rows[(target, phi_label)]
                comparisons.append(Comparison(target, phi, other, seed_flag(phi, other, planned)))
    found = {(c.target, c.baseline.label): c for c in comparisons}
    every, half = len(targets), math.ceil(len(targets) / 2)
    specs = [
        (NONE, "accuracy ≥ none's on every target, within one standard deviation", every,
         lambda c: c.within_one_std("accuracy"), ("accuracy",)),
        (NONE, "accuracy above none's on at least half the targets", half, lambda c: c.better("accuracy"),
         ("accuracy",)),
        (NONE, "ECE and NLL below none's on every target", every, lambda c: c.better("ece") and c.better("nll"),
         ("ece", "nll")),
        (DROPBLOCK, "at least as good as DropBlock on every target", every, Comparison.at_least_as_good,
         tuple(METRICS)),
        (AUTHORS_PHI, "at least as good as the authors' φ on at least half the targets", half,
         Comparison.at_least_as_good, tuple(METRICS)),
    ]  # fmt: skip
    clauses = tuple(
        decide(statement, needed, test, metrics, baseline, {t: found.get((t, baseline)) for t in targets})
        for baseline, statement, needed, test, metrics in specs
        if baseline != phi_label
    )
    return Goal(phi_label, targets, planned, tuple(comparisons), tuple(missing), clauses)


def decide(
    statement: str,
    needed: int,
    test: Callable[[Comparison], bool],
    metrics: tuple[str, ...],
    baseline: str,
    per_target: dict[str, Comparison | None],
) -> Clause:
    """PASS when `needed` targets pass `test` like for like, FAIL when too few still can, else UNSETTLED."""
    outcomes = [None if c is None or c.flag else test(c) for c in per_target.values()]
    passed, open_ = outcomes.count(True), outcomes.count(None)
    status = PASS if passed >= needed else FAIL if passed + open_ < needed else UNSETTLED
    evidence = tuple(
        f"{target}: no {baseline} row"
        if c is None
        else f"{target}: {figures(c, metrics)}" + (f" [{c.flag}: does not settle it]" if c.flag else "")
        for target, c in per_target.items()
    )
    return Clause(statement, status, evidence)


def figure(spread: Spread, metric: str, seeds: int) -> str:
    """How a figure reads in a sentence: percentages for accuracy and ECE, ± std only where there were seeds."""
    scale, digits, unit = (1, 3, "") if metric == "nll" else (100, 2, " %")
    std = f" ± {spread.std * scale:.{digits}f}" if seeds > 1 else ""
    return f"{spread.mean * scale:.{digits}f}{std}{unit}"


def versus(c: Comparison, metric: str) -> str:
    """ "84.35 ± 0.40 % vs 83.25 ± 0.60 %": φ's figure, then the baseline's."""
    phi, base = getattr(c.phi, metric), getattr(c.baseline, metric)
    return f"{figure(phi, metric, c.phi.seeds)} vs {figure(base, metric, c.baseline.seeds)}"


def figures(c: Comparison, metrics: tuple[str, ...]) -> str:
    """Each metric's two figures, φ's advantage (points for accuracy and ECE) and the one-std tolerance."""
    parts = []
    for metric in metrics:
        scale, digits = (1, 3) if metric == "nll" else (100, 2)
        name = "accuracy" if metric == "accuracy" else metric.upper()
        advantage, std = c.gain(metric) * scale, c.std(metric) * scale
        parts.append(f"{name} {versus(c, metric)} (φ's advantage {advantage:+.{digits}f}, one std {std:.{digits}f})")
    return ", ".join(parts)


def sentence(c: Comparison, parts: list[str]) -> str:
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    caveat = f" (Not like for like: {c.flag}.)" if c.flag else ""
    return f"On {c.target}, compared with {BASELINE_NAMES[c.baseline.label]}, it {joined}.{caveat}"


def verdicts(c: Comparison) -> tuple[list[str], list[str]]:
    """(what φ did better, what it did not) against one baseline on one target, as predicates with numbers."""
    good, not_better = [], []
    accuracy = f"accuracy {versus(c, 'accuracy')}"
    if c.gain("accuracy") > c.std("accuracy"):
        good.append(f"was more accurate ({accuracy})")
    elif c.within_one_std("accuracy"):
        not_better.append(f"was not measurably more accurate ({accuracy}, within one standard deviation)")
    else:
        not_better.append(f"was less accurate ({accuracy})")
    (good if c.better("ece") else not_better).append(
        f"was {'better' if c.better('ece') else 'not better'} calibrated (ECE {versus(c, 'ece')})"
    )
    (good if c.better("nll") else not_better).append(
        f"had {'a lower' if c.better('nll') else 'no lower'} NLL ({versus(c, 'nll')})"
    )
    return good, not_better


def good_for(goal: Goal) -> list[str]:
    """One sentence per (baseline, target) where φ did better in some figure, with the numbers."""
    return [sentence(c, verdicts(c)[0]) for c in goal.comparisons if verdicts(c)[0]]


def not_better(goal: Goal) -> list[str]:
    """One sentence per (baseline, target) where φ was not better in some figure, with the numbers."""
    return [sentence(c, verdicts(c)[1]) for c in goal.comparisons if verdicts(c)[1]]


def not_compared(goal: Goal) -> list[str]:
    return [
        f"On {target} there is no row of {BASELINE_NAMES[baseline]}: not compared." for target, baseline in goal.missing
    ]


def goal_report(goal: Goal) -> str:
    """The check as `transfer_gain.py` prints it: the status, then each clause with its numbers."""
    lines = [f"goal for {goal.phi} (issue 18, item 4): {goal.status}", f"  ({AT_LEAST_AS_GOOD})"]
    for c in goal.clauses:
        lines.append(f"  [{c.status}] {c.statement}: " + "; ".join(c.evidence))
    return "\n".join(lines)
