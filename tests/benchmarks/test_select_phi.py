"""benchmarks/select_phi.py end to end on a tiny MNIST-like train split: the JSON line and the results file, one
run per candidate and settings (never another candidate's or another budget's results), and clear refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from select_phi import best_candidate, candidates_setting

from mp_hub import MetaPerturb

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "select_phi.py"
# the script keeps transfer_gain.py's 100 per class out, then takes 2 x --per_class more
PER_CLASS = 2
TINY = ["--per_class", str(PER_CLASS), "--max_train_steps", "1", "--batch_size", "8", "--eval_mc_samples", "1"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A stand-in for ../shared: data/mnist with a train split of 28×28 grey digits, 10 classes."""
    root = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    per_class = 100 + 2 * PER_CLASS
    images = [PILImage.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(10 * per_class)]
    labels = [c for c in range(10) for _ in range(per_class)]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(c) for c in range(10)])})
    (root / "data" / "mnist" / "data").mkdir(parents=True)
    parquet = root / "data" / "mnist" / "data" / "train-00000-of-00001.parquet"
    Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(parquet))
    return root


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> list[Path]:
    """Two φ folders with the same name (as `runs/seed0/phi` and `runs/seed1/phi` would be)."""
    root = tmp_path_factory.mktemp("candidates")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(MetaPerturb().save_pretrained(root / f"seed{seed}" / "phi"))
    return out


def select(*args, results: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), *map(str, args), "--results_dir", str(results)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_selects_among_candidates_and_reuses_only_identical_runs(tmp_path, shared, candidates, commit_check):
    work, results = tmp_path / "work", tmp_path / "results"
    proc = select(*candidates, *TINY, "--shared_dir", shared, "--work_dir", work, results=results)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "select_phi"
    pair = candidates_setting(candidates)
    assert json.loads((results / f"select_phi-steps1-mc1-pc2-{pair}.json").read_text()) == report
    assert commit_check(report["commit"])
    assert set(report["scores"]) == {str(c) for c in candidates}  # same name, both scored (as given)
    assert report["selected"] in report["scores"]
    assert f"{PER_CLASS}/class train" in report["validation_target"]
    runs = sorted(p.name for p in (work / "runs").iterdir() if p.is_dir())
    assert len(runs) == 2 and all(name.startswith("phi-") for name in runs)

    # another budget: new runs, not the ones above
    proc = select(candidates[0], *TINY[:2], "--max_train_steps", "2", *TINY[4:], "--shared_dir", shared,
                  "--work_dir", work, results=results)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([p for p in (work / "runs").iterdir() if p.is_dir()]) == 3
    assert (results / f"select_phi-steps2-mc1-pc2-{candidates_setting(candidates[:1])}.json").is_file()
    assert (results / f"select_phi-steps1-mc1-pc2-{pair}.json").is_file()  # beside the first budget's, not over it

    # a candidate whose run fails: nothing is selected, and the message names it and its log
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    proc = select(candidates[0], broken, *TINY, "--shared_dir", shared, "--work_dir", work, results=tmp_path / "r")
    assert proc.returncode != 0
    assert "1 of 2 candidate runs failed, nothing selected" in proc.stderr and str(broken) in proc.stderr
    log = Path(proc.stderr.split("see ")[-1].strip())
    assert log.is_file() and log.read_text()  # the recipe's own error is there
    assert "selected" not in proc.stdout and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp, good: [tmp / "missing"], "is not a φ folder (no config.json there)"),
        (lambda tmp, good: [good, good], "a candidate is listed twice"),
        (lambda tmp, good: [good, "--per_class", "0"], "--per_class must be >= 1, got 0"),
    ],
)
def test_refuses_bad_input_before_any_run(tmp_path, candidates, make, message):
    proc = select(*make(tmp_path, candidates[0]), "--work_dir", tmp_path / "work", results=tmp_path / "results")
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()


def test_a_tie_in_accuracy_goes_to_the_lower_nll():
    scores = {"a": {"accuracy": 0.981, "nll": 0.078}, "b": {"accuracy": 0.981, "nll": 0.076}}
    assert best_candidate(scores) == "b"
    assert best_candidate({**scores, "c": {"accuracy": 0.974, "nll": 0.01}}) == "b"  # accuracy first


def test_each_candidate_set_has_its_own_results_file():
    three = [Path(f"runs/glyphs10-seed{seed}") for seed in (0, 1, 2)]
    name = candidates_setting(three)
    assert name.startswith("phi3_") and len(name) == len("phi3_") + 8
    assert candidates_setting([Path("/elsewhere") / p.name for p in reversed(three)]) == name  # names, any order
    assert candidates_setting([*three, Path("runs/glyphs10-1125-seed1")]).startswith("phi4_")
    assert candidates_setting(three[:2]) != candidates_setting(three[1:])
