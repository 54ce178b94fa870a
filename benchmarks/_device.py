"""The --device and --compile flags of the timing benchmarks (`benchmarks/gpu.sh` runs them on CUDA): their
arguments, the refusal of a device this machine does not have, and timing that waits for the device."""

from __future__ import annotations

from collections.abc import Callable

import torch
from _common import cpu_name

DEVICE_TYPES = ("cpu", "cuda")


def add_device_arguments(parser, *, compile_help: str) -> None:
    """--device (cpu, cuda[:N]), --compile (`compile_help` says what it adds) and --compile-backend."""
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N]: the model, data and timing on that GPU")
    parser.add_argument("--compile", action="store_true", help=compile_help)
    parser.add_argument(
        "--compile-backend", "--compile_backend", default="inductor",
        help="torch.compile backend of the compiled variants (aot_eager: a quick check of the graphs, no codegen)",
    )  # fmt: skip


def parsed_device(parser, name: str) -> torch.device:
    """torch.device(name), or parser.error (exit 2) where it is not a cpu or cuda device."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        parser.error(f"--device {name!r}: {err}")
    if device.type not in DEVICE_TYPES:
        parser.error(f"--device {name!r}: this benchmark runs on {' or '.join(DEVICE_TYPES)}")
    return device


def checked_device(parser, name: str) -> torch.device:
    """`parsed_device(name)`, or parser.error (exit 2, nothing run, nothing written) where this machine does not
    have it: a GPU benchmark never silently times the CPU instead."""
    device = parsed_device(parser, name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {name!r}: torch {torch.__version__} sees no CUDA device here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """fn, then a wait for the device's queued kernels (on CUDA): the wall time of a call is then its work's."""
    if device.type != "cuda":
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize(device)

    return call


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def compile_suffix(args) -> str | bool:
    """For a results file name: "compile" (inductor) or "compile-<backend>"; False without --compile."""
    if not args.compile:
        return False
    return "compile" if args.compile_backend == "inductor" else f"compile-{args.compile_backend}"
