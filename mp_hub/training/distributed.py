"""The few collective operations of meta-training, over `accelerate.utils` (a no-op in a single process).

Tasks are spread over processes in contiguous blocks whose sizes differ by at most one; every result that must
not depend on the world size is computed so that it does not (see `exact_task_sum`).
"""

from __future__ import annotations

import torch
from accelerate.utils import broadcast, gather, reduce

from ..errors import DistributedError


def assign_tasks(num_tasks: int, world_size: int, rank: int) -> range:
    """The tasks of process `rank`: contiguous blocks whose sizes differ by at most one, the larger ones first.

    10 tasks on 8 processes: [0, 1], [2, 3], [4], ..., [9]. No process is idle, and the slowest one (which sets the
    step time) holds ceil(num_tasks / world_size) tasks, as few as any assignment allows.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"process {rank} of {world_size}: need world_size >= 1 and 0 <= rank < world_size")
    if world_size > num_tasks:
        raise DistributedError(
            f"{world_size} processes for {num_tasks} tasks: every process needs at least one task; "
            f"launch with --num_processes <= {num_tasks} (or make more tasks)"
        )
    base, larger = divmod(num_tasks, world_size)  # the first `larger` processes hold one task more
    start = rank * base + min(rank, larger)
    return range(start, start + base + (rank < larger))


def exact_task_sum(rows: torch.Tensor) -> torch.Tensor:
    """Sum over tasks of a (num_tasks, n) matrix in which each process filled only the rows of its own tasks.

    One all-reduce (sum) of the flat matrix: each entry has one non-zero term, so the collective adds only
    zeros to it and is exact whatever its order. Then each process sums the rows in task order, so the
    result is bit-identical for any world size (a plain all-reduce of per-process sums would round
    differently for 1 × 4 and 2 × 2 tasks, and Adam's first steps amplify that into visible differences).
    """
    full = reduce(rows.reshape(-1), reduction="sum").reshape(rows.shape)
    total = full[0].clone()
    for row in full[1:]:
        total += row
    return total


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy the main process's parameters into every process's `module` (one flat broadcast)."""
    params = list(module.parameters())
    if not params:
        return
    flat = broadcast(torch.cat([p.detach().reshape(-1) for p in params]).contiguous(), from_process=0)
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def parameter_checksum(module: torch.nn.Module) -> torch.Tensor:
    """(sum, sum |x|, sum i·x) in float64 of the flat parameters: differs if any value differs (practically)."""
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()]).double()
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), flat.abs().sum(), (flat * weights).sum()])


def check_in_sync(module: torch.nn.Module, step: int, what: str = "φ") -> None:
    """Gather the checksum from every process; a `DistributedError` if any differs from the main process's."""
    sums = gather(parameter_checksum(module)[None])
    if not torch.equal(sums, sums[:1].expand_as(sums)):
        raise DistributedError(
            f"{what} diverged across processes at step {step}: checksums per rank {sums.tolist()} "
            "(a process applied a different update; check that every process runs the same code and data)"
        )


def reduce_min_max(values: list[int], device: torch.device) -> tuple[int, int]:
    """(min, max) of integers held by all processes (a process may hold none)."""
    big = 2**62
    local = torch.tensor([-min(values, default=big), max(values, default=-big)], dtype=torch.long, device=device)
    low, high = reduce(local, reduction="max").tolist()
    return int(-low), int(high)
