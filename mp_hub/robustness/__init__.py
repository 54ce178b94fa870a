"""Adversarial robustness: EoT-PGD attacks (L∞, L2) on a perturbed or plain model, the accuracy they leave, and
its plot; the MetaPerturb paper's protocol (docs/robustness.md)."""

from .attacks import PAPER_EOT_SAMPLES, PAPER_RELATIVE_STEP, PAPER_STEPS, eot_pgd
from .evaluate import RobustnessReport, evaluate_adversarial
from .report import plot_accuracy_vs_epsilon, robustness_markdown
from .specs import NORMS, AttackSpec, parse_attack_specs

__all__ = [
    "NORMS",
    "PAPER_EOT_SAMPLES",
    "PAPER_RELATIVE_STEP",
    "PAPER_STEPS",
    "AttackSpec",
    "RobustnessReport",
    "eot_pgd",
    "evaluate_adversarial",
    "parse_attack_specs",
    "plot_accuracy_vs_epsilon",
    "robustness_markdown",
]
