"""The timing scripts still run end to end and print their JSON line (tiny settings: figures are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mp_hub import kernels
from mp_hub.kernels.fused import PASSES

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *args: str) -> dict:
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_inference_benchmark_runs_and_reports_every_group():
    tiny = ("--batch", "4", "--repeats", "2", "--mc-repeats", "1", "--warmup", "0", "--k", "2", "--small-batch", "2")
    report = run_benchmark("inference.py", *tiny, "--mc-check", "2")
    results = report["results"]
    for name in ("bare", "off", "mean", "mean_uncalibrated", "mc1", "mc_loop", "mc_batched"):
        assert results[f"{name}_paired_q25"] <= results[f"{name}_paired_ratio"] <= results[f"{name}_paired_q75"]
    assert results["bare_in_mc_group_ms"] > 0
    # the kernel comparison ran (and, inside the script, checked that both layouts give the same output)
    assert set(results["per_shape_ms"]) == {"16x32", "32x16", "64x8"}
    if kernels.fused_available():
        assert all("stacked_vs_padded" in shape for shape in results["per_shape_ms"].values())
    assert report["commit"] and report["agreement_check"]["draws"] == 2


@pytest.mark.slow
def test_overhead_benchmark_runs():
    args = ("--steps", "2", "--warmup", "0", "--batch", "4", "--no-memory")
    report = run_benchmark("overhead.py", *args, *(("--breakdown",) if kernels.fused_available() else ()))
    assert report["commit"]
    if kernels.fused_available():  # every pass ran in the timed steps, frozen and trainable
        for result in report["results"].values():
            assert list(result["kernel_ms"]) == list(PASSES) and all(ms > 0 for ms in result["kernel_ms"].values())
            assert result["kernel_total_ms"] == pytest.approx(sum(result["kernel_ms"].values()))


@pytest.mark.slow
def test_overhead_benchmark_compiles_both_models():
    """--compile: a bare and a perturbed model under torch.compile (inductor on CPU here: minutes)."""
    report = run_benchmark(
        "overhead.py", "--steps", "1", "--warmup", "0", "--batch", "2", "--no-memory", "--phi", "frozen", "--compile"
    )
    frozen = report["results"]["frozen"]
    assert report["compile"] and frozen["variants"] == ["bare", "eager", "fused", "bare_compiled", "eager_compiled"]
    assert frozen["bare_compiled_compile_s"] > 0 and frozen["eager_compiled_compile_s"] > 0
    assert frozen["eager_compiled_vs_bare_compiled"] > 0


def test_overhead_benchmark_refuses_settings_it_cannot_use():
    refused = [
        (("--settle", "-1"), "--settle must be >= 0"),
        (("--phi", "frozen,frozn"), "a comma list of frozen, trainable (got frozn)"),
        (("--device", "cuda", "--breakdown"), "--breakdown times the fused kernels, which run on CPU only"),
    ]
    if not torch.cuda.is_available():
        refused.append((("--device", "cuda"), "sees no CUDA device"))
    for args, message in refused:
        run = subprocess.run([sys.executable, str(BENCHMARKS / "overhead.py"), *args], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)


def test_time_interleaved_settles_each_timed_call_with_untimed_ones_of_its_own_kind():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _common import time_interleaved
    finally:
        sys.path.remove(str(BENCHMARKS))
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in ("bare", "fused")}
    out = time_interleaved(variants, warmup=1, repeats=2, settle=2)
    # warm-up rounds alternate; every timed round runs each variant settle + 1 times in a row
    assert calls == ["bare", "fused"] + (["bare"] * 3 + ["fused"] * 3) * 2
    assert out["bare_paired_ratio"] == 1.0 and out["fused_ms"] >= 0


def test_inference_benchmark_refuses_counts_it_cannot_use():
    for args, message in [
        (("--k", "0"), "--k must be >= 1, got 0"),
        (("--batch", "1"), "--batch must be >= 2, got 1"),
        (("--mc-repeats", "0"), "--mc-repeats must be >= 1, got 0"),
    ]:
        run = subprocess.run([sys.executable, str(BENCHMARKS / "inference.py"), *args], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
