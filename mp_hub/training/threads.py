"""A hint for CPU runs that leave cores idle: `accelerate launch` gives each CPU process one thread unless told
otherwise (`--num_cpu_threads_per_process`, or `--cpu` / a config with `use_cpu: true`, where it divides the
cores among the local processes), so a single-process CPU run uses one core of many without saying so."""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform tells it, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_thread_hint(
    device: torch.device, *, local_processes: int | None = None, cores: int | None = None
) -> str | None:
    """A one-line hint when a CPU process computes on fewer threads than its share of the cores, else None.

    `local_processes`: the processes sharing this machine's cores (default: torchrun's LOCAL_WORLD_SIZE, which
    `accelerate launch` sets for several processes, else 1); `cores`: default `usable_cores()`.
    """
    if device.type != "cpu":
        return None
    if local_processes is None:
        given = os.environ.get("LOCAL_WORLD_SIZE", "1")
        if not given.strip().isdigit():
            raise ConfigError(f"LOCAL_WORLD_SIZE must be a whole number of processes, got {given!r}")
        local_processes = int(given)
    share = (usable_cores() if cores is None else cores) // max(local_processes, 1)
    threads = torch.get_num_threads()
    if threads >= share:
        return None
    return (
        f"computing on {threads} CPU thread(s) while {share} cores are free for this process: "
        f"`accelerate launch --num_cpu_threads_per_process {share}` (or OMP_NUM_THREADS={share}) would use them"
    )
