"""Cost of a MetaPerturb training step on CIFAR ResNet-20: bare model vs φ at all 9 sites, eager and fused.

    python benchmarks/overhead.py [--steps 10] [--warmup 3] [--settle 0] [--batch 128] [--threads 2] [--phi ...]
                                  [--no-memory] [--omp-passive] [--keep-freed-memory] [--device cuda] [--compile]
                                  [--compile-backend inductor] [--breakdown] [--no-eager] [--channels-last]

Variants, interleaved in one process (on a shared machine load drifts; interleaving spreads it over all
variants alike), each step = forward + cross-entropy + backward + Adam step, batch of 32×32 images. By default
the variants alternate step by step; --settle N runs N untimed steps of a variant right before each of its
timed ones, so that a timed step follows a step of its own kind, as in a training loop, instead of another
variant's (whose caches and heap it inherits: the eager variant's 600 MiB above all); --no-eager leaves the eager
variants out altogether. The variants:
  bare   φ attached with `mp_hub.attach` but disabled (the hooks return at once: the bare model's graph),
  eager  every site on the straightforward `functional` path (the authors' op-by-op formulation),
  fused  every site on the fused kernels (`mp_hub.kernels`).
With --compile, more variants, each its own model instance compiled once (torch.compile(model, fullgraph=True),
--compile-backend, default inductor) before the timing (the compile time is reported):
  bare_compiled   the bare model,
  eager_compiled  the model with its sites on the `functional` path, compiled with the rest,
  fused_compiled  the model with its sites on the fused kernels, which stay in the graph as the custom ops
                  `mp_hub::site_forward` / `mp_hub::site_backward` (`mp_hub.kernels.ops`).
The ratios of the compiled variants to bare_compiled are the sites' cost when both sides are compiled: of the
medians (`<variant>_vs_bare_compiled`) and paired by round (`<variant>_vs_bare_compiled_paired_ratio`, with its
quartiles); fused_channels_last against bare_channels_last likewise.
--device cuda runs everything on the GPU (synchronised after every step); "fused" and "fused_compiled" are
CPU-only and are left out there. "frozen" φ (transfer: only grad wrt x flows through the sites) and "trainable"
φ (meta-training: also grads wrt φ) are measured separately. Reported: median wall-clock ms/step and median
process CPU ms/step (less sensitive to other processes), and ratios to bare: of the medians, and "paired" (the
median of each step's ratio to the bare step of the same round, which cancels slow phases of a shared host).

Peak memory: one extra step per variant under torch.profiler(profile_memory=True); the allocation and free
events of torch's CPU allocator, replayed in time order, give the peak of live bytes during the step above
the level at its start (saved activations, gradients, temporaries; parameters and Adam state exist before).
On CUDA: torch.cuda.max_memory_allocated over one step, above the level at its start.
Scratch buffers of the fused kernels (a few hundred KiB per thread, allocated once) are outside this count.

--breakdown: after the timing, --steps more steps of each fused variant timed (fused; fused_compiled and
fused_channels_last with --compile and --channels-last) under `mp_hub.kernels.fused.pass_timer()` (the wall time
of each kernel call, by pass: `PASSES`), reported in ms per step with their sum as a share of what the variant
adds to its bare twin (fused_ms − bare_ms, fused_compiled_ms − bare_compiled_ms, ...: the rest is the sites'
Python, allocations, and the bare model's own work running slower beside them). Record keys: `kernel_ms`,
`kernel_total_ms`, `kernel_share_of_fused_overhead` for fused, the same prefixed by the variant's name for the
others (`fused_compiled_kernel_ms`, ...). (torch.profiler shows the same calls as `mp_hub::<pass>`
ranges, but its ranges also hold the profiler's own cost per call inside a step.)

On a machine shared with other jobs, OpenMP threads that spin at barriers while their partner is descheduled
can make whole phases of a run 5–10× slower (bimodal step times, for every variant); --omp-passive sets
OMP_WAIT_POLICY=PASSIVE for steadier figures.

--channels-last: two more variants, bare_channels_last and fused_channels_last, a model and batch in
channels-last memory (`model.to(memory_format=torch.channels_last)`, as `recipes/transfer.py --channels_last`
has them), whose convolutions and fused sites run in that layout; `fused_channels_last_vs_bare_channels_last` is
the sites' cost there.

--keep-freed-memory: glibc's malloc keeps freed memory instead of page-faulting every large activation in
again (`_common.KEEP_FREED_MEMORY`; about half the bare forward's time on this machine goes to those faults).

The last line printed is JSON with every figure and the git commit (suffixed -dirty for uncommitted changes);
the same record is written to benchmarks/results/ (`results_file_name`; --results_dir, --results_file).
"""

from __future__ import annotations

import argparse
import time

from _common import apply_process_flags

apply_process_flags()  # --keep-freed-memory, --omp-passive: before torch (and its OpenMP runtime) loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
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
from _device import add_device_arguments, checked_device, compile_suffix, device_name, parsed_device  # noqa: E402

from mp_hub import MetaPerturb, attach, kernels  # noqa: E402
from mp_hub.kernels.fused import PASSES, pass_timer  # noqa: E402
from mp_hub.models import model_from_type  # noqa: E402

VARIANTS = ("bare", "eager", "fused")
COMPILED = ("bare_compiled", "eager_compiled", "fused_compiled")
CHANNELS_LAST = ("bare_channels_last", "fused_channels_last")
CPU_ONLY = ("fused", "fused_compiled", "fused_channels_last")  # the fused kernels run on CPU only


def build(
    trainable_phi: bool,
    batch: int,
    device: torch.device,
    compile_backend: str | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
):
    """step(variant) for one model (the same weights and batch every time: seed 0); `compile_backend`: the model
    runs under torch.compile(fullgraph=True) with that backend; `memory_format`: of the model and the batch."""
    torch.manual_seed(0)
    model = model_from_type("cifar_resnet20", num_labels=10, image_size=32).train().to(device)
    phi = MetaPerturb()
    handle = attach(model, phi, trainable_phi=trainable_phi)
    sites = list(handle.site_modules().values())
    assert len(sites) == 9, f"expected 9 sites on ResNet-20, got {len(sites)}"
    params = [p for p in model.parameters() if p.requires_grad]  # includes φ when trainable
    optimizer = torch.optim.Adam(params, lr=1e-3)
    model.to(memory_format=memory_format)
    x = torch.randn(batch, 3, 32, 32).to(device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,)).to(device)
    forward = torch.compile(model, fullgraph=True, backend=compile_backend) if compile_backend else model

    def step(variant: str) -> None:
        for site in sites:
            site.set_backend("fused" if variant.startswith("fused") else "eager")
        handle.enabled = not variant.startswith("bare")
        logits = forward(pixel_values=x).logits
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":  # the step's kernels have run when it returns: wall time is the step's
            torch.cuda.synchronize(device)

    return step


def peak_step_memory(step, variant: str, device: torch.device) -> float | None:
    """Peak live bytes (MiB) allocated through torch's allocator (CPU, or the CUDA device) during one step,
    above its start."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step(variant)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(variant)
    try:
        events = prof.profiler.kineto_results.events()
        deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    except AttributeError:  # private profiler API moved: no figure rather than a wrong one
        return None
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


# each fused variant and the bare variant its sites are added to
BARE_OF = {"fused": "bare", "fused_compiled": "bare_compiled", "fused_channels_last": "bare_channels_last"}


def kernel_breakdown(step, steps: int, variant: str = "fused") -> dict[str, float]:
    """ms per step in each pass of the fused kernels over `steps` steps of a fused `variant`."""
    with pass_timer() as seconds:
        for _ in range(steps):
            step(variant)
    return {name: 1e3 * seconds[name] / steps for name in PASSES}


def breakdown_prefix(variant: str) -> str:
    """The record keys' prefix of a variant's breakdown: none for "fused" (the keys it always had)."""
    return "" if variant == "fused" else f"{variant}_"


def wanted(variant: str, device: torch.device, args) -> bool:
    """Whether to time `variant`: the fused kernels run on CPU only; --no-eager drops the op-by-op path."""
    return (device.type == "cpu" or variant not in CPU_ONLY) and not (args.no_eager and variant.startswith("eager"))


def measure(trainable_phi: bool, args) -> dict:
    device = torch.device(args.device)
    step = build(trainable_phi, args.batch, device)
    # the fused kernels are CPU-only: on a GPU the variant would only time the eager path again
    variants = [v for v in VARIANTS if wanted(v, device, args)]
    steps = {v: step for v in variants}
    compile_s = {}
    if args.compile:
        compiled = [v for v in COMPILED if wanted(v, device, args)]
        for variant in compiled:  # one model each: no recompilation when the timing alternates them
            steps[variant] = build(trainable_phi, args.batch, device, compile_backend=args.compile_backend)
            t0 = time.perf_counter()
            steps[variant](variant)  # compiles forward and backward
            compile_s[variant] = time.perf_counter() - t0
        variants += compiled
    if args.channels_last:  # one model for both variants, as bare and fused share one above
        last = build(trainable_phi, args.batch, device, memory_format=torch.channels_last)
        layout_variants = [v for v in CHANNELS_LAST if wanted(v, device, args)]
        steps.update(dict.fromkeys(layout_variants, last))
        variants += layout_variants
    # the sites' cost against the bare model of the same kind (both compiled, both channels-last): of the medians
    # and per round
    baselines = dict.fromkeys(compiled[1:], "bare_compiled") if args.compile else {}
    if "fused_channels_last" in variants:
        baselines["fused_channels_last"] = "bare_channels_last"
    out = time_interleaved(
        {v: (lambda v=v: steps[v](v)) for v in variants}, args.warmup, args.steps, args.settle, baselines
    )
    out["variants"] = variants
    for variant in variants[1:]:
        out[f"{variant}_ratio"] = out[f"{variant}_ms"] / out["bare_ms"]
        out[f"{variant}_cpu_ratio"] = out[f"{variant}_cpu_ms"] / out["bare_cpu_ms"]
    for variant, bare in baselines.items():
        out[f"{variant}_vs_{bare}"] = out[f"{variant}_ms"] / out[f"{bare}_ms"]
    out.update({f"{variant}_compile_s": seconds for variant, seconds in compile_s.items()})
    timed_fused = [v for v in variants if v in BARE_OF] if args.breakdown else []
    for variant in timed_fused:
        key = breakdown_prefix(variant)
        out[f"{key}kernel_ms"] = passes = kernel_breakdown(steps[variant], args.steps, variant)
        out[f"{key}kernel_total_ms"] = sum(passes.values())
        added = out[f"{variant}_ms"] - out[f"{BARE_OF[variant]}_ms"]  # <= 0 on tiny batches or a noisy run: no share
        out[f"{key}kernel_share_of_{variant}_overhead"] = out[f"{key}kernel_total_ms"] / added if added > 0 else None
    if not args.no_memory:
        for variant in variants:
            out[f"{variant}_peak_mib"] = peak_step_memory(steps[variant], variant, device)
        if out["bare_peak_mib"]:
            for variant in variants[1:]:
                out[f"{variant}_peak_ratio"] = out[f"{variant}_peak_mib"] / out["bare_peak_mib"]
    return out


def row(r: dict, variant: str) -> str:
    text = f"{variant:19s} {r[variant + '_ms']:8.1f} | {r[variant + '_cpu_ms']:8.1f}"
    if variant != "bare":
        text += f"  ×{r[variant + '_ratio']:.3f} | ×{r[variant + '_cpu_ratio']:.3f}"
        text += f" | paired ×{r[variant + '_paired_ratio']:.3f}"
    if r.get(variant + "_peak_mib") is not None:
        text += f"   peak {r[variant + '_peak_mib']:7.1f} MiB"
        if variant != "bare" and r.get(variant + "_peak_ratio"):
            text += f" (×{r[variant + '_peak_ratio']:.3f})"
    return text


def paired_text(r: dict, key: str) -> str:
    """The text "paired ×median [q25, q75]" of the per-round ratios stored under `key`_paired_*."""
    return f"paired ×{r[key + '_paired_ratio']:.3f} [{r[key + '_paired_q25']:.3f}, {r[key + '_paired_q75']:.3f}]"


def results_file_name(args, modes: list[str]) -> str:
    """overhead-<φ modes>-b<batch>-t<threads>[-<device>][-compile[-<backend>]][-breakdown][-keepmem][-passive]
    [-settle<N>][-noeager][-channelslast].json: the settings that change the figures (not the number of steps,
    which only changes their precision)."""
    return results_name(
        "overhead", "+".join(modes), f"b{args.batch}", f"t{args.threads}", args.device != "cpu" and args.device,
        compile_suffix(args), args.breakdown and "breakdown", args.keep_freed_memory and "keepmem",
        args.omp_passive and "passive", args.settle and f"settle{args.settle}", args.no_eager and "noeager",
        args.channels_last and "channelslast",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--settle", type=int, default=0, help="untimed steps of a variant before each timed one (0: strict alternation)"
    )
    parser.add_argument("--batch", type=int, default=128)
    add_thread_arguments(parser)
    parser.add_argument("--phi", default="frozen,trainable", help="comma list of: frozen, trainable")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--no-eager", action="store_true", help="leave out eager and eager_compiled (slow; their heap follows them)"
    )
    add_device_arguments(parser, compile_help="also time torch.compile'd bare, eager and fused (CPU) models")
    parser.add_argument(
        "--channels-last", action="store_true", help="also time bare and fused models in channels-last memory"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="time more steps of each fused variant: ms per step of each kernel pass",
    )
    add_results_arguments(parser)
    args = parser.parse_args()
    require_at_least(parser, args, steps=1, warmup=0, settle=0, batch=1, threads=1)
    modes = [m.strip() for m in args.phi.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("frozen", "trainable")]
    if unknown or not modes:  # a typo would otherwise be timed as frozen φ under its own name
        parser.error(f"--phi {args.phi!r}: a comma list of frozen, trainable (got {', '.join(unknown) or 'nothing'})")
    device = parsed_device(parser, args.device)
    if args.breakdown and device.type != "cpu":
        parser.error("--breakdown times the fused kernels, which run on CPU only: drop it or use --device cpu")
    device = checked_device(parser, args.device)
    torch.set_num_threads(args.threads)
    fused = kernels.fused_available()
    if not fused and device.type == "cpu":
        print("WARNING: fused kernels unavailable here; the 'fused' variant runs the eager path")
        if args.breakdown:
            parser.error(f"--breakdown: the fused kernels are unavailable here ({kernels.build.load_error()})")
    results = {}
    for mode in modes:
        r = results[mode] = measure(mode == "trainable", args)
        print(f"φ {mode}: ms/step (median of {args.steps}, wall | process CPU; ratios wall | CPU | paired wall)")
        for variant in r["variants"]:
            print("  " + row(r, variant))
        for variant in [v for v in r["variants"] if f"{breakdown_prefix(v)}kernel_ms" in r]:
            key, bare = breakdown_prefix(variant), BARE_OF[variant]
            passes = ", ".join(f"{name} {ms:.1f}" for name, ms in r[f"{key}kernel_ms"].items())
            share = r[f"{key}kernel_share_of_{variant}_overhead"]
            print(f"  {variant} kernels, ms/step: {passes}; total {r[f'{key}kernel_total_ms']:.1f}"
                  + (f" = {100 * share:.0f}% of the {r[f'{variant}_ms'] - r[f'{bare}_ms']:.1f} ms {variant} adds to "
                     f"{bare}" if share is not None else ""))  # fmt: skip
        if args.compile:
            compiled = [v for v in COMPILED if v + "_compile_s" in r]
            print("  compiled, sites vs bare: " + ", ".join(f"{v} ×{r[v + '_vs_bare_compiled']:.3f} ("
                  + paired_text(r, f"{v}_vs_bare_compiled") + ")" for v in compiled[1:]) + "; compile time "
                  + ", ".join(f"{v} {r[v + '_compile_s']:.0f} s" for v in compiled))  # fmt: skip
        if "fused_channels_last_vs_bare_channels_last" in r:
            print(f"  channels-last, sites vs bare: ×{r['fused_channels_last_vs_bare_channels_last']:.3f} ("
                  + paired_text(r, "fused_channels_last_vs_bare_channels_last") + ")")  # fmt: skip
    for mode, r in results.items():
        if "fused_ms" in r and "eager_ms" in r:
            print(f"speed-up of fused over eager (φ {mode}): ×{r['eager_ms'] / r['fused_ms']:.2f}")
    publish("overhead", {
        "model": "cifar_resnet20", "batch": args.batch,
        "image_size": 32, "threads": args.threads, "steps": args.steps, "warmup": args.warmup, "settle": args.settle,
        "no_eager": args.no_eager, "fused_available": fused, "torch": torch.__version__, "device": args.device,
        "compile": args.compile,
        "compile_backend": args.compile_backend if args.compile else None,
        "device_name": device_name(device),
        **environment(), "results": results,
    }, results_path(args, results_file_name(args, modes)))  # fmt: skip


if __name__ == "__main__":
    main()
