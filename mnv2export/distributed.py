"""PyTorch DistributedDataParallel set-up for runs started by ``torchrun`` (one process per GPU, or gloo on CPU)."""

from __future__ import annotations

import gc
import logging
import os
import re
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
        if dist.get_rank() == 0:  # the other ranks log nothing (only rank 0 logs)
            log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    if _CONTROL is None and dist.get_backend() == "nccl":
        # decisions every rank must share (pass over a batch, stop before training) travel as CPU tensors over gloo:
        # under NCCL a GPU tensor and its .item() would make the CPU wait for the GPU at every step
        _CONTROL = dist.new_group(backend="gloo")
    return DistInfo(
        rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", 0)), world_size=dist.get_world_size()
    )


def shutdown() -> None:
    """Leave the process group. A DistributedDataParallel model still alive then (held by a reference cycle) aborts
    the process when it is freed later ('terminate called without an active exception', SIGABRT: a run that
    succeeded fails under torchrun), so unreachable objects are collected first."""
    global _CONTROL
    if dist.is_initialized():
        gc.collect()
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


def stop_together(error: BaseException | None, info: DistInfo) -> None:
    """Every rank learns whether any rank met an error in a check, and all stop together (no rank left waiting in a
    collective for one that left). An error identical on every rank (a flag, a setting) is raised by rank 0 alone, the
    other ranks exit 1 without a word; an error of one rank only (its own device, files) is raised by that rank."""
    if not info.enabled:
        if error is not None:
            raise error
        return
    said: list[str | None] = [None] * info.world_size
    dist.all_gather_object(said, None if error is None else f"{type(error).__name__}: {error}", group=_CONTROL)
    if all(s is None for s in said):
        return
    if error is not None and (info.is_main or said[info.rank] != said[0]):
        raise error
    raise SystemExit(1)


def all_gather_objects(obj, info: DistInfo) -> list:
    """``obj`` of every rank, in rank order (picklable objects, over the CPU control group); ``[obj]`` alone."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj, group=_CONTROL)
    return out


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): after the last training step each rank holds
    those of its own batches (DDP broadcasts them only at the start of a forward), and rank 0's are the ones saved."""
    if info.enabled:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


# what a collective raises when a peer process is gone (killed, interrupted, failed): gloo's "Connection closed / reset
# by peer", a broken pipe, or torch's DistError family (NCCL errors, network errors)
_PEER_GONE = re.compile(r"Connection (closed|reset) by peer|Broken pipe|NCCL communicator was aborted", re.IGNORECASE)


def peer_failure(exc: BaseException) -> str | None:
    """A short reason when ``exc`` is a collective that failed because another process of the job stopped, else None
    (any other error is the caller's own and must be left as it is)."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    if not (isinstance(exc, dist.DistError) or _PEER_GONE.search(text)):
        return None
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line)  # the C++ source location gloo puts first
    line = re.split(r"(?<=\.)\s", line, maxsplit=1)[0].rstrip(".")  # its first sentence
    return line[:160]
