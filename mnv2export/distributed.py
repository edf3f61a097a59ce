"""PyTorch DistributedDataParallel set-up for runs started by ``torchrun`` (one process per GPU, or gloo on CPU)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
_CONTROL = None  # the process group for CPU-side decisions (a gloo group beside NCCL; None: the default group)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (env://); a single process when not launched by torchrun."""
    if not launched_by_torchrun():
        return DistInfo()
    global _CONTROL
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    if _CONTROL is None and dist.get_backend() == "nccl":
        # decisions every rank must share (pass over a batch, stop before training) travel as CPU tensors over gloo:
        # under NCCL a GPU tensor and its .item() would make the CPU wait for the GPU at every step
        _CONTROL = dist.new_group(backend="gloo")
    return DistInfo(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", 0)), world_size=dist.get_world_size())


def shutdown() -> None:
    global _CONTROL
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL = None


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (returns the input unchanged in a single process)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _reduce_int(n: int, op) -> int:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return n
    t = torch.tensor([n], dtype=torch.int64)  # CPU, over gloo (see init)
    dist.all_reduce(t, op=op, group=_CONTROL)
    return int(t.item())


def fewest_over_ranks(n: int) -> int:
    """The smallest ``n`` over the ranks of the running process group (``n`` itself without one): lets every rank
    take the same decision, e.g. to pass over a batch, without which the others would wait in DDP's gradient
    all-reduce for the one that did not step."""
    return _reduce_int(n, dist.ReduceOp.MIN)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (``flag`` itself in a single process)."""
    return bool(_reduce_int(int(flag), dist.ReduceOp.MAX))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
