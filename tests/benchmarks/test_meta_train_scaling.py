"""benchmarks/meta_train_scaling.py end to end at the smallest settings (three accelerate launches of the
meta-training recipe: slow), writing its record."""

import pytest


@pytest.mark.slow
def test_meta_train_scaling_runs_and_writes_its_record(run_script):
    report, path = run_script("meta_train_scaling.py", "--tasks", "2", "--steps", "1", "--batch_size", "4")
    assert path.name == "meta_train_scaling-tasks2-b4-c2.json"
    for run in (report["one"], report["two"]):
        assert run["task_steps_per_s"] > 0
    assert report["ratio"] == pytest.approx(report["two"]["task_steps_per_s"] / report["one"]["task_steps_per_s"],
                                            abs=1e-3)  # fmt: skip
