"""benchmarks/inference.py: runs end to end and writes its record (tiny settings: figures are not checked), names
its results file by the settings that change the figures, refuses counts it cannot use."""

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from mp_hub import kernels

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_each_configuration_has_its_own_results_file():
    import inference

    base = dict(batch=128, k=10, threads=2, backend="auto", keep_freed_memory=False, omp_passive=False, device="cpu",
                compile=False, compile_backend="inductor")  # fmt: skip
    assert inference.results_file_name(Namespace(**base)) == "inference-b128-k10-t2.json"
    changes = [{}, {"batch": 16}, {"k": 100}, {"threads": 1}, {"backend": "eager"}, {"keep_freed_memory": True},
               {"omp_passive": True}, {"device": "cuda"}, {"compile": True},
               {"compile": True, "compile_backend": "aot_eager"}]  # fmt: skip
    names = [inference.results_file_name(Namespace(**{**base, **change})) for change in changes]
    assert len(set(names)) == len(names)


@pytest.mark.slow
def test_inference_benchmark_runs_reports_every_group_and_writes_its_record(run_script):
    tiny = ("--batch", "4", "--repeats", "2", "--mc-repeats", "1", "--warmup", "0", "--k", "2", "--small-batch", "2")
    report, path = run_script("inference.py", *tiny, "--mc-check", "2")
    assert path.name == "inference-b4-k2-t2.json"
    results = report["results"]
    for name in ("bare", "off", "mean", "mean_uncalibrated", "mc1", "mc_loop", "mc_batched"):
        assert results[f"{name}_paired_q25"] <= results[f"{name}_paired_ratio"] <= results[f"{name}_paired_q75"]
    for name in ("off", "mean", "mc1"):  # each a ratio of its own median to the bare pass's in its group
        assert results[f"{name}_ratio"] == pytest.approx(results[f"{name}_ms"] / results["bare_ms"])
    assert results["mc_loop_ratio"] == pytest.approx(results["mc_loop_ms"] / results["bare_in_mc_group_ms"])
    assert results["bare_in_mc_group_ms"] > 0
    # the kernel comparison ran (and, inside the script, checked that both layouts give the same output)
    assert set(results["per_shape_ms"]) == {"16x32", "32x16", "64x8"}
    if kernels.fused_available():
        assert all("stacked_vs_padded" in shape for shape in results["per_shape_ms"].values())
    assert report["agreement_check"]["draws"] == 2


def test_inference_benchmark_refuses_counts_it_cannot_use(tmp_path):
    for args, message in [
        (("--k", "0"), "--k must be >= 1, got 0"),
        (("--batch", "1"), "--batch must be >= 2, got 1"),
        (("--mc-repeats", "0"), "--mc-repeats must be >= 1, got 0"),
        (("--device", "meta"), "this benchmark runs on cpu or cuda"),
        *([(("--device", "cuda"), "sees no CUDA device")] if not torch.cuda.is_available() else []),
    ]:
        command = [sys.executable, str(BENCHMARKS / "inference.py"), *args, "--results_dir", str(tmp_path)]
        run = subprocess.run(command, capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
    assert not any(tmp_path.iterdir())  # a refused run writes no results
