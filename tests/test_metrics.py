"""Metrics: the ECE maths against hand-computed values, and the local `evaluate` modules loaded offline."""

import math
import os

import pytest
import torch

from mp_hub.errors import ConfigError, InvalidInputError
from mp_hub.metrics import (
    METRICS_DIR,
    available_metrics,
    expected_calibration_error,
    load_metric,
    plot_reliability_diagram,
    reliability_diagram_data,
)

# Six examples, three classes, 15 bins of width 1/15 (edges k/15), a confidence c goes to bin lower < c <= upper:
#   probs                     conf   bin (lower, upper]   argmax  label  correct
#   [0.25,   0.25,   0.5  ]   0.5    7  (7/15, 8/15]      2       2      yes
#   [0.5,    0.25,   0.25 ]   0.5    7  (7/15, 8/15]      0       1      no
#   [0.75,   0.125,  0.125]   0.75   11 (11/15, 12/15]    0       0      yes
#   [0.125,  0.875,  0.0  ]   0.875  13 (13/15, 14/15]    1       0      no
#   [0.0625, 0.0625, 0.875]   0.875  13 (13/15, 14/15]    2       2      yes
#   [1.0,    0.0,    0.0  ]   1.0    14 (14/15, 1]        0       0      yes
# bin 7:  2 examples, acc 1/2, conf 0.5   -> |gap| 0
# bin 11: 1 example,  acc 1,   conf 0.75  -> |gap| 0.25
# bin 13: 2 examples, acc 1/2, conf 0.875 -> |gap| 0.375
# bin 14: 1 example,  acc 1,   conf 1.0   -> |gap| 0
# ECE = 1/6 * 0.25 + 2/6 * 0.375 = (0.25 + 0.75) / 6 = 1/6
PROBS = [
    [0.25, 0.25, 0.5],
    [0.5, 0.25, 0.25],
    [0.75, 0.125, 0.125],
    [0.125, 0.875, 0.0],
    [0.0625, 0.0625, 0.875],
    [1.0, 0.0, 0.0],
]
LABELS = [2, 1, 0, 0, 2, 0]
HAND_ECE = 1 / 6


def test_ece_hand_computed():
    probs, labels = torch.tensor(PROBS), torch.tensor(LABELS)
    assert expected_calibration_error(probs, labels) == pytest.approx(HAND_ECE, abs=1e-15)
    # One bin: |mean accuracy - mean confidence| = |4/6 - 4.5/6| = 1/12.
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(1 / 12, abs=1e-15)


def test_reliability_data_hand_computed():
    bins = reliability_diagram_data(torch.tensor(PROBS), torch.tensor(LABELS))
    assert len(bins) == 15
    filled = {i: (b.confidence, b.accuracy, b.count) for i, b in enumerate(bins) if b.count}
    assert filled == {7: (0.5, 0.5, 2), 11: (0.75, 1.0, 1), 13: (0.875, 0.5, 2), 14: (1.0, 1.0, 1)}
    assert bins[0].lower == 0.0 and bins[-1].upper == 1.0
    # A confidence on an edge goes to the lower bin: 0.2 = 3/15 is the upper edge of bin 2, (2/15, 3/15].
    uniform = torch.full((1, 5), 0.2, dtype=torch.float64)
    assert reliability_diagram_data(uniform, torch.tensor([0]))[2].count == 1


def test_ece_input_errors():
    with pytest.raises(InvalidInputError, match=r"\(N, C\)"):
        expected_calibration_error(torch.tensor([0.5, 0.5]), torch.tensor([0]))
    with pytest.raises(InvalidInputError, match="labels"):
        expected_calibration_error(torch.tensor(PROBS), torch.tensor([0, 1]))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        expected_calibration_error(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(ConfigError, match="n_bins"):
        expected_calibration_error(torch.tensor(PROBS), torch.tensor(LABELS), n_bins=0)


def test_evaluate_modules_load_offline():
    assert os.environ["HF_EVALUATE_OFFLINE"] == "1"  # set by conftest before any HF import
    import evaluate

    assert available_metrics() == ["accuracy", "ece", "nll"]
    for name in available_metrics():
        module = evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)
        assert isinstance(module, evaluate.Metric) and module.name == name


def test_ece_module_matches_helper():
    ece = load_metric("ece", keep_in_memory=True)
    assert ece.compute(probabilities=PROBS, references=LABELS)["ece"] == pytest.approx(HAND_ECE, abs=1e-15)
    assert ece.compute(probabilities=PROBS, references=LABELS, n_bins=1)["ece"] == pytest.approx(1 / 12, abs=1e-15)
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(200, 10, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 10, (200,), generator=gen)
    got = ece.compute(probabilities=probs.tolist(), references=labels.tolist())["ece"]
    assert got == pytest.approx(expected_calibration_error(probs, labels), abs=1e-12)


def test_accuracy_module():
    accuracy = load_metric("accuracy", keep_in_memory=True)
    # 3 of 5 predictions match: 0 == 0, 2 == 2, 4 == 4 (1 != 3, 1 != 0).
    out = accuracy.compute(predictions=[0, 1, 2, 1, 4], references=[0, 3, 2, 0, 4])
    assert out == {"accuracy": 0.6}


def test_nll_module():
    nll = load_metric("nll", keep_in_memory=True)
    # p(reference) = 0.5, 0.75 and 0.0 (clamped to 1e-12): NLL = (ln 2 + ln 4/3 + 12 ln 10) / 3.
    out = nll.compute(probabilities=[[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]], references=[0, 1, 1])
    assert out["nll"] == pytest.approx((math.log(2) + math.log(4 / 3) + 12 * math.log(10)) / 3, rel=1e-12)
    with pytest.raises(InvalidInputError, match="references"):
        nll.compute(probabilities=[[0.5, 0.5]], references=[2])


def test_load_metric_unknown_name():
    with pytest.raises(ConfigError, match="accuracy, ece, nll") as info:
        load_metric("f1")
    assert "'f1'" in str(info.value)


def test_reliability_png_written(tmp_path):
    path = plot_reliability_diagram(torch.tensor(PROBS), torch.tensor(LABELS), tmp_path / "plots" / "rel.png")
    assert path == tmp_path / "plots" / "rel.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
