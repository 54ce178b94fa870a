"""The long benchmarks reuse finished work only when it is the work asked for: transfer_gain.py's runs (by their
command) and mean_vs_mc.py's cached predictions (by the run they were made from)."""

import json
import os
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import mean_vs_mc  # noqa: E402
import transfer_gain  # noqa: E402

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


def test_a_run_without_a_recorded_command_is_checked_by_its_budget(tmp_path):
    assert transfer_gain.finished(finish(tmp_path / "old"), command(), ARGS)
    with pytest.raises(SystemExit, match=r"\(1000 steps, MC-20\); pass another --work_dir"):
        transfer_gain.finished(finish(tmp_path / "older", steps=1000, mc=20), command(), ARGS)


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
