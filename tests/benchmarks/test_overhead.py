"""benchmarks/overhead.py: runs end to end and writes its record (tiny settings: figures are not checked), names
its results file by the settings that change the figures, refuses settings it cannot use."""

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from _builders import record_site_layouts

from mp_hub import kernels
from mp_hub.kernels.fused import PASSES

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def settings(**changes) -> Namespace:
    defaults = dict(batch=128, threads=2, device="cpu", compile=False, compile_backend="inductor", breakdown=False,
                    keep_freed_memory=False, omp_passive=False, settle=0, no_eager=False,
                    channels_last=False)  # fmt: skip
    return Namespace(**{**defaults, **changes})


def test_each_configuration_has_its_own_results_file():
    import overhead

    both = ["frozen", "trainable"]
    assert overhead.results_file_name(settings(), both) == "overhead-frozen+trainable-b128-t2.json"
    configurations = [
        (settings(), both), (settings(), ["frozen"]), (settings(batch=32), both), (settings(threads=1), both),
        (settings(device="cuda:0"), both), (settings(compile=True), both), (settings(breakdown=True), both),
        (settings(keep_freed_memory=True), both), (settings(omp_passive=True), both),
        (settings(compile=True, compile_backend="aot_eager"), both), (settings(settle=1), both),
        (settings(no_eager=True), both), (settings(channels_last=True), both),
    ]  # fmt: skip
    names = [overhead.results_file_name(args, modes) for args, modes in configurations]
    assert len(set(names)) == len(names)
    assert overhead.results_file_name(settings(compile_backend="aot_eager"), both) == names[0]  # unused: not named


def test_no_eager_leaves_out_the_eager_variants_only():
    import overhead

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    every = overhead.VARIANTS + overhead.COMPILED
    assert [v for v in every if overhead.wanted(v, cpu, settings())] == list(every)
    kept = [v for v in every if overhead.wanted(v, cpu, settings(no_eager=True))]
    assert kept == ["bare", "fused", "bare_compiled", "fused_compiled"]
    assert [v for v in every if overhead.wanted(v, cuda, settings(no_eager=True))] == ["bare", "bare_compiled"]


def test_channels_last_steps_keep_the_layout_through_the_fused_sites(monkeypatch):
    import overhead

    if not kernels.fused_available():
        pytest.skip(f"fused kernels unavailable here: {kernels.build.load_error()}")
    layouts = record_site_layouts(monkeypatch)
    step = overhead.build(False, 2, torch.device("cpu"), memory_format=torch.channels_last)
    for variant in overhead.CHANNELS_LAST:
        step(variant)
    assert layouts == [True] * 9  # the fused step's nine sites; the bare step runs none
    passes = overhead.kernel_breakdown(step, 1, "fused_channels_last")  # --breakdown of this variant
    assert list(passes) == list(PASSES) and all(ms > 0 for ms in passes.values())
    assert len(layouts) == 18 and all(layouts)  # the breakdown ran the channels-last step, not the NCHW one
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [v for v in overhead.CHANNELS_LAST if overhead.wanted(v, cuda, settings())] == ["bare_channels_last"]
    assert all(overhead.wanted(v, cpu, settings(no_eager=True)) for v in overhead.CHANNELS_LAST)


@pytest.mark.slow
def test_overhead_benchmark_runs_and_writes_its_record(run_script):
    args = ("--steps", "2", "--warmup", "0", "--batch", "4", "--no-memory")
    report, path = run_script(
        "overhead.py", *args, "--channels-last", *(("--breakdown",) if kernels.fused_available() else ())
    )
    assert path.name.startswith("overhead-frozen+trainable-b4-t2") and "-channelslast" in path.name
    for result in report["results"].values():
        for v in result["variants"]:
            assert result[f"{v}_paired_q25"] <= result[f"{v}_paired_ratio"] <= result[f"{v}_paired_q75"]
        for variant in result["variants"][1:]:  # each a ratio of its own median to bare's
            assert result[f"{variant}_ratio"] == pytest.approx(result[f"{variant}_ms"] / result["bare_ms"])
        assert result["variants"][-2:] == ["bare_channels_last", "fused_channels_last"]
        ratio = result["fused_channels_last_ms"] / result["bare_channels_last_ms"]
        assert result["fused_channels_last_vs_bare_channels_last"] == pytest.approx(ratio)
        paired = "fused_channels_last_vs_bare_channels_last_paired_"
        assert result[paired + "q25"] <= result[paired + "ratio"] <= result[paired + "q75"]
        if kernels.fused_available():  # every pass ran in the timed steps, frozen and trainable, in both layouts
            for key in ("", "fused_channels_last_"):
                assert list(result[f"{key}kernel_ms"]) == list(PASSES)
                assert all(ms > 0 for ms in result[f"{key}kernel_ms"].values())
                assert result[f"{key}kernel_total_ms"] == pytest.approx(sum(result[f"{key}kernel_ms"].values()))


@pytest.mark.slow
def test_overhead_benchmark_compiles_the_bare_and_both_perturbed_models(run_script):
    """--compile: a bare and two perturbed models (eager and fused sites) under torch.compile(fullgraph=True)
    (inductor on CPU here: minutes)."""
    report, path = run_script(
        "overhead.py", "--steps", "1", "--warmup", "0", "--batch", "2", "--no-memory", "--phi", "frozen", "--compile"
    )
    frozen = report["results"]["frozen"]
    assert path.name == "overhead-frozen-b2-t2-compile.json" and report["compile_backend"] == "inductor"
    compiled = ["bare_compiled", "eager_compiled", "fused_compiled"]
    assert report["compile"] and frozen["variants"] == ["bare", "eager", "fused", *compiled]
    assert all(frozen[f"{variant}_compile_s"] > 0 for variant in compiled)
    assert frozen["eager_compiled_vs_bare_compiled"] > 0 and frozen["fused_compiled_vs_bare_compiled"] > 0
    assert frozen["fused_compiled_vs_bare_compiled_paired_ratio"] > 0  # one step: the ratio of the medians
    assert frozen["fused_compiled_vs_bare_compiled_paired_ratio"] == pytest.approx(
        frozen["fused_compiled_vs_bare_compiled"]
    )


def test_overhead_benchmark_refuses_settings_it_cannot_use(tmp_path):
    refused = [
        (("--settle", "-1"), "--settle must be >= 0"),
        (("--phi", "frozen,frozn"), "a comma list of frozen, trainable (got frozn)"),
        (("--device", "cuda", "--breakdown"), "--breakdown times the fused kernels, which run on CPU only"),
    ]
    if not torch.cuda.is_available():
        refused.append((("--device", "cuda"), "sees no CUDA device"))
    for args, message in refused:
        command = [sys.executable, str(BENCHMARKS / "overhead.py"), *args, "--results_dir", str(tmp_path)]
        run = subprocess.run(command, capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
    assert not any(tmp_path.iterdir())  # a refused run writes no results
