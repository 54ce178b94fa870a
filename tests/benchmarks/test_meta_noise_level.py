"""benchmarks/meta_noise_level.py: it rebuilds a meta-training checkpoint's task learners from the source dataset
(refusing one whose tasks differ, or a folder that is not a finished checkpoint) and records every task's sites,
summarised per stage over the tasks."""

import re
import subprocess
import sys
from pathlib import Path

import meta_noise_level
import pytest
from _builders import make_task_dataset, run_meta_train

SCRIPT = Path(meta_noise_level.__file__)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(the tiny source dataset, the step_2 checkpoint of a 2-step run on it: 4 tasks; step_1 is beside it)."""
    workdir = tmp_path_factory.mktemp("meta_noise_level")
    dataset = make_task_dataset(workdir / "tiny")
    out = run_meta_train(dataset, workdir, "run", "--max_train_steps", "2", "--checkpointing_steps", "1")
    return dataset, out / "checkpoints" / "step_2"


def test_every_task_learner_is_read_and_summarised_per_stage(checkpoint, run_script):
    dataset, step_2 = checkpoint
    record, path = run_script(
        "meta_noise_level.py", "--checkpoint", step_2, "--dataset_dir", dataset, "--images", "4", "--draws", "2"
    )
    assert re.fullmatch(r"meta_noise_level-tiny-seed0-run[0-9a-f]{8}-step2-n4-draws2\.json", path.name), path.name
    assert record["steps"] == [2] and record["source"] == "tiny" and record["run"]["seed"] == 0
    assert sorted(row["task"] for row in record["tasks"]) == [0, 1, 2, 3]
    stages = {e["channels"] for row in record["tasks"] for e in row["sites"]}
    assert sorted(e["channels"] for e in record["summary"]) == sorted(stages)
    assert all(e["checkpoint"] == "step 2" and e["tasks"] == 4 for e in record["summary"])
    assert all(0.0 <= e["output_at_clip"] <= 1.0 and e["coefficient_of_variation"] > 0 for e in record["summary"])


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_other_tasks_or_a_folder_that_is_no_checkpoint_are_refused(checkpoint, tmp_path):
    dataset, step_2 = checkpoint
    other = make_task_dataset(tmp_path / "other", classes=10)  # the run's 4 tasks split 8 classes
    done = run("--checkpoint", step_2, "--dataset_dir", other, "--images", "4")
    assert done.returncode == 2 and "other task classes" in done.stderr
    done = run("--checkpoint", step_2.parent, "--dataset_dir", dataset)
    assert done.returncode == 2 and "is not a complete meta_train.py checkpoint" in done.stderr
    done = run("--checkpoint", step_2, "--dataset_dir", dataset, "--images", "1000")
    assert done.returncode == 2 and "validation images" in done.stderr
    done = run("--checkpoint", step_2, "--dataset_dir", tmp_path / "absent")
    assert done.returncode == 2 and "is not a directory" in done.stderr
    done = run("--checkpoint", step_2, step_2, "--dataset_dir", dataset, "--images", "4")
    assert done.returncode == 2 and "folders of the same step ([2, 2])" in done.stderr


def test_the_record_is_named_for_its_run(checkpoint, run_script, tmp_path):
    """Two runs' checkpoints of the same step get two records (the name carries the run's seed and a digest of its
    signature), and checkpoints of two runs do not go into one."""
    dataset, step_2 = checkpoint
    both, path = run_script(
        "meta_noise_level.py", "--checkpoint", step_2.parent / "step_1", step_2, "--dataset_dir", dataset,
        "--images", "4", "--draws", "2",
    )  # fmt: skip
    assert both["steps"] == [1, 2] and "-step1+2-" in path.name
    path.unlink()  # (run_script expects one record in its folder)
    other = run_meta_train(dataset, tmp_path, "other", "--max_train_steps", "1", "--checkpointing_steps", "1",
                           "--seed", "5")  # fmt: skip
    record, other_path = run_script(
        "meta_noise_level.py", "--checkpoint", other / "checkpoints" / "step_1", "--dataset_dir", dataset,
        "--images", "4", "--draws", "2",
    )  # fmt: skip
    assert record["run"]["seed"] == 5 and other_path.name.startswith("meta_noise_level-tiny-seed5-run")
    assert other_path.name.split("-run")[1] != path.name.split("-run")[1]
    done = run("--checkpoint", other / "checkpoints" / "step_1", step_2, "--dataset_dir", dataset, "--images", "4")
    assert done.returncode == 2 and "is of another run" in done.stderr and "seed" in done.stderr
