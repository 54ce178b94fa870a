"""Inference cost of a perturbed CIFAR ResNet-20: bare eval forward vs "mean" mode vs MC-k, and MC-k vs mean.

    python benchmarks/inference.py [--batch 128] [--threads 2] [--k 10] [--repeats 40] [--mc-repeats 10]
                                   [--backend auto] [--omp-passive] [--keep-freed-memory] [--device cuda]
                                   [--compile] [--compile-backend inductor]

Timed (medians of interleaved repeats, wall-clock and process CPU, under torch.inference_mode; "paired": the
median over rounds of each variant's time over the bare pass's in the same round, with the quartiles of those
per-round ratios). Two groups, each interleaved with its own bare pass: the one-pass variants (--repeats
rounds), then the k-pass ones (--mc-repeats rounds), so that a round of the first group lasts a few bare
passes and a slow phase of the host falls on its variants alike:
  bare        φ attached but disabled: the bare model's eval forward,
  off         every site "off" (the hooks and the fused ReLU, no φ),
  mean        every site in "mean" mode (E[softplus(μ + ε)] instead of the noise): one deterministic pass, with the
              mean-mode calibration installed (its BatchNorms' calibrated `forward`s are part of the cost),
  mean_uncalibrated  the same without the calibration,
  mc1         one sampling pass (the cost of a single draw),
  mc_loop     k separate sampling passes (the authors' test-time MC),
  mc_batched  `mp_hub.mean_mode.mc_predict(model, x, k)` (draws batched per chunk; at batch 128 the default
              chunk is 1, i.e. k passes), plus loop vs batched at --small-batch images, where batching pays.
With --compile, a third group (--repeats rounds) times bare_compiled, mean_uncalibrated_compiled and
mc1_compiled: the same passes through torch.compile(model, fullgraph=True) (--compile-backend, default inductor;
compiled once per pass before the timing, the compile time reported), their ratios to bare_compiled, and
bare_compiled_vs_bare. Mean mode runs without its calibration there (the calibration's staleness check is not
traceable in one graph).
--device cuda runs the model and the timing on the GPU (each pass waits for the device); the page faults and the
fused kernels' layouts are CPU figures and are left out there.
Then one site in "mean" mode against a ReLU and a 3×3 conv at ResNet-20's three stage shapes (where the time goes).
Synthetic agreement check (random weights, φ from ../shared/reference when present, else φ's init scaled up
so that the noise matters): max |p_mean − p_MC| and argmax agreement between "mean" and MC with --mc-check
draws. The real-data check (accuracy within 0.3 points of MC-100) is separate.
--keep-freed-memory: glibc's malloc keeps freed memory instead of page-faulting every large activation in
again (`_common.KEEP_FREED_MEMORY`; about half the bare forward's time on this machine goes to those faults).

The last line printed is JSON with every figure and the git commit; the same record is written to
benchmarks/results/ (`results_file_name`; --results_dir, --results_file).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

from _common import apply_process_flags

apply_process_flags()  # --keep-freed-memory, --omp-passive: before torch (and its OpenMP runtime) loads

import torch  # noqa: E402
from _common import (  # noqa: E402
    add_results_arguments,
    add_thread_arguments,
    environment,
    publish,
    require_at_least,
    results_name,
    results_path,
    time_interleaved,
)
from _device import add_device_arguments, checked_device, compile_suffix, device_name, synchronized  # noqa: E402

from mp_hub import MetaPerturb, attach, kernels  # noqa: E402
from mp_hub.kernels import fused  # noqa: E402
from mp_hub.mean_mode.predict import mc_predict, mean_predict  # noqa: E402
from mp_hub.models import model_from_type  # noqa: E402
from mp_hub.site import PerturbSite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_PHI = ROOT.parent / "shared" / "reference" / "perturb_750.pth"


def load_phi() -> tuple[MetaPerturb, str]:
    if OFFICIAL_PHI.exists():
        return MetaPerturb.from_official(OFFICIAL_PHI), "official perturb_750"
    torch.manual_seed(0)
    phi = MetaPerturb()
    with torch.no_grad():
        for p in phi.parameters():
            p.mul_(25)
    return phi, "random init ×25"


def page_faults(fn, repeats: int = 5) -> tuple[int, float]:
    """Median minor page faults and system-time ms of one call (the process's, all threads)."""
    faults, system = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults.append(after.ru_minflt - before.ru_minflt)
        system.append(1e3 * (after.ru_stime - before.ru_stime))
    return int(statistics.median(faults)), statistics.median(system)


def kernel_layouts(phi: MetaPerturb, feature: torch.Tensor, threads: int) -> dict:
    """The "mean"-mode forward kernel alone on the padded layout (`mp_forward`, what the site ran before the
    stacked layout) and on the stacked one (`mp_forward_stacked`, what it runs now): same arguments, same output."""
    lib = kernels.build.load_extended(ROOT / "tests/kernels/padded_reference.c", {"mp_forward": "mp_forward_stacked"})
    l1, g1, l2, g2 = (k.detach().contiguous() for k in fused.phi_params(phi)[:4])  # what the sites pass
    batch, channels, height, width = feature.shape
    scale = torch.full((channels,), 0.5)
    common = (batch, channels, height, width, l1.data_ptr(), g1.data_ptr(), l2.data_ptr(), g2.data_ptr(),
              scale.data_ptr(), 1.0, 100.0, 1, 2, None, 0, 0, 0)  # fmt: skip
    out = {"padded": torch.empty_like(feature), "stacked": torch.empty_like(feature)}
    calls = {
        "padded": lambda: lib.mp_forward(feature.data_ptr(), out["padded"].data_ptr(), *common, threads),
        "stacked": lambda: lib.mp_forward_stacked(feature.data_ptr(), out["stacked"].data_ptr(), *common, threads),
    }
    for call in calls.values():
        call()
    if not torch.equal(out["padded"], out["stacked"]):
        raise RuntimeError("the stacked layout's output differs from the padded layout's")
    return calls


def compiled_passes(model, handle, x: torch.Tensor, args) -> dict:
    """{"passes": {name: fn}} for bare_compiled, mean_uncalibrated_compiled and mc1_compiled (one torch.compile'd
    model, a graph per pass, each compiled here by its first call), and the seconds each first call took."""
    compiled = torch.compile(model, fullgraph=True, backend=args.compile_backend)

    def bare_compiled():
        handle.enabled = False
        try:
            compiled(x)
        finally:
            handle.enabled = True

    def mean_uncalibrated_compiled():
        handle.set_inference_mode("mean")
        compiled(x)

    def mc1_compiled():
        handle.set_inference_mode("mc")
        compiled(x)

    passes = {
        "bare_compiled": bare_compiled,
        "mean_uncalibrated_compiled": mean_uncalibrated_compiled,
        "mc1_compiled": mc1_compiled,
    }
    seconds = {}
    with torch.inference_mode():
        for name, fn in passes.items():
            t0 = time.perf_counter()
            fn()
            seconds[name] = time.perf_counter() - t0
    return {"passes": passes, **seconds}


def results_file_name(args) -> str:
    """inference-b<batch>-k<k>-t<threads>[-<backend>][-<device>][-compile[-<backend>]][-keepmem][-passive].json:
    the settings that change the figures (not the number of rounds, which only changes their precision)."""
    return results_name(
        "inference", f"b{args.batch}", f"k{args.k}", f"t{args.threads}", args.backend != "auto" and args.backend,
        args.device != "cpu" and args.device, compile_suffix(args), args.keep_freed_memory and "keepmem",
        args.omp_passive and "passive",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    add_thread_arguments(parser)
    parser.add_argument("--k", type=int, default=10, help="MC draws for the timing")
    parser.add_argument("--repeats", type=int, default=40, help="rounds of the one-pass variants")
    parser.add_argument("--mc-repeats", type=int, default=10, help="rounds of the k-pass variants")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--backend", default="auto", choices=kernels.BACKENDS)
    parser.add_argument("--small-batch", type=int, default=16, help="batch for the batched-vs-loop MC comparison")
    parser.add_argument("--mc-check", type=int, default=100, help="MC draws for the agreement check (0: skip)")
    add_device_arguments(parser, compile_help="also time the bare, mean and mc1 passes of a torch.compile'd model")
    add_results_arguments(parser)
    args = parser.parse_args()
    # batch >= 2: the mean-mode calibration needs batch statistics
    require_at_least(parser, args, batch=2, threads=1, k=1, repeats=1, mc_repeats=1, warmup=0, small_batch=1,
                     mc_check=0)  # fmt: skip
    device = checked_device(parser, args.device)
    torch.set_num_threads(args.threads)
    kernels.set_default_backend(args.backend)

    torch.manual_seed(0)
    model = model_from_type("cifar_resnet20", num_labels=10, image_size=32).eval().to(device)
    phi, phi_source = load_phi()
    handle = attach(model, phi, inference_mode="mc")  # φ and the sites follow the model's device
    x = torch.randn(args.batch, 3, 32, 32).to(device)
    t0 = time.perf_counter()  # once after training, on training images (here: random ones)
    handle.calibrate_mean_mode(torch.randn(512, 3, 32, 32).to(device).split(args.batch))
    calibration_ms = 1e3 * (time.perf_counter() - t0)

    def bare():
        handle.enabled = False
        try:
            model(x)
        finally:
            handle.enabled = True

    def off():  # the hooks and the fused ReLU, no φ: what the plumbing costs
        handle.set_inference_mode("off")
        model(x)

    def mean():
        handle.set_inference_mode("mean")
        model(x)

    def mean_uncalibrated():
        handle.set_inference_mode("mean")
        handle.calibration.remove()
        try:
            model(x)
        finally:
            handle.calibration.install()

    def mc1():
        handle.set_inference_mode("mc")
        model(x)

    def mc_loop():
        handle.set_inference_mode("mc")
        for _ in range(args.k):
            torch.softmax(model(x).logits, -1)

    def mc_batched():
        mc_predict(model, x, args.k)

    one_pass = {"bare": bare, "off": off, "mean": mean, "mean_uncalibrated": mean_uncalibrated, "mc1": mc1}
    k_pass = {"bare": bare, "mc_loop": mc_loop, "mc_batched": mc_batched}
    one_pass = {name: synchronized(fn, device) for name, fn in one_pass.items()}
    k_pass = {name: synchronized(fn, device) for name, fn in k_pass.items()}
    with torch.inference_mode():
        res = time_interleaved(one_pass, args.warmup, args.repeats)
        mc = time_interleaved(k_pass, 1, args.mc_repeats)
    res.update({key.replace("bare_", "bare_in_mc_group_", 1) if key.startswith("bare_") else key: value
                for key, value in mc.items()})  # fmt: skip
    groups = [(args.repeats, one_pass, "bare"), (args.mc_repeats, k_pass, "bare_in_mc_group")]
    if args.compile:  # a group of its own, after the others: mean_uncalibrated re-installs the calibration's
        # forwards, which would make every compiled pass recompile in a shared group
        handle.calibration.remove()  # its staleness check reads tensor versions, which a full graph cannot
        compiled = compiled_passes(model, handle, x, args)
        compiled_pass = {name: synchronized(fn, device) for name, fn in compiled.pop("passes").items()}
        with torch.inference_mode():
            res.update(time_interleaved(compiled_pass, args.warmup, args.repeats))
        handle.calibration.install()
        res.update({f"{name}_compile_s": seconds for name, seconds in compiled.items()})
        res["bare_compiled_vs_bare"] = res["bare_compiled_ms"] / res["bare_ms"]
        groups.append((args.repeats, compiled_pass, "bare_compiled"))
    print(f"ResNet-20, batch {args.batch}, {args.threads} threads, backend {args.backend}, k = {args.k}, "
          f"{args.device} (medians; paired: median [quartiles] of the per-round ratios)")  # fmt: skip
    for group, variants, bare_key in groups:
        print(f"  {group} rounds of {', '.join(variants)}:")
        for name in variants:
            key = bare_key if name == "bare" else name
            res[f"{key}_ratio"] = res[f"{key}_ms"] / res[f"{bare_key}_ms"]
            res[f"{key}_cpu_ratio"] = res[f"{key}_cpu_ms"] / res[f"{bare_key}_cpu_ms"]
            print(f"    {name:26s} {res[key + '_ms']:8.1f} ms  ×{res[key + '_ratio']:.3f}  "
                  f"| CPU {res[key + '_cpu_ms']:8.1f} ms  ×{res[key + '_cpu_ratio']:.3f}  "
                  f"| paired ×{res[key + '_paired_ratio']:.3f} [{res[key + '_paired_q25']:.3f}, "
                  f"{res[key + '_paired_q75']:.3f}]")  # fmt: skip
    if args.compile:
        print(f"  compiled bare / bare: ×{res['bare_compiled_vs_bare']:.3f}; compile time "
              + ", ".join(f"{name} {res[name + '_compile_s']:.0f} s" for name in compiled_pass))  # fmt: skip
    with torch.inference_mode():  # what the allocator costs: page faults of one pass (see --keep-freed-memory)
        for name in ("bare", "mean") if device.type == "cpu" else ():
            faults, system_ms = page_faults(one_pass[name])
            res[f"{name}_page_faults"], res[f"{name}_system_ms"] = faults, system_ms
            print(f"  {name}: {faults} minor page faults and {system_ms:.0f} ms of system time per pass (median of 5)")
    res["calibration_512_images_ms"] = calibration_ms
    print(f"  (one-time mean-mode calibration on 512 images: {calibration_ms:.0f} ms)")
    res["mc_batched_vs_loop"] = res["mc_batched_ms"] / res["mc_loop_ms"]
    print(f"  MC-{args.k} batched / MC-{args.k} loop: ×{res['mc_batched_vs_loop']:.3f}")

    # where batching the draws pays: small batches (the prefix runs once per chunk, passes get fuller)
    small = x[: args.small_batch]
    times = {"loop": [], "batched": []}
    loop = synchronized(lambda: [torch.softmax(model(small).logits, -1) for _ in range(args.k)], device)
    batched = synchronized(lambda: mc_predict(model, small, args.k), device)
    with torch.inference_mode():
        handle.set_inference_mode("mc")
        for i in range(args.warmup + args.mc_repeats):
            t0 = time.perf_counter()
            loop()
            t1 = time.perf_counter()
            batched()
            t2 = time.perf_counter()
            if i >= args.warmup:
                times["loop"].append(1e3 * (t1 - t0))
                times["batched"].append(1e3 * (t2 - t1))
    res["small_batch"] = args.small_batch
    res["small_mc_loop_ms"] = statistics.median(times["loop"])
    res["small_mc_batched_ms"] = statistics.median(times["batched"])
    res["small_mc_batched_vs_loop"] = res["small_mc_batched_ms"] / res["small_mc_loop_ms"]
    print(f"  batch {args.small_batch}: MC-{args.k} loop {res['small_mc_loop_ms']:.1f} ms, batched "
          f"{res['small_mc_batched_ms']:.1f} ms (×{res['small_mc_batched_vs_loop']:.3f})")  # fmt: skip

    # one site vs what the block around it costs, at ResNet-20's three stage shapes: where the "mean" time goes
    per_shape = {}
    site_variants = {}
    for channels, size in ((16, 32), (32, 16), (64, 8)):
        feature = torch.randn(args.batch, channels, size, size).to(device)
        site = PerturbSite(phi, channels, spatial_norm=32, inference_mode="mean").eval().to(device)
        site.fused_relu = True  # as attach places it in a ResNet block: the site also applies the ReLU
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval().to(device)
        tag = f"{channels}x{size}"
        site_variants[f"relu_{tag}"] = synchronized(lambda f=feature: torch.relu(f), device)
        site_variants[f"site_mean_{tag}"] = synchronized(lambda s=site, f=feature: s(f), device)
        site_variants[f"conv_{tag}"] = synchronized(lambda c=conv, f=feature: c(f), device)
        if device.type == "cpu" and kernels.fused_available():
            for layout, call in kernel_layouts(phi, feature, args.threads).items():
                site_variants[f"kernel_{layout}_{tag}"] = call
    with torch.inference_mode():
        timed = time_interleaved(site_variants, args.warmup, args.repeats)
    print(
        f"  one site in mean mode (with the ReLU it replaces) vs a ReLU and the block's 3×3 conv, batch {args.batch}:"
    )
    for channels, size in ((16, 32), (32, 16), (64, 8)):
        tag = f"{channels}x{size}"
        per_shape[tag] = {k: timed[f"{k}_{tag}_ms"] for k in ("relu", "site_mean", "conv")}
        line = (f"    C={channels:2d} {size:2d}×{size:<2d}: site {per_shape[tag]['site_mean']:.2f} ms, ReLU "
                f"{per_shape[tag]['relu']:.2f} ms, conv {per_shape[tag]['conv']:.2f} ms")  # fmt: skip
        if f"kernel_stacked_{tag}_ms" in timed:  # the same output, bitwise (checked in kernel_layouts)
            padded, stacked = timed[f"kernel_padded_{tag}_ms"], timed[f"kernel_stacked_{tag}_ms"]
            per_shape[tag].update(kernel_padded=padded, kernel_stacked=stacked, stacked_vs_padded=stacked / padded)
            line += f"; its kernel: padded layout {padded:.2f} ms, stacked {stacked:.2f} ms (×{stacked / padded:.3f})"
        print(line)
    res["per_shape_ms"] = per_shape

    check = None
    if args.mc_check:
        torch.manual_seed(1)
        with torch.inference_mode():
            p_mean = mean_predict(model, x)
            p_mc = mc_predict(model, x, args.mc_check)
        check = {
            "phi": phi_source,
            "draws": args.mc_check,
            "max_abs_prob_diff": (p_mean - p_mc).abs().max().item(),
            "argmax_agreement": (p_mean.argmax(-1) == p_mc.argmax(-1)).float().mean().item(),
        }
        print(f"  mean vs MC-{args.mc_check} ({phi_source}): max |Δp| {check['max_abs_prob_diff']:.4f}, "
              f"argmax agreement {check['argmax_agreement']:.3f}")  # fmt: skip
    publish("inference", {
        "model": "cifar_resnet20", "batch": args.batch,
        "threads": args.threads, "backend": args.backend, "k": args.k, "repeats": args.repeats,
        "fused_available": kernels.fused_available(), "torch": torch.__version__, "device": args.device,
        "device_name": device_name(device), "compile": args.compile,
        "compile_backend": args.compile_backend if args.compile else None,
        **environment(), "results": res,
        "agreement_check": check,
    }, results_path(args, results_file_name(args)))  # fmt: skip


if __name__ == "__main__":
    main()
