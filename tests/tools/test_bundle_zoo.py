"""tools/bundle_zoo.py, the maintainers' zoo bundler: a Hub-ready folder whose card and provenance hold the
selection and the benchmark records that benchmarks/select_phi.py and transfer_gain.py write, and whose card says
what the φ is good for and where it was not better, with the numbers of the record."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import bundle_zoo  # noqa: E402

from mp_hub import MetaPerturb  # noqa: E402
from mp_hub.errors import ConfigError, DataError  # noqa: E402

SELECTION = {
    "rule": "highest MC accuracy", "validation_target": "MNIST train split", "max_train_steps": 2,
    "eval_mc_samples": 1, "scores": {"/home/me/runs/a": {"accuracy": 0.5, "ece": 0.1, "nll": 1.5},
                                     "/home/me/runs/b": {"accuracy": 0.75, "ece": 0.2, "nll": 0.9}},
    "selected": "/home/me/runs/b",
}  # fmt: skip


def row(regularizer: str, accuracy: float, ece: float, nll: float, target: str = "mnist") -> dict:
    return {"target": target, "model": "resnet20", "regularizer": regularizer, "seeds": 3,
            "accuracy_mc": (accuracy, 0.01), "ece_mc": (ece, 0.01), "nll_mc": (nll, 0.01)}  # fmt: skip


BENCHMARK = {
    "max_train_steps": 2000, "batch_size": 64, "eval_mc_samples": 20, "seeds": [0, 1, 2], "runs_planned": 4,
    "runs_finished": 4, "commit": "0123456789abcdef", "utc": "2026-12-06T06:49:54+00:00",
    "table": [row("none", 0.95, 0.05, 0.20), row("dropblock", 0.96, 0.055, 0.15),
              row("metaperturb:official", 0.955, 0.03, 0.14), row("metaperturb:tiny-phi", 0.9612, 0.06, 0.13)],
}  # fmt: skip


def test_bundles_a_phi_with_its_selection_and_benchmark(tmp_path):
    phi_dir = MetaPerturb().save_pretrained(tmp_path / "run" / "phi")
    out = bundle_zoo.bundle(
        phi_dir, "tiny-phi", selection=SELECTION, benchmark=BENCHMARK, notes="## Notes", out_dir=tmp_path / "zoo"
    )
    assert out == tmp_path / "zoo" / "tiny-phi" and (out / "config.json").is_file()
    provenance = MetaPerturb.from_pretrained(out).config.provenance
    assert provenance["zoo_name"] == "tiny-phi" and provenance["selection"]["selected"] == "b"  # no machine paths
    # the model index holds this φ's rows only: accuracy, ECE and NLL of its one ResNet row
    assert [(r["metric_type"], r["metric_value"]) for r in provenance["results"]] == [
        ("accuracy", 0.9612), ("ece", 0.06), ("nll", 0.13)]  # fmt: skip
    assert provenance["results"][0]["metric_name"] == "accuracy (MC-20, mean of 3 seeds)"
    card = (out / "README.md").read_text()
    assert "| b | 75.0 | 20.0 | 0.900 | selected |" in card and "| mnist | resnet20 | none | 3 | 95.00 ± 1.00 |" in card
    # what it is good for and where not, from the record: its budget, then plain sentences with the numbers
    section = card.split("## What it is good for, and where it was not better")[1].split("## Selection")[0]
    assert "(record of commit 0123456789ab, 2026-12-06)" in section  # a record with no host names no CPU
    on_amd = bundle_zoo.benchmark_good_for({**BENCHMARK, "host": {"cpu": "AMD EPYC"}}, "metaperturb:tiny-phi")
    assert "(record of commit 0123456789ab, 2026-12-06, on AMD EPYC)" in on_amd
    assert "100 training images per class of each of mnist, 2,000 steps of batch 64" in section
    assert "200 test images per class with MC-20" in section and "mean ± std over 3 seeds" in section
    good, not_better = section.split("### Where it was not better")
    assert (
        "- On mnist, compared with training with no regularizer, it was more accurate (accuracy 96.12 ± 1.00 % vs "
        "95.00 ± 1.00 %) and had a lower NLL (0.130 ± 0.010 vs 0.200 ± 0.010)." in good
    )
    assert (
        "- On mnist, compared with training with no regularizer, it was not better calibrated (ECE 6.00 ± 1.00 % vs "
        "5.00 ± 1.00 %)." in not_better
    )
    assert "Status: **not met**" in not_better and "- fail: ECE and NLL below none's on every target." in not_better
    assert "- pass: at least as good as DropBlock on every target." in not_better  # ECE worse by half a std
    assert card.index("## Benchmark: does it regularize?") < card.index("## Notes")  # --notes: extra markdown


def test_the_selection_names_the_machine_its_scores_were_measured_on(tmp_path):
    # validation scores move with the CPU's rounding: a selection made on another host than the benchmark says so
    measured = {**SELECTION, "commit": "fedcba9876543210", "utc": "2026-12-07T22:00:00+00:00",
                "host": {"cpu": "AMD EPYC", "cpu_isa": "avx2"}}  # fmt: skip
    phi_dir = MetaPerturb().save_pretrained(tmp_path / "run" / "phi")
    out = bundle_zoo.bundle(phi_dir, "tiny-phi", selection=measured, out_dir=tmp_path / "zoo")
    card = (out / "README.md").read_text()
    assert "`benchmarks/select_phi.py`, record of commit fedcba987654, 2026-12-07, on AMD EPYC (avx2))." in card
    assert MetaPerturb.from_pretrained(out).config.provenance["selection"]["measured_on"] == "AMD EPYC (avx2)"
    bare = bundle_zoo.bundle(phi_dir, "tiny-phi", selection=SELECTION, out_dir=tmp_path / "zoo")
    assert "MC-1; `benchmarks/select_phi.py`)." in (bare / "README.md").read_text()  # no record source, no claim
    assert "measured_on" not in MetaPerturb.from_pretrained(bare).config.provenance["selection"]


def test_each_bundle_is_a_new_revision(tmp_path):
    phi_dir = MetaPerturb().save_pretrained(tmp_path / "run" / "phi")
    revisions = [
        MetaPerturb.from_pretrained(bundle_zoo.bundle(phi_dir, "tiny-phi", out_dir=tmp_path / "zoo")).config.provenance[
            "zoo_revision"
        ]
        for _ in range(2)
    ]
    assert revisions == [1, 2]


def test_the_phi_rows_are_found_by_its_folder_name_or_named(tmp_path):
    phi_dir = MetaPerturb().save_pretrained(tmp_path / "glyphs10-b128-seed1")
    by_folder = {**BENCHMARK, "table": [{**e, "regularizer": e["regularizer"].replace("tiny-phi", phi_dir.name)}
                                        for e in BENCHMARK["table"]]}  # fmt: skip
    out = bundle_zoo.bundle(phi_dir, "zoo-name", benchmark=by_folder, out_dir=tmp_path / "zoo")
    assert len(MetaPerturb.from_pretrained(out).config.provenance["results"]) == 3
    with pytest.raises(ConfigError, match=r"no ResNet rows of φ 'zoo-name' / 'glyphs10-b128-seed1'.*--benchmark_label"):
        bundle_zoo.bundle(phi_dir, "zoo-name", benchmark=BENCHMARK, out_dir=tmp_path / "zoo")
    out = bundle_zoo.bundle(
        phi_dir, "zoo-name", benchmark=BENCHMARK, phi_label="metaperturb:tiny-phi", out_dir=tmp_path / "zoo"
    )
    assert "it was more accurate (accuracy 96.12" in (out / "README.md").read_text()
    with pytest.raises(ConfigError, match="'metaperturb:other' has no ResNet rows"):
        bundle_zoo.bundle(phi_dir, "zoo-name", benchmark=BENCHMARK, phi_label="metaperturb:other", out_dir=tmp_path)


def test_a_partial_record_is_refused_and_no_record_says_so(tmp_path):
    phi_dir = MetaPerturb().save_pretrained(tmp_path / "phi")
    with pytest.raises(DataError, match="holds 3 of 4 runs"):
        bundle_zoo.bundle(phi_dir, "tiny-phi", benchmark={**BENCHMARK, "runs_finished": 3}, out_dir=tmp_path)
    with pytest.raises(DataError, match=r"lacks \['runs_planned', 'runs_finished'\]"):
        incomplete = {k: v for k, v in BENCHMARK.items() if not k.startswith("runs_")}
        bundle_zoo.bundle(phi_dir, "tiny-phi", benchmark=incomplete, out_dir=tmp_path)
    out = bundle_zoo.bundle(phi_dir, "tiny-phi", out_dir=tmp_path / "zoo")
    assert "## What it is good for\n\nNot measured: no transfer benchmark" in (out / "README.md").read_text()
    assert "results" not in MetaPerturb.from_pretrained(out).config.provenance


def candidate_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Two candidate φ folders named as SELECTION's candidates, b the selected one."""
    return tuple(MetaPerturb().save_pretrained(tmp_path / "candidates" / name) for name in ("a", "b"))


def test_a_candidate_card_says_how_it_scored_against_the_selected_phi(tmp_path):
    a, _ = candidate_dirs(tmp_path)
    weights = (a / "model.safetensors").read_bytes()
    card = bundle_zoo.candidate_card(a, SELECTION, reproduction="python recipes/meta_train.py --seed 0").read_text()
    assert "# MetaPerturb φ `a` (unknown source, unknown architecture): a selection candidate" in card
    good_for = card.split("## What it is good for")[1].split("## Selection")[0]
    assert "Not measured on a transfer benchmark. One of the 2 candidates of a selection" in good_for
    assert (
        "It was not selected: 50.0 % (ECE 10.0 %, NLL 1.500), against 75.0 % (ECE 20.0 %, NLL 0.900) for the "
        "selected φ `b`." in good_for
    )
    assert "| a | 50.0 | 10.0 | 1.500 |  |" in card and "python recipes/meta_train.py --seed 0" in card
    assert (a / "model.safetensors").read_bytes() == weights  # the card only
    # rewritten without new commands (a new selection record), the card keeps the ones it has
    card = bundle_zoo.candidate_card(a, SELECTION).read_text()
    assert "## Reproduction\n\n```bash\npython recipes/meta_train.py --seed 0\n```" in card
    with pytest.raises(ConfigError, match=r"'c' is not a candidate of the selection record: \['a', 'b'\]"):
        bundle_zoo.candidate_card(MetaPerturb().save_pretrained(tmp_path / "c"), SELECTION)


def test_a_benchmarked_candidate_card_says_what_it_is_good_for(tmp_path):
    _, b = candidate_dirs(tmp_path)
    table = [{**e, "regularizer": e["regularizer"].replace("tiny-phi", "b")} for e in BENCHMARK["table"]]
    card = bundle_zoo.candidate_card(b, SELECTION, benchmark={**BENCHMARK, "table": table}).read_text()
    section = card.split("## What it is good for, and where it was not better")[1].split("## Selection")[0]
    assert "it was more accurate (accuracy 96.12 ± 1.00 % vs 95.00 ± 1.00 %)" in section
    assert "### On the validation target" in section and "It was selected, with 75.0 %" in section
    assert "## Benchmark: does it regularize?" in card and "Not measured" not in card
    with pytest.raises(DataError, match="holds 3 of 4 runs"):
        bundle_zoo.candidate_card(b, SELECTION, benchmark={**BENCHMARK, "table": table, "runs_finished": 3})


def test_an_experiments_card_says_what_the_benchmark_found_and_that_it_was_not_selected(tmp_path):
    phi_dir = MetaPerturb().save_pretrained(tmp_path / "tiny-phi")
    weights = (phi_dir / "model.safetensors").read_bytes()
    card = bundle_zoo.candidate_card(phi_dir, None, benchmark=BENCHMARK).read_text()
    assert "# MetaPerturb φ `tiny-phi` (unknown source, unknown architecture): an experiment" in card
    section = card.split("## What it is good for, and where it was not better")[1]
    assert "it was more accurate (accuracy 96.12 ± 1.00 % vs 95.00 ± 1.00 %)" in section
    assert "not scored on the zoo's validation target" in section and "## Selection" not in card
    assert "## Benchmark: does it regularize?" in card and (phi_dir / "model.safetensors").read_bytes() == weights
    with pytest.raises(ConfigError, match="needs a benchmark record"):
        bundle_zoo.candidate_card(phi_dir, None)
    tool = Path(bundle_zoo.__file__)
    done = subprocess.run([sys.executable, tool, phi_dir, "--candidate"], capture_output=True, text=True)
    assert done.returncode == 2 and "--candidate with --selection and/or --benchmark" in done.stderr


def test_records_at_other_budgets_get_their_own_sections(tmp_path):
    phi_dir = MetaPerturb().save_pretrained(tmp_path / "run" / "phi")
    table = BENCHMARK["table"][:3] + [row("metaperturb:tiny-phi", 0.90, 0.02, 0.25)]  # less accurate, calibrated
    shorter = {**BENCHMARK, "max_train_steps": 1000, "table": table}
    out = bundle_zoo.bundle(phi_dir, "tiny-phi", benchmark=BENCHMARK, other_budgets=[shorter], out_dir=tmp_path)
    card = (out / "README.md").read_text()
    main, at_1000 = card.split("## At 1,000 steps: what it is good for, and where it was not better")
    assert "2,000 steps of batch 64" in main and "it was more accurate (accuracy 96.12" in main
    assert "1,000 steps of batch 64" in at_1000 and "it was not more accurate" not in main
    assert "compared with training with no regularizer, it was better calibrated (ECE 2.00" in at_1000
    assert "accuracy 90.00 ± 1.00 % vs 95.00 ± 1.00 %" in at_1000.split("### Where it was not better")[1]
    # the model index holds the main record's rows only
    assert [r["metric_value"] for r in MetaPerturb.from_pretrained(out).config.provenance["results"]] == [
        0.9612, 0.06, 0.13]  # fmt: skip
    with pytest.raises(ConfigError, match="pass --benchmark too"):
        bundle_zoo.bundle(phi_dir, "tiny-phi", other_budgets=[shorter], out_dir=tmp_path)


def test_a_score_without_nll_reads_without_it_and_candidate_mode_refuses_bundling_flags(tmp_path):
    assert bundle_zoo.score_text({"accuracy": 0.5, "ece": 0.1}) == "50.0 % (ECE 10.0 %)"  # an older record
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps(SELECTION))
    tool = Path(bundle_zoo.__file__)
    a, _ = candidate_dirs(tmp_path)
    done = subprocess.run([sys.executable, tool, a, "--candidate", "--selection", selection, "--notes", selection],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "--notes: for bundling only" in done.stderr
