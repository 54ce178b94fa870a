"""mp_hub.robustness.report: accuracy against ε as a PNG (one panel per norm) and as a Markdown table."""

import pytest
from PIL import Image

from mp_hub.errors import ConfigError
from mp_hub.robustness import RobustnessReport, parse_attack_specs, plot_accuracy_vs_epsilon, robustness_markdown
from mp_hub.robustness.report import curves

SPECS = parse_attack_specs("linf:8/255,linf:2/255,l2:0.5")


def report(clean, accuracies, stochastic=True):
    return RobustnessReport(inference_mode="mc" if stochastic else "mean", stochastic=stochastic, samples=500,
                            clean_accuracy=clean, accuracy=dict(zip(SPECS, accuracies)), steps=200,
                            eot_samples=10 if stochastic else 1, mc_samples=100 if stochastic else 1)  # fmt: skip


def test_curves_start_at_the_clean_accuracy_and_sort_by_epsilon():
    got = curves(report(0.9, [0.3, 0.7, 0.6]))
    assert got["linf"] == ([0.0, 2 / 255, 8 / 255], [0.9, 0.7, 0.3])
    assert got["l2"] == ([0.0, 0.5], [0.9, 0.6])


def test_the_plot_has_a_panel_per_norm(tmp_path):
    reports = {"MC-100": report(0.9, [0.3, 0.7, 0.6]), "mean mode": report(0.88, [0.2, 0.6, 0.5], False)}
    both = plot_accuracy_vs_epsilon(reports, tmp_path / "both.png")
    only_linf = plot_accuracy_vs_epsilon({"MC": RobustnessReport("mc", True, 5, 1.0, {SPECS[0]: 0.4})},
                                         tmp_path / "sub" / "linf.png")  # fmt: skip
    with Image.open(both) as wide, Image.open(only_linf) as narrow:
        assert wide.format == narrow.format == "PNG" and wide.width > 1.5 * narrow.width


def test_the_table_has_a_row_per_attack_and_a_column_per_report():
    text = robustness_markdown({"MC-100": report(0.9, [0.3, 0.7, 0.6]), "mean": report(0.88, [0.2, 0.6, 0.5], False)})
    assert "| attack | MC-100 | mean |" in text and "| clean | 0.9000 | 0.8800 |" in text
    assert "| linf:8/255 | 0.3000 | 0.2000 |" in text and "| l2:0.5 | 0.6000 | 0.5000 |" in text
    assert "gradients averaged over 10 noise draws" in text and "scored by the MC average of 100 passes" in text


def test_no_reports_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="RobustnessReport"):
        plot_accuracy_vs_epsilon({}, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="RobustnessReport"):
        robustness_markdown({"MC": {"linf": 0.3}})
    with pytest.raises(ConfigError, match="no attacked accuracy"):
        plot_accuracy_vs_epsilon({"MC": RobustnessReport("mc", True, 5, 1.0)}, tmp_path / "x.png")
