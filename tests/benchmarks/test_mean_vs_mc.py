"""benchmarks/mean_vs_mc.py reuses cached predictions only when they are of the run now in the folder."""

import os

import mean_vs_mc
import torch


def test_cached_predictions_belong_to_the_run_now_in_the_folder(tmp_path):
    results = tmp_path / "all_results.json"
    results.write_text("{}")
    cache = tmp_path / "run-mean.pt"
    torch.save({"source": "a", "mean": torch.ones(2)}, cache)
    assert torch.equal(mean_vs_mc._load_cache(cache, results, "a")["mean"], torch.ones(2))
    assert mean_vs_mc._load_cache(cache, results, "b") == {}  # the folder was trained again
    assert mean_vs_mc._load_cache(tmp_path / "none.pt", results, "a") == {}
    # a file from before sources were recorded: kept if written after the results, dropped if before them
    torch.save({"mean": torch.ones(2)}, cache)
    os.utime(results, (0, 0))
    assert "mean" in mean_vs_mc._load_cache(cache, results, "a")
    os.utime(cache, (0, 0))
    os.utime(results, None)
    assert mean_vs_mc._load_cache(cache, results, "a") == {}


def test_compare_counts_the_images_each_gets_right():
    def predicting(classes):
        return torch.nn.functional.one_hot(torch.tensor(classes), 2).float() * 0.8 + 0.1

    labels = torch.tensor([0, 1, 1, 0])
    got = mean_vs_mc.compare(predicting([0, 1, 0, 0]), predicting([0, 0, 1, 1]), labels)  # right: {0, 1, 3}, {0, 2}
    assert (got["n10"], got["n01"], got["images"]) == (2, 1, 4) and got["delta"] == 25.0
    assert got["accuracy_mean"] == 75.0 and got["accuracy_mc"] == 50.0 and got["agreement"] == 0.25
    assert got["se"] > 0


def test_only_finished_phi_runs_of_the_seeds_asked_for_are_compared(tmp_path):
    phi = "metaperturb-glyphs10-resnet20-b128-750-seed1"
    names = [f"mnist-resnet20-{phi}-s{seed}" for seed in (0, 1, 2)]
    names += [f"mnist-vit-{phi}-s0", "mnist-resnet20-none-none-s0", f"mnist-resnet20-{phi}-s0-kappa0.1"]
    for name in [*names, f"mnist-resnet20-{phi}-s3"]:  # seed 3 has not finished
        (tmp_path / "runs" / name).mkdir(parents=True)
        if not name.endswith("s3"):
            (tmp_path / "runs" / name / "all_results.json").write_text("{}")
    every = [run.name for run, _ in mean_vs_mc.finished_phi_runs(tmp_path)]
    assert every == sorted([names[0], names[1], names[2], names[3]])  # no baseline, ablation or unfinished run
    chosen = mean_vs_mc.finished_phi_runs(tmp_path, seeds=[0, 2])
    assert [run.name for run, _ in chosen] == sorted([names[0], names[2], names[3]])
    assert {match["seed"] for _, match in chosen} == {0, 2}
