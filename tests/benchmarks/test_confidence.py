"""benchmarks/confidence.py: the confidence gap's sign says over- or under-confidence, and the run folders read
are the main table's finished runs of the target and seeds asked for."""

import json
from argparse import Namespace
from pathlib import Path

import confidence
import pytest
import torch


def test_the_gap_is_positive_when_over_confident_and_negative_when_under():
    labels = torch.tensor([0, 1, 1, 0])
    sure = torch.tensor([[0.99, 0.01], [0.01, 0.99], [0.99, 0.01], [0.99, 0.01]])  # 3 of 4 right at 0.99
    over = confidence.confidence_summary(sure, labels)
    assert over["accuracy"] == 0.75 and over["mean_confidence"] == pytest.approx(0.99)
    assert over["confidence_gap"] == pytest.approx(0.24) and over["wrong_mean_confidence"] == pytest.approx(0.99)
    unsure = torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.4, 0.6], [0.6, 0.4]])  # all right at 0.6
    under = confidence.confidence_summary(unsure, labels)
    assert under["confidence_gap"] == pytest.approx(-0.4) and under["wrong_mean_confidence"] is None


def test_only_finished_main_table_runs_of_the_target_and_seeds_are_read(tmp_path):
    names = [
        "mnist-resnet20-none-none-s0", "mnist-resnet20-metaperturb-official-s1", "mnist-resnet20-none-none-s2",
        "fashion_mnist-resnet20-none-none-s0", "mnist-resnet20-metaperturb-phi-kappa0.1-s0",
        "mnist-resnet20-dropblock-none-s0", "mnist-resnet20-none-none-wd0.0005-s0",
    ]  # fmt: skip
    for name in names:
        (tmp_path / "runs" / name).mkdir(parents=True)
        if name != "mnist-resnet20-dropblock-none-s0":  # unfinished
            (tmp_path / "runs" / name / "all_results.json").write_text(json.dumps({}))
    found = confidence.run_folders(tmp_path, "mnist", [0, 1])
    expected = ["mnist-resnet20-metaperturb-official-s1", "mnist-resnet20-none-none-s0"]
    assert [folder.name for folder, _ in found] == expected
    named = {"target": "mnist", "model": "resnet20", "regularizer": "metaperturb", "phi": "official", "seed": 1}
    assert found[0][1] == {**named, "kappa": None, "weight_decay": None}
    ablation = confidence.run_folders(tmp_path, "mnist", [0, 1], weight_decay=5e-4)
    assert [folder.name for folder, _ in ablation] == ["mnist-resnet20-none-none-wd0.0005-s0"]


def test_each_seed_set_has_its_own_results_file():
    args = Namespace(target="mnist", mc_samples=20, draws=3, seeds=[0, 1, 2], weight_decay=None)
    none = [(Path("mnist-resnet20-none-none-s0"), {"regularizer": "none", "phi": "none"})]
    assert confidence.results_file_name(args, none) == "confidence-mnist-mc20-draws3.json"
    args.seeds = [0, 1]
    assert confidence.results_file_name(args, none) == "confidence-mnist-mc20-draws3-seeds0+1.json"
    args.weight_decay = 5e-4
    assert confidence.results_file_name(args, none) == "confidence-mnist-mc20-draws3-seeds0+1-wd0.0005.json"


def test_runs_of_other_phis_write_another_file():
    def runs(*phis):
        return [(Path(f"mnist-resnet20-metaperturb-{p}-s{s}"), {"regularizer": "metaperturb", "phi": p})
                for p in phis for s in (0, 1)]  # fmt: skip

    assert confidence.phis_setting([(Path("a"), {"regularizer": "none", "phi": "none"})]) is None
    one, two = confidence.phis_setting(runs("official")), confidence.phis_setting(runs("official", "phi_a"))
    assert one.startswith("phi1_") and two.startswith("phi2_")
    assert confidence.phis_setting(runs("phi_a", "official")) == two  # the order runs are read in does not matter
    assert len({one, two, confidence.phis_setting(runs("official", "phi_b"))}) == 3
    args = Namespace(target="mnist", mc_samples=20, draws=3, seeds=[0, 1, 2], weight_decay=None)
    assert confidence.results_file_name(args, runs("official")) == f"confidence-mnist-mc20-draws3-{one}.json"


def test_a_run_is_labelled_as_transfer_gains_table_labels_its_row():
    assert confidence.run_label({"regularizer": "metaperturb", "phi": "official"}) == "metaperturb:official"
    assert confidence.run_label({"regularizer": "dropblock", "phi": "none"}) == "dropblock"
