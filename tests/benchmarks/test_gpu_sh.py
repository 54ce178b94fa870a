"""benchmarks/gpu.sh: one command for every GPU figure; without CUDA it stops at its first script's refusal
(exit 2, the message naming the missing device) and writes nothing; it refuses unknown arguments."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GPU_SH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is of a machine without CUDA")
def test_gpu_sh_refuses_clearly_without_cuda_and_writes_nothing(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}  # the scripts run with this test's interpreter
    run = subprocess.run(["bash", str(GPU_SH), "--results_dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "--device 'cuda'" in run.stderr and "sees no CUDA device" in run.stderr
    assert "gpu.sh: overhead failed (exit 2)" in run.stderr and "== gpu.sh: inference" not in run.stderr
    assert not any(tmp_path.iterdir())


def test_gpu_sh_refuses_an_unknown_argument():
    run = subprocess.run(["bash", str(GPU_SH), "--devices", "cuda"], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown argument '--devices'" in run.stderr
