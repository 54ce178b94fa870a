"""Cost of a MetaPerturb training step on CIFAR ResNet-20: bare model vs φ at all 9 sites, eager and fused.

    python benchmarks/overhead.py [--steps 10] [--warmup 3] [--batch 128] [--threads 2] [--phi frozen,trainable]
                                  [--no-memory] [--omp-passive] [--keep-freed-memory]

Variants, interleaved step by step in one process (on a shared machine load drifts; interleaving spreads it
over all variants alike), each step = forward + cross-entropy + backward + Adam step, batch of 32×32 images:
  bare   φ attached with `mp_hub.attach` but disabled (the hooks return at once: the bare model's graph),
  eager  every site on the straightforward `functional` path (the authors' op-by-op formulation),
  fused  every site on the fused kernels (`mp_hub.kernels`).
"frozen" φ (transfer: only grad wrt x flows through the sites) and "trainable" φ (meta-training: also
grads wrt φ) are measured separately. Reported: median wall-clock ms/step and median process CPU ms/step
(less sensitive to other processes), and ratios to bare: of the medians, and "paired" (the median of each
step's ratio to the bare step of the same round, which cancels slow phases of a shared host).

Peak memory: one extra step per variant under torch.profiler(profile_memory=True); the allocation and free
events of torch's CPU allocator, replayed in time order, give the peak of live bytes during the step above
the level at its start (saved activations, gradients, temporaries; parameters and Adam state exist before).
Scratch buffers of the fused kernels (a few hundred KiB per thread, allocated once) are outside this count.

On a machine shared with other jobs, OpenMP threads that spin at barriers while their partner is descheduled
can make whole phases of a run 5–10× slower (bimodal step times, for every variant); --omp-passive sets
OMP_WAIT_POLICY=PASSIVE for steadier figures.

--keep-freed-memory: glibc's malloc keeps freed memory instead of page-faulting every large activation in
again (`_common.KEEP_FREED_MEMORY`; about half the bare forward's time on this machine goes to those faults).

The last line printed is JSON with every figure and the git commit (suffixed -dirty for uncommitted changes).
"""

from __future__ import annotations

import argparse
import json

from _common import apply_process_flags

apply_process_flags()  # --keep-freed-memory, --omp-passive: before torch (and its OpenMP runtime) loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import add_thread_arguments, environment, git_commit, time_interleaved  # noqa: E402

from mp_hub import MetaPerturb, attach, kernels  # noqa: E402
from mp_hub.models import model_from_type  # noqa: E402

VARIANTS = ("bare", "eager", "fused")


def build(trainable_phi: bool, batch: int):
    torch.manual_seed(0)
    model = model_from_type("cifar_resnet20", num_labels=10, image_size=32).train()
    phi = MetaPerturb()
    handle = attach(model, phi, trainable_phi=trainable_phi)
    sites = list(handle.site_modules().values())
    assert len(sites) == 9, f"expected 9 sites on ResNet-20, got {len(sites)}"
    params = [p for p in model.parameters() if p.requires_grad]  # includes φ when trainable
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x = torch.randn(batch, 3, 32, 32)
    labels = torch.randint(0, 10, (batch,))

    def step(variant: str) -> None:
        for site in sites:
            site.set_backend("fused" if variant == "fused" else "eager")
        handle.enabled = variant != "bare"
        logits = model(pixel_values=x).logits
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def peak_step_memory(step, variant: str) -> float | None:
    """Peak live bytes (MiB) allocated through torch's CPU allocator during one step, above its start."""
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


def measure(trainable_phi: bool, args) -> dict:
    step = build(trainable_phi, args.batch)
    out = time_interleaved({v: (lambda v=v: step(v)) for v in VARIANTS}, args.warmup, args.steps)
    for variant in ("eager", "fused"):
        out[f"{variant}_ratio"] = out[f"{variant}_ms"] / out["bare_ms"]
        out[f"{variant}_cpu_ratio"] = out[f"{variant}_cpu_ms"] / out["bare_cpu_ms"]
    if not args.no_memory:
        for variant in VARIANTS:
            out[f"{variant}_peak_mib"] = peak_step_memory(step, variant)
        if out["bare_peak_mib"]:
            for variant in ("eager", "fused"):
                out[f"{variant}_peak_ratio"] = out[f"{variant}_peak_mib"] / out["bare_peak_mib"]
    return out


def row(r: dict, variant: str) -> str:
    text = f"{variant:5s} {r[variant + '_ms']:8.1f} | {r[variant + '_cpu_ms']:8.1f}"
    if variant != "bare":
        text += f"  ×{r[variant + '_ratio']:.3f} | ×{r[variant + '_cpu_ratio']:.3f}"
        text += f" | paired ×{r[variant + '_paired_ratio']:.3f}"
    if r.get(variant + "_peak_mib") is not None:
        text += f"   peak {r[variant + '_peak_mib']:7.1f} MiB"
        if variant != "bare" and r.get(variant + "_peak_ratio"):
            text += f" (×{r[variant + '_peak_ratio']:.3f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    add_thread_arguments(parser)
    parser.add_argument("--phi", default="frozen,trainable", help="comma list of: frozen, trainable")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fused = kernels.fused_available()
    if not fused:
        print("WARNING: fused kernels unavailable here; the 'fused' variant runs the eager path")
    results = {}
    for mode in [m.strip() for m in args.phi.split(",") if m.strip()]:
        r = results[mode] = measure(mode == "trainable", args)
        print(f"φ {mode}: ms/step (median of {args.steps}, wall | process CPU; ratios wall | CPU | paired wall)")
        for variant in VARIANTS:
            print("  " + row(r, variant))
    for mode, r in results.items():
        print(f"speed-up of fused over eager (φ {mode}): ×{r['eager_ms'] / r['fused_ms']:.2f}")
    print(json.dumps({
        "benchmark": "overhead", "commit": git_commit(), "model": "cifar_resnet20", "batch": args.batch,
        "image_size": 32, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
        "fused_available": fused, "torch": torch.__version__,
        **environment(), "results": results,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
