"""benchmarks/data_memory.py end to end at the smallest settings (three runs of the transfer recipe on the shipped
Fashion-MNIST tiny: slow), writing its record."""

import pytest

from mp_hub.datasets import FASHION_MNIST_TINY


@pytest.mark.slow
def test_data_memory_runs_and_writes_its_record(run_script):
    report, path = run_script(
        "data_memory.py", "--dataset_dir", FASHION_MNIST_TINY, "--image_size", "16", "--batch_size", "8",
        "--steps", "3", "--warmup_steps", "1", "--eval_samples", "20", "--small_data_samples", "40",
        "--dataloader_num_workers", "1", "--threads", "1", "--label", "tiny",
        "--model_config_overrides", '{"depth": 8}', "--regularizer", "none",
    )  # fmt: skip
    assert path.name == "data_memory-s16-b8-w1-t1-tiny.json"
    long, short, small = report["long"], report["short"], report["small_data"]
    assert (long["train_steps"], short["train_steps"], small["train_steps"]) == (3, 1, 1)
    assert long["train_samples"] == 1000 and small["train_samples"] == 40
    for run in (long, short, small):
        assert 50 < run["peak_rss_mb"] < 4000 and run["peak_tree_pss_mb"] > 0 and run["train_steps_per_second"] > 0
        assert run["peak_worker_rss_mb"] > 0  # the DataLoader worker, measured once it has exited
    assert report["recipe_flags"] == ["--model_config_overrides", '{"depth": 8}', "--regularizer", "none"]
    assert report["steps_per_second"] is None or report["steps_per_second"] > 0
