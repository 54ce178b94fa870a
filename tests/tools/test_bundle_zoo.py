"""tools/bundle_zoo.py, the maintainers' zoo bundler: a Hub-ready folder whose card and provenance hold the
selection and the benchmark records that benchmarks/select_phi.py and transfer_gain.py write."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import bundle_zoo  # noqa: E402

from mp_hub import MetaPerturb  # noqa: E402

SELECTION = {
    "rule": "highest MC accuracy", "validation_target": "MNIST train split", "max_train_steps": 2,
    "eval_mc_samples": 1, "scores": {"a": {"accuracy": 0.5, "ece": 0.1}, "b": {"accuracy": 0.75, "ece": 0.2}},
    "selected": "b",
}  # fmt: skip
ROW = {"target": "mnist", "model": "resnet20", "seeds": 3, "accuracy_mc": (0.9512, 0.01), "ece_mc": (0.05, 0.01)}
BENCHMARK = {
    "max_train_steps": 200, "batch_size": 64, "eval_mc_samples": 100,
    "table": [{**ROW, "regularizer": "none"}, {**ROW, "regularizer": "metaperturb:tiny-phi"}],
}  # fmt: skip


def test_bundles_a_phi_with_its_selection_and_benchmark(tmp_path):
    phi_dir = MetaPerturb().save_pretrained(tmp_path / "run" / "phi")
    out = bundle_zoo.bundle(
        phi_dir, "tiny-phi", selection=SELECTION, benchmark=BENCHMARK, notes="## Findings", out_dir=tmp_path / "zoo"
    )
    assert out == tmp_path / "zoo" / "tiny-phi" and (out / "config.json").is_file()
    provenance = MetaPerturb.from_pretrained(out).config.provenance
    assert provenance["zoo_name"] == "tiny-phi" and provenance["selection"]["selected"] == "b"
    # the model index holds this φ's rows only: accuracy and ECE of its one ResNet row
    assert [(r["metric_type"], r["metric_value"]) for r in provenance["results"]] == [("accuracy", 0.9512),
                                                                                       ("ece", 0.05)]  # fmt: skip
    card = (out / "README.md").read_text()
    assert "| b | 75.0 | 20.0 | selected |" in card and "| mnist | resnet20 | none | 3 | 95.12 ± 1.00 |" in card
    assert "## Findings" in card
