"""benchmarks/meta_train_scaling.py end to end at the smallest settings (three accelerate launches of the
meta-training recipe: slow), writing its record; its launch commands; its refusal of a device it cannot use."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_meta_train_scaling_runs_and_writes_its_record(run_script):
    report, path = run_script("meta_train_scaling.py", "--tasks", "2", "--steps", "1", "--batch_size", "4")
    assert path.name == "meta_train_scaling-tasks2-b4-c2.json"
    for run in (report["one"], report["two"]):
        assert run["task_steps_per_s"] > 0
    assert report["ratio"] == pytest.approx(report["two"]["task_steps_per_s"] / report["one"]["task_steps_per_s"],
                                            abs=1e-3)  # fmt: skip
    assert report["device"] == "cpu" and report["one_compiled"] is None


def test_launch_commands_put_processes_on_cpu_or_one_gpu_each():
    import meta_train_scaling

    cpu_two = meta_train_scaling.launch_command(2, 1, "cpu")
    assert "--multi_gpu" in cpu_two and "--gpu_ids" not in cpu_two
    gpu_two = meta_train_scaling.launch_command(2, 4, "cuda")
    assert gpu_two[gpu_two.index("--gpu_ids") + 1] == "0,1" and "--multi_gpu" in gpu_two
    gpu_one = meta_train_scaling.launch_command(1, 4, "cuda")
    assert gpu_one[gpu_one.index("--gpu_ids") + 1] == "0" and "--multi_gpu" not in gpu_one


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is of a machine without CUDA")
def test_meta_train_scaling_refuses_cuda_without_a_cuda_device(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "meta_train_scaling.py"), "--device", "cuda", "--compile",
               "--results_dir", str(tmp_path)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 2 and "--device 'cuda'" in run.stderr and "sees no CUDA device" in run.stderr
    assert not any(tmp_path.iterdir())
