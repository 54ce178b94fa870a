"""benchmarks/transfer_gain.py reuses finished work only when it is the work asked for (a run, by its command),
names its results file by the table's configuration, and (slow) runs end to end on ../shared's data, recording
each φ's goal check, followed by benchmarks/mean_vs_mc.py on its runs."""

import json
from argparse import Namespace
from pathlib import Path

import pytest
import transfer_gain

from mp_hub.zoo import DEFAULT_PHI

ARGS = Namespace(max_train_steps=200, eval_mc_samples=100, batch_size=64, work_dir=Path("w"))


def command(steps: int = 200) -> list[str]:
    args = Namespace(**{**vars(ARGS), "max_train_steps": steps})
    return transfer_gain.transfer_command(args, Path("data/mnist"), "metaperturb", "zoo/phi", 0, "resnet20")


def finish(out: Path, steps: int = 200, mc: int = 100, recorded: list[str] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "all_results.json").write_text(json.dumps({"train_steps": steps, "eval_mc_samples": mc}))
    if recorded is not None:
        (out / transfer_gain.RUN_COMMAND).write_text(json.dumps(recorded))
    return out


def test_the_command_holds_what_makes_a_run_differ():
    assert command(200) != command(1000)
    assert "--perturb_model_id" in command() and "zoo/phi" in command()
    assert "--output_dir" not in command()  # the folder is the run's name, not part of what it is


def test_a_run_is_reused_only_if_its_command_was_this_one(tmp_path):
    assert not transfer_gain.finished(tmp_path / "absent", command(), ARGS)
    assert transfer_gain.finished(finish(tmp_path / "same", recorded=command()), command(), ARGS)
    other = finish(tmp_path / "other", steps=1000, recorded=command(1000))
    with pytest.raises(SystemExit, match=f"{other} holds a finished run made with other settings"):
        transfer_gain.finished(other, command(), ARGS)
    elsewhere = ["/another/checkout/recipes/transfer.py", *command()[1:]]  # a frozen worktree's run: same settings
    assert transfer_gain.finished(finish(tmp_path / "frozen", recorded=elsewhere), command(), ARGS)


def test_a_run_without_a_recorded_command_is_checked_by_its_budget(tmp_path):
    assert transfer_gain.finished(finish(tmp_path / "old"), command(), ARGS)
    with pytest.raises(SystemExit, match=r"\(1000 steps, MC-20\); pass another --work_dir"):
        transfer_gain.finished(finish(tmp_path / "older", steps=1000, mc=20), command(), ARGS)


def test_targets_come_from_the_shared_data_or_a_named_folder(tmp_path):
    for folder in (tmp_path / "shared" / "data" / "mnist", tmp_path / "animals"):
        folder.mkdir(parents=True)
        (folder / "README.md").write_text("card")
    shared = tmp_path / "shared"
    sources = transfer_gain.target_sources(["mnist", "animal_mnist"], [f"animal_mnist={tmp_path / 'animals'}"], shared)
    assert sources == {"mnist": shared / "data" / "mnist", "animal_mnist": tmp_path / "animals"}
    with pytest.raises(SystemExit, match="animal_mnist=DIR"):
        transfer_gain.target_sources(["animal_mnist"], [], shared)
    with pytest.raises(SystemExit, match="NAME=DIR"):
        transfer_gain.target_sources(["mnist"], ["mnist"], shared)
    with pytest.raises(SystemExit, match="does not list"):
        transfer_gain.target_sources(["mnist"], [f"cifar={tmp_path}"], shared)


def test_a_kappa_ablation_is_refused_out_of_range_or_without_a_phi_row():
    def problem(fraction, regularizers=("none", "zoo")):
        args = Namespace(noise_anneal_fraction=fraction, regularizers=list(regularizers))
        return transfer_gain.ablation_problem(args)

    assert problem(None) is None and problem(0.0) is None and problem(1.0) is None
    for bad in (-0.1, 1.5, float("nan")):
        assert "must be in [0, 1], as the recipe's, got" in problem(bad)
    assert "--regularizers must include zoo or official" in problem(0.2, ("none", "dropblock"))
    assert problem(0.2, ("official",)) is None


def test_a_run_folder_name_reads_back_as_what_made_it():
    ablated = Namespace(**{**vars(ARGS), "noise_anneal_fraction": 0.1})
    decayed = Namespace(**{**vars(ablated), "weight_decay": 5e-4})
    for args, phi, kappa, decay in (
        (ARGS, "runs/glyphs10-resnet20-b128-750-seed1", None, None), (ablated, "zoo/phi", 0.1, None),
        (decayed, "zoo/phi", 0.1, 5e-4),
    ):  # fmt: skip
        for regularizer, model in (("metaperturb", "resnet20"), ("none", "vit"), ("dropblock", "resnet20")):
            phi_of_run = phi if regularizer == "metaperturb" else None
            name = transfer_gain.run_dir(args, "fashion_mnist", regularizer, phi_of_run, 2, model).name
            named = transfer_gain.parse_run_name(name)
            assert named == {
                "target": "fashion_mnist", "model": model, "regularizer": regularizer,
                "phi": Path(phi_of_run).name if phi_of_run else "none",
                "kappa": kappa if regularizer == "metaperturb" else None, "weight_decay": decay, "seed": 2,
            }  # fmt: skip
            assert transfer_gain.in_main_table(named) == (named["kappa"] is None and decay is None)
    for other in ("mnist-resnet20-none-none-s0.log", "mnist-resnet50-none-none-s0", "notes"):
        assert transfer_gain.parse_run_name(other) is None


def test_each_table_configuration_has_its_own_results_file():
    default = dict(targets=["fashion_mnist", "mnist"], max_train_steps=200, eval_mc_samples=100,
                   regularizers=list(transfer_gain.REGULARIZERS), no_vit=False, seeds=[0, 1, 2],
                   noise_anneal_fraction=None, zoo_phi=DEFAULT_PHI)  # fmt: skip
    name = transfer_gain.results_file_name(Namespace(**default))
    assert name == "transfer_gain-fashion_mnist+mnist-steps200-mc100.json"
    longer = {**default, "targets": ["fashion_mnist"], "max_train_steps": 1000, "eval_mc_samples": 20,
              "regularizers": ["none", "zoo", "official"], "no_vit": True}  # fmt: skip
    assert transfer_gain.results_file_name(Namespace(**longer)) == (
        "transfer_gain-fashion_mnist-steps1000-mc20-none+zoo+official-novit.json"
    )
    smoke = transfer_gain.results_file_name(Namespace(**{**default, "seeds": [0]}))
    assert smoke.endswith("-seeds0.json")
    ablation = transfer_gain.results_file_name(Namespace(**{**default, "noise_anneal_fraction": 0.2}))
    assert ablation == "transfer_gain-fashion_mnist+mnist-steps200-mc100-kappa0.2.json"
    decayed = transfer_gain.results_file_name(Namespace(**{**default, "weight_decay": 5e-4}))
    assert decayed == "transfer_gain-fashion_mnist+mnist-steps200-mc100-wd0.0005.json"
    other_phi = {**default, "zoo_phi": "runs/phi_candidates/glyphs10-seed1"}  # two φ never share a record
    assert transfer_gain.results_file_name(Namespace(**other_phi)) == (
        "transfer_gain-fashion_mnist+mnist-steps200-mc100-phi_glyphs10-seed1.json"
    )
    no_zoo_row = {**other_phi, "regularizers": ["none", "official"]}  # ... and only a row that uses it names one
    assert transfer_gain.results_file_name(Namespace(**no_zoo_row)) == (
        "transfer_gain-fashion_mnist+mnist-steps200-mc100-phi_glyphs10-seed1-none+official.json"  # the ViT rows
    )
    assert transfer_gain.results_file_name(Namespace(**{**no_zoo_row, "no_vit": True})) == (
        "transfer_gain-fashion_mnist+mnist-steps200-mc100-none+official-novit.json"
    )


def test_a_kappa_ablation_changes_the_phi_runs_only():
    """--noise_anneal_fraction: the φ runs get the flag and folders of their own; the baselines' runs are the main
    table's (same command, same folder), so the ablation reuses them."""
    ablated = Namespace(**{**vars(ARGS), "noise_anneal_fraction": 0.2})
    for regularizer, phi in (("none", None), ("dropblock", None)):
        main = transfer_gain.transfer_command(ARGS, Path("data/mnist"), regularizer, phi, 0, "resnet20")
        assert transfer_gain.transfer_command(ablated, Path("data/mnist"), regularizer, phi, 0, "resnet20") == main
        assert transfer_gain.run_dir(ablated, "mnist", regularizer, phi, 0, "resnet20") == transfer_gain.run_dir(
            ARGS, "mnist", regularizer, phi, 0, "resnet20"
        )
    phi_command = transfer_gain.transfer_command(ablated, Path("data/mnist"), "metaperturb", "zoo/phi", 0, "resnet20")
    assert phi_command == [*command(), "--noise_anneal_fraction", "0.2"]
    folder = transfer_gain.run_dir(ablated, "mnist", "metaperturb", "zoo/phi", 0, "resnet20")
    assert folder.name == "mnist-resnet20-metaperturb-phi-kappa0.2-s0"


def test_the_summary_table_is_what_the_goal_check_reads():
    runs = [{"target": "mnist", "model": "resnet20", "regularizer": regularizer, "seed": seed,
             "accuracy_mc": accuracy + seed / 100, "ece_mc": ece, "nll_mc": ece * 5}
            for seed in (0, 1) for regularizer, accuracy, ece in
            (("none", 0.90, 0.05), ("dropblock", 0.90, 0.04), ("metaperturb:official", 0.91, 0.03),
             ("metaperturb:zoo-phi", 0.92, 0.02))]  # fmt: skip
    table = transfer_gain.summarize(runs[:-1])  # the zoo φ's seed 1 is missing
    goal = transfer_gain.evaluate_goal(table, "metaperturb:zoo-phi", planned_seeds=2)
    assert transfer_gain.phi_labels(table) == ["metaperturb:official", "metaperturb:zoo-phi"]
    assert goal.status == "unsettled" and {c.flag for c in goal.comparisons} == {"seeds 1 vs 2 of 2 planned"}
    goal = transfer_gain.evaluate_goal(transfer_gain.summarize(runs), "metaperturb:zoo-phi", planned_seeds=2)
    assert goal.status == "met" and goal.comparisons[0].phi.accuracy.std == pytest.approx(0.00707, abs=1e-5)


@pytest.mark.slow
def test_a_tiny_benchmark_and_its_mean_vs_mc_comparison_write_their_records(run_script, tmp_path, data_dir):
    work = tmp_path / "work"
    tiny = ["--shared_dir", data_dir.parent, "--work_dir", work, "--targets", "mnist", "--seeds", "0", "--no_vit",
            "--regularizers", "none", "zoo", "--max_train_steps", "1", "--eval_mc_samples", "1"]  # fmt: skip
    if not (data_dir.parent / "reference" / "perturb_750.pth").exists():
        pytest.skip("the authors' φ (../shared/reference/perturb_750.pth) is absent")
    report, path = run_script("transfer_gain.py", *tiny, "--jobs", "1")
    assert path.name == "transfer_gain-mnist-steps1-mc1-none+zoo-novit-seeds0.json"
    assert report["runs_finished"] == report["runs_planned"] == 2
    # the zoo φ's goal check, by its rows' label (no DropBlock or authors' rows here: not met or unsettled)
    assert list(report["goal"]) == [f"metaperturb:{DEFAULT_PHI}"] and report["seeds"] == [0]
    assert report["goal"][f"metaperturb:{DEFAULT_PHI}"]["status"] in ("not met", "unsettled")
    assert json.loads((work / "transfer_gain.json").read_text()) == report  # what the zoo bundler reads
    path.unlink()
    report, path = run_script("mean_vs_mc.py", "--work_dirs", work, "--mc_samples", "2")
    assert path.name == "mean_vs_mc-mc2.json" and len(report["runs"]) == 1


def test_a_weight_decay_ablation_changes_every_run_and_is_checked():
    """--weight_decay: every row (baselines too: the decay is part of their training) gets the recipe flag and a
    folder of its own; a negative or non-finite decay is refused before any run."""
    decayed = Namespace(**{**vars(ARGS), "weight_decay": 5e-4})
    for regularizer, phi in (("none", None), ("metaperturb", "zoo/phi")):
        main = transfer_gain.transfer_command(ARGS, Path("data/mnist"), regularizer, phi, 0, "resnet20")
        ablated = transfer_gain.transfer_command(decayed, Path("data/mnist"), regularizer, phi, 0, "resnet20")
        assert ablated == [*main, "--weight_decay", "0.0005"]
    folder = transfer_gain.run_dir(decayed, "mnist", "none", None, 0, "resnet20")
    assert folder.name == "mnist-resnet20-none-none-wd0.0005-s0"

    def problem(decay):
        return transfer_gain.ablation_problem(Namespace(weight_decay=decay, noise_anneal_fraction=None))

    assert problem(None) is None and problem(0.0) is None and problem(5e-4) is None
    for bad in (-1e-4, float("inf"), float("nan")):
        assert "--weight_decay must be finite and >= 0" in problem(bad)
