"""benchmarks/_common.py: the paired ratios, the interleaved timing loop (on a scripted clock: no real timing),
the results file (atomic, with the commit, the command, the host and the time, never over another device's
record) and its name."""

import json
import time
from datetime import datetime

import _common
import pytest
import torch
from _common import device_slug, paired_ratios, publish, results_name, time_interleaved, write_text_atomic


def test_the_paired_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    times, baseline = [15.0, 22.0, 48.0], [10.0, 20.0, 40.0]  # per-round ratios 1.5, 1.1, 1.2
    paired = paired_ratios(times, baseline)
    assert paired["ratio"] == pytest.approx(1.2)  # the medians' ratio would be 22 / 20 = 1.1
    assert paired["q25"] <= paired["ratio"] <= paired["q75"] and paired["q25"] < paired["q75"]
    assert paired_ratios([3.0], [2.0]) == {"ratio": 1.5, "q25": 1.5, "q75": 1.5}
    with pytest.raises(ValueError, match="as many timings as baseline ones"):
        paired_ratios([1.0, 2.0], [1.0])


def test_time_interleaved_pairs_each_round_with_the_first_variants(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    durations = {"bare": iter([5.0, 10.0, 20.0, 40.0]), "fused": iter([5.0, 15.0, 22.0, 48.0])}  # one warm-up round

    def variant(name):
        def call():  # "takes" its next scripted duration, in ms
            now[0] += next(durations[name]) / 1e3

        return call

    out = time_interleaved({"bare": variant("bare"), "fused": variant("fused")}, warmup=1, repeats=3)
    assert out["bare_ms"] == pytest.approx(20.0) and out["fused_ms"] == pytest.approx(22.0)
    assert out["fused_paired_ratio"] == pytest.approx(1.2)  # from rounds (15/10, 22/20, 48/40), warm-up left out
    assert out["fused_paired_q25"] < out["fused_paired_ratio"] < out["fused_paired_q75"]
    assert all(out[f"{name}_cpu_ms"] >= 0 for name in ("bare", "fused"))


def test_time_interleaved_pairs_a_variant_with_another_baseline_when_asked(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    durations = {  # ms per round, no warm-up: bare_compiled is not the first variant, so it needs naming
        "bare": iter([10.0, 10.0, 10.0]),
        "bare_compiled": iter([10.0, 20.0, 40.0]),
        "fused_compiled": iter([15.0, 22.0, 48.0]),
    }

    def variant(name):
        def call():
            now[0] += next(durations[name]) / 1e3

        return call

    out = time_interleaved(
        {name: variant(name) for name in durations}, warmup=0, repeats=3,
        baselines={"fused_compiled": "bare_compiled"},
    )  # fmt: skip
    assert out["fused_compiled_vs_bare_compiled_paired_ratio"] == pytest.approx(1.2)  # 1.5, 1.1, 1.2
    assert out["fused_compiled_vs_bare_compiled_paired_q25"] < 1.2 < out["fused_compiled_vs_bare_compiled_paired_q75"]
    assert out["fused_compiled_paired_ratio"] == pytest.approx(2.2)  # against the first variant, as before
    with pytest.raises(ValueError, match="not timed: fused with bare_compiled"):
        time_interleaved({"fused": lambda: None}, warmup=0, repeats=1, baselines={"fused": "bare_compiled"})


def test_time_interleaved_settles_each_timed_call_with_untimed_ones_of_its_own_kind():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in ("bare", "fused")}
    time_interleaved(variants, warmup=1, repeats=2, settle=2)
    # warm-up rounds alternate; every timed round runs each variant settle + 1 times in a row
    assert calls == ["bare", "fused"] + (["bare"] * 3 + ["fused"] * 3) * 2


def test_publish_writes_the_record_with_commit_command_host_and_time(tmp_path, monkeypatch, capsys, commit_check):
    monkeypatch.setattr("sys.argv", [str(_common.ROOT / "benchmarks" / "overhead.py"), "--batch", "4"])
    path = tmp_path / "deep" / "overhead-x.json"
    path.parent.mkdir()
    path.write_text("an earlier run")
    record = publish("overhead", {"results": {"bare_ms": 1.5}}, path)
    assert json.loads(path.read_text()) == record
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record  # still the last line printed
    assert record["benchmark"] == "overhead" and record["results"] == {"bare_ms": 1.5}
    assert commit_check(record["commit"]) and not commit_check("0" * 40)
    assert record["command"] == ["benchmarks/overhead.py", "--batch", "4"]  # as run from the repository root
    host = record["host"]
    assert host["torch"] == torch.__version__ and host["torch_threads"] == torch.get_num_threads()
    assert host["cpu_count"] >= host["cpus_usable"] >= 1
    assert datetime.fromisoformat(record["utc"]).utcoffset().total_seconds() == 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("previous")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(_common.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new")
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_results_names_hold_the_settings_given_and_skip_the_unset_ones():
    assert results_name("overhead", "frozen", "b128", False, None, "cuda:1") == "overhead-frozen-b128-cuda1.json"
    assert results_name("fit_expected_softplus") == "fit_expected_softplus.json"
    assert results_name("x", "a/b") == "x-a_b.json"  # never a subfolder


def _record_of(cpu: str, figure: float, isa: str | None = None) -> str:
    machine = {"cpu": cpu, **({"cpu_isa": isa} if isa else {})}
    return json.dumps({"benchmark": "overhead", "results": {"bare_ms": figure}, "host": machine})


def test_a_record_of_another_cpu_is_kept_and_the_new_one_goes_beside_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["benchmarks/overhead.py"])
    monkeypatch.setattr(_common, "cpu_name", lambda: "AMD EPYC")
    monkeypatch.setattr(_common, "cpu_isa", lambda: None)
    path = tmp_path / "overhead-x.json"
    path.write_text(_record_of("Intel(R) Xeon(R) Processor", 1.0))
    record = publish("overhead", {"results": {"bare_ms": 2.0}}, path)
    beside = tmp_path / "overhead-x-amd_epyc.json"
    assert json.loads(path.read_text())["results"] == {"bare_ms": 1.0}  # the Xeon's figures, untouched
    assert json.loads(beside.read_text()) == record and record["host"]["cpu"] == "AMD EPYC"
    err = capsys.readouterr().err
    assert "measured on Intel(R) Xeon(R) Processor" in err and f"results written to {beside}" in err
    # a rerun on the AMD host replaces its own record there, and still leaves the Xeon's alone
    again = publish("overhead", {"results": {"bare_ms": 3.0}}, path)
    assert json.loads(beside.read_text()) == again and json.loads(path.read_text())["results"] == {"bare_ms": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overhead-x-amd_epyc.json", "overhead-x.json"]


def test_a_record_of_the_same_cpu_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["benchmarks/overhead.py"])
    monkeypatch.setattr(_common, "cpu_name", lambda: "AMD EPYC")
    monkeypatch.setattr(_common, "cpu_isa", lambda: "avx2")
    path = tmp_path / "overhead-x.json"
    path.write_text(_record_of("AMD EPYC", 1.0, isa="avx2"))
    record = publish("overhead", {"results": {"bare_ms": 2.0}}, path)
    assert json.loads(path.read_text()) == record and [p.name for p in tmp_path.iterdir()] == ["overhead-x.json"]


@pytest.mark.parametrize("earlier_isa", ["avx512", None])
def test_a_cpu_of_the_same_name_with_other_vector_units_is_another_machine(tmp_path, monkeypatch, earlier_isa):
    """ "AMD EPYC" with AVX2 and with AVX-512 run the kernels at different speeds; a record that does not say which
    (made before hosts recorded it) may be of either, so it is kept too."""
    monkeypatch.setattr("sys.argv", ["benchmarks/overhead.py"])
    monkeypatch.setattr(_common, "cpu_name", lambda: "AMD EPYC")
    monkeypatch.setattr(_common, "cpu_isa", lambda: "avx2")
    path = tmp_path / "overhead-x.json"
    path.write_text(_record_of("AMD EPYC", 1.0, isa=earlier_isa))
    record = publish("overhead", {"results": {"bare_ms": 2.0}}, path)
    assert json.loads(path.read_text())["results"] == {"bare_ms": 1.0}
    assert json.loads((tmp_path / "overhead-x-amd_epyc_avx2.json").read_text()) == record
    assert record["host"]["cpu_isa"] == "avx2"
    # a CPU benchmark that names its device (overhead.py's device_name: the CPU's name) is told apart the same way
    again = publish("overhead", {"device_name": "AMD EPYC", "results": {"bare_ms": 3.0}}, path)
    assert json.loads((tmp_path / "overhead-x-amd_epyc_avx2.json").read_text()) == again
    assert json.loads(path.read_text())["results"] == {"bare_ms": 1.0}


def test_the_cpu_isa_is_read_from_the_cpu_flags(tmp_path):
    lines = {
        "avx512": "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n",
        "avx2": "flags\t\t: fpu sse2 avx avx2 fma vaes\n",
        "asimd": "Features\t: fp asimd evtstrm aes\n",
        None: "flags\t\t: fpu sse2\n",
    }
    for isa, line in lines.items():
        (tmp_path / "cpuinfo").write_text("processor\t: 0\n" + line)
        assert _common.cpu_isa(str(tmp_path / "cpuinfo")) == isa
    assert _common.cpu_isa(str(tmp_path / "missing")) is None


def test_a_gpu_record_is_told_apart_by_its_device_not_its_host(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["benchmarks/overhead.py"])
    monkeypatch.setattr(_common, "cpu_name", lambda: "AMD EPYC")
    monkeypatch.setattr(_common, "cpu_isa", lambda: "avx2")
    path = tmp_path / "gpu-overhead.json"
    path.write_text(json.dumps({"device_name": "NVIDIA H100 80GB HBM3", "host": {"cpu": "AMD EPYC"}}))
    record = publish("overhead", {"device_name": "NVIDIA H200"}, path)
    assert json.loads((tmp_path / "gpu-overhead-nvidia_h200.json").read_text()) == record
    assert json.loads(path.read_text())["device_name"] == "NVIDIA H100 80GB HBM3"


def test_device_slugs_are_file_name_parts():
    assert device_slug("Intel(R) Xeon(R) Processor") == "intel_xeon_processor"
    assert device_slug("AMD EPYC 9654 96-Core Processor") == "amd_epyc_9654_96_core_processor"
    assert device_slug("Apple M2 (TM)") == "apple_m2"
    assert device_slug("()") == "unknown_device"
