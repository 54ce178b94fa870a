"""benchmarks/robustness.py: end to end on a fabricated transfer_gain work dir (tiny models, 8×8 images), and its
table maths."""

import json
from argparse import Namespace
from pathlib import Path

import pytest
import robustness
import torch
import transfer_gain

import mp_hub
from mp_hub.models import model_from_type
from mp_hub.zoo import DEFAULT_PHI

CLASSES = 4


def tiny_model():
    return model_from_type("cifar_resnet", CLASSES, 8, depth=8, hidden_sizes=[4, 4, 4])


def fabricate(work, target="mnist", seeds=(0, 1)):
    """<work>/decoded/<target>.pt (12 normalised 8×8 images, 4 classes) and a saved run per regularizer and seed:
    untrained tiny CIFAR ResNets, plain or with φ attached and calibrated, as transfer_gain.py leaves them."""
    torch.manual_seed(0)
    (work / "decoded").mkdir(parents=True)
    images = torch.rand(12, 3, 8, 8) * 2 - 1
    torch.save((images, torch.arange(12) % CLASSES), work / "decoded" / f"{target}.pt")
    args = Namespace(work_dir=work)
    for seed in seeds:
        for name in transfer_gain.REGULARIZERS:
            kind, phi = robustness.phi_of(name, work, DEFAULT_PHI)
            folder = transfer_gain.run_dir(args, target, kind, phi, seed, "resnet20")
            model = tiny_model()
            if kind == "metaperturb":
                handle = mp_hub.attach(model, mp_hub.MetaPerturb.from_pretrained(DEFAULT_PHI))
                handle.calibrate_mean_mode([images])
                handle.save_pretrained(folder)
            else:
                model.save_pretrained(folder)
            (folder / "all_results.json").write_text(json.dumps({"train_steps": 7}))


def run_benchmark(monkeypatch, *args) -> tuple[dict, Path]:
    """benchmarks/robustness.py's main in this process (torch and transformers are imported already): its record."""
    monkeypatch.setattr("sys.argv", ["benchmarks/robustness.py", *map(str, args)])
    robustness.main()
    files = list(Path(args[args.index("--results_dir") + 1]).glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), files[0]


def test_a_fabricated_benchmark_writes_its_table_and_reuses_its_runs(monkeypatch, tmp_path, commit_check):
    work = tmp_path / "work"
    fabricate(work)
    tiny = ["--work_dir", work, "--targets", "mnist", "--seeds", "0", "1", "--images", "8", "--attacks",
            "linf:8/255,l2:0.5", "--steps", "2", "--eot_samples", "2", "--mc_samples", "2"]  # fmt: skip
    record, path = run_benchmark(monkeypatch, *tiny, "--results_dir", tmp_path / "first")
    assert path.name.startswith("robustness-mnist-train7-steps2-eot2-n8-seeds0+1-attacks")
    assert commit_check(record["commit"]) and record["benchmark"] == "robustness"
    groups = {(e["regularizer"], e["mode"]): e for e in record["table"]}
    assert set(groups) == {("none", "plain"), ("dropblock", "plain"), ("zoo", "mc"), ("zoo", "mean"),
                           ("official", "mc"), ("official", "mean")}  # fmt: skip
    for entry in groups.values():
        assert entry["seeds"] == 2 and set(entry) >= {"clean", "linf:8/255", "l2:0.5"}
    assert all(row["samples"] == 8 for row in record["rows"]) and record["runs_evaluated"] == 8
    assert {(g["regularizer"], g["mode"]) for g in record["gains"]} == set(groups) - {("none", "plain")}
    zoo_mc = next(r for r in record["rows"] if r["regularizer"] == "zoo" and r["mode"] == "mc")
    assert (zoo_mc["eot_samples"], zoo_mc["mc_samples"]) == (2, 2)  # φ in MC mode: EoT and MC scoring
    plain = next(r for r in record["rows"] if r["mode"] == "plain")
    assert (plain["eot_samples"], plain["mc_samples"]) == (1, 1)
    assert len(list((work / "robustness").glob("*.json"))) == 8  # one cache file per run

    def attack_again(*args, **kwargs):
        raise AssertionError("a cached run was attacked again")

    monkeypatch.setattr(robustness, "evaluate_adversarial", attack_again)
    again, _ = run_benchmark(monkeypatch, *tiny, "--results_dir", tmp_path / "second")
    assert again["rows"] == record["rows"]


def test_the_record_names_a_phi_other_than_the_default_zoo_one():
    settings = dict(targets=["mnist"], steps=10, relative_step=robustness.PAPER_RELATIVE_STEP, eot_samples=2,
                    images=200, regularizers=list(transfer_gain.REGULARIZERS), seeds=[0, 1, 2],
                    attacks=robustness.DEFAULT_ATTACKS, zoo_phi=DEFAULT_PHI)  # fmt: skip
    assert (
        robustness.results_file_name(Namespace(**settings), {2000})
        == "robustness-mnist-train2000-steps10-eot2-n200.json"
    )
    other = Namespace(**{**settings, "zoo_phi": "candidates/glyphs10-seed1"})
    assert robustness.results_file_name(other, {2000}) == (
        "robustness-mnist-train2000-steps10-eot2-n200-phi_glyphs10-seed1.json"
    )


def test_gains_over_none_and_when_they_are_significant():
    table = [
        {"target": "t", "regularizer": "none", "mode": "plain", "seeds": 3, "clean": (0.8, 0.01)},
        {"target": "t", "regularizer": "zoo", "mode": "mc", "seeds": 3, "clean": (0.9, 0.01)},
        {"target": "t", "regularizer": "dropblock", "mode": "plain", "seeds": 3, "clean": (0.805, 0.02)},
        {"target": "t", "regularizer": "official", "mode": "mc", "seeds": 1, "clean": (0.7, 0.0)},
    ]
    got = {g["regularizer"]: g["clean"] for g in robustness.gains(table, ["clean"])}
    assert got["zoo"]["gain_points"] == pytest.approx(10.0) and got["zoo"]["significant"] is True
    assert got["dropblock"]["significant"] is False
    assert got["official"]["significant"] is None  # one seed: no spread to judge by


def test_no_finished_runs_or_an_unbalanced_image_count_stop_the_benchmark(tmp_path, monkeypatch):
    fabricate(tmp_path, seeds=())
    with pytest.raises(SystemExit, match="multiple of mnist's 4 classes"):
        robustness.attacked_images(tmp_path, "mnist", 10)
    monkeypatch.setattr("sys.argv", ["robustness.py", "--work_dir", str(tmp_path), "--targets", "mnist"])
    with pytest.raises(SystemExit, match="no finished runs under"):
        robustness.main()
