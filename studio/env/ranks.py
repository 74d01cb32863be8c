"""Which process of a run this is, and the few decisions the ranks of a multi-process run take together.

A run of N processes (accelerate / torchrun set WORLD_SIZE, RANK, LOCAL_RANK) has one writer: rank 0 alone writes
the run folder. The collectives are no-ops outside a process group, so single-process code calls them freely.
torch is imported only inside a group.
"""
from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def local_world_size() -> int:
    """Processes of the group on this machine (torchrun's LOCAL_WORLD_SIZE; the whole group when unset)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()) or 1)


def in_group() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes the run folder."""
    return rank() == 0


def _ready() -> bool:
    if not in_group():
        return False
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a stop request seen by one rank stops all at the same step)."""
    if not _ready():
        return bool(flag)
    import torch
    import torch.distributed as dist
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main(values: list[float]) -> list[float]:
    """Rank 0's values on every rank (decisions rank 0 takes from the files it alone writes)."""
    if not _ready():
        return list(values)
    import torch
    import torch.distributed as dist
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.broadcast(t, src=0)
    return t.tolist()


def sum_ranks(*ns: int) -> list[int]:
    """Each integer summed over the ranks (tokens seen by the whole group), in one all-reduce."""
    if not _ready():
        return [int(n) for n in ns]
    import torch
    import torch.distributed as dist
    t = torch.tensor([int(n) for n in ns], dtype=torch.int64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


def _device():
    import torch
    import torch.distributed as dist
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
