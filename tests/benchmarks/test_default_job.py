"""benchmarks/default_job.py: the budget parser, the φ-against-none verdict, and one tiny budget end to end
(`accelerate launch` twice on the shipped Fashion-MNIST tiny) with its record and the reuse of finished runs."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from default_job import compare, main, parse_budget, recipe_flags_setting

from mp_hub.output_dir import claim_output_dir
from mp_hub.training.threads import usable_cores

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "default_job.py"

TINY = [
    "--max_train_samples", "32", "--max_eval_samples", "20", "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "20", "--eval_mc_samples", "2", "--periodic_eval_mc_samples", "2",
    "--mean_mode_calibration_images", "0", "--model_config_overrides", '{"depth": 8}',
]  # fmt: skip


def test_parse_budget():
    assert parse_budget("2000x32") == (2000, 32)
    for bad in ("2000", "2000x", "x32", "0x32", "2000x0", "-1x32", "2000x32x1", "1e3x32"):
        with pytest.raises(argparse.ArgumentTypeError, match="STEPSxIMAGE_SIZE"):
            parse_budget(bad)


def _run(accuracy, ece, nll, wall=100.0):
    return {"eval_accuracy": accuracy, "eval_ece": ece, "eval_nll": nll, "wall_s": wall}


def test_the_record_name_holds_the_recipe_flags():
    assert recipe_flags_setting([]) is None
    assert recipe_flags_setting(["--channels_last"]) == "with_channels_last"
    assert recipe_flags_setting(["--learning_rate", "3e-3"]) == "with_learning_rate+3e-3"
    tiny = recipe_flags_setting(TINY)  # braces, spaces and length: a digest, one per set of flags
    assert tiny.startswith("flags") and len(tiny) == 13 and tiny != recipe_flags_setting(TINY[:-2])


@pytest.mark.parametrize(
    ("phi", "wanted"),
    [
        (_run(0.825, 0.02, 0.50), True),  # 0.5 points below none, better calibrated: wanted
        (_run(0.815, 0.02, 0.50), False),  # 1.5 points below none
        (_run(0.84, 0.05, 0.50), False),  # ECE not lower
        (_run(0.84, 0.02, 0.60), False),  # NLL not lower
    ],
)
def test_compare_says_whether_phi_is_wanted(phi, wanted):
    none = _run(0.83, 0.05, 0.55)
    verdict = compare(phi, none, time_goal_s=240)
    assert verdict["wanted"] is wanted
    assert verdict["accuracy_gap_points"] == pytest.approx(100 * (phi["eval_accuracy"] - 0.83))
    assert verdict["within_time_goal"]
    assert not compare(_run(0.83, 0.02, 0.5, wall=241.0), none, time_goal_s=240)["within_time_goal"]


def test_default_job_runs_both_regularizers_and_reuses_finished_runs(run_script, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # removed for the runs: accelerate would take its threads from it
    work = tmp_path / "work"
    report, path = run_script("default_job.py", "--budgets", "2x16", "--seeds", "3", "--work_dir", str(work), *TINY)
    assert path.name == f"default_job-2x16-seeds3-jobs2-{recipe_flags_setting(TINY)}.json"
    assert json.loads(path.read_text()) == report
    (row,) = report["rows"]
    assert (row["budget"], row["seed"]) == ("2x16", 3)
    for regularizer in ("metaperturb", "none"):
        run = row[regularizer]
        assert 0 <= run["eval_accuracy"] <= 1 and run["eval_nll"] > 0 and run["wall_s"] > 0
        log = (work / f"2x16-{regularizer}-seed3" / "log.txt").read_text()
        if usable_cores() >= 2:  # the recipe's hint, printed where a core is left idle
            assert "computing on 1 CPU thread(s)" in log  # accelerate's default, as a user's no-flag launch gets
    assert row["accuracy_gap_points"] == pytest.approx(
        100 * (row["metaperturb"]["eval_accuracy"] - row["none"]["eval_accuracy"]), abs=0.01
    )
    assert report["recipe_flags"] == TINY
    again, _ = run_script("default_job.py", "--budgets", "2x16", "--seeds", "3", "--work_dir", str(work), *TINY)
    assert again["rows"] == report["rows"]  # read back from each run's job.json, not run again


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budgets", "2x16", "2x16"], "must not repeat"),
        (["--seeds", "0", "0"], "must not repeat"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--max_train_steps", "5"], "--max_train_steps is set by this script"),
        (["--seed=1"], "--seed is set by this script"),
        (["--time_goal_s", "0"], "--time_goal_s must be > 0"),
    ],
)
def test_bad_arguments_are_refused(argv, message, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["default_job.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_work_dir_in_use_is_refused(tmp_path):
    """A second script on a --work_dir would start the first one's unfinished runs again: it is refused."""
    work = tmp_path / "work"
    with claim_output_dir(work):
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--budgets", "2x16", "--seeds", "0", "--work_dir", str(work), *TINY],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0 and f"{work} is in use" in done.stderr, done.stderr
    assert "choose another --work_dir" in done.stderr, done.stderr
    assert not list(work.glob("2x16-*"))  # no run was started
