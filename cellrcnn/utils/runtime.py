"""Where work runs: the device, and the process's place in a ``torchrun`` job (DistributedDataParallel's
process group).

Training (:func:`cellrcnn.engine.loop.setup_runtime`) and prediction over many files
(``cellrcnn-predict`` under ``torchrun``) join the group the same way: NCCL on
CUDA, one process per GPU; gloo on the CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as torch_dist

from .errors import StoppedTogether

__all__ = ["resolve_device", "Runtime", "join_process_group", "shard", "barrier", "gather", "check_in",
           "StoppedTogether", "process_group", "leave_process_group"]

T = TypeVar("T")


def resolve_device(name: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when a CUDA device is present, else ``"cpu"``; asking for CUDA
    without one is a ValueError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available; set train.device='auto' or 'cpu'")
    return str(name)


@dataclass
class Runtime:
    """Where work runs: device, mixed precision and the process's place under torchrun."""

    device: torch.device
    amp: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def join_process_group(device: str = "auto") -> Runtime:
    """Resolve ``device`` and, when started by ``torchrun`` (``WORLD_SIZE`` > 1), join the process group.

    Each process takes the GPU of its ``LOCAL_RANK``; on the CPU the group uses gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    want = resolve_device(device)
    resolved = torch.device(f"cuda:{local_rank}" if want == "cuda" and world_size > 1 else want)
    if world_size > 1 and not torch_dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        torch_dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Runtime(device=resolved, rank=rank, world_size=world_size)


def shard(items: Sequence[T], runtime: Runtime) -> list[T]:
    """This process's share of ``items``: every ``world_size``-th one from its rank (all of them alone)."""
    return list(items[runtime.rank::runtime.world_size])


def barrier(runtime: Runtime) -> None:
    """Wait until every process of the group gets here (nothing alone)."""
    if runtime.distributed:
        torch_dist.barrier()


def gather(item: T, runtime: Runtime) -> list[T]:
    """``item`` of every process, in rank order, on every process (``[item]`` alone); pickled, so any object."""
    if not runtime.distributed:
        return [item]
    gathered: list = [None] * runtime.world_size
    torch_dist.all_gather_object(gathered, item)
    return gathered


def check_in(runtime: Runtime, error: BaseException | None, what: str, finite: bool = True) -> bool:
    """Every process's check-in after a unit of work (one all-reduce): whether every process's loss was ``finite``.

    Raises this process's ``error`` once every process knows of it, or :class:`StoppedTogether` (with ``what``:
    what is kept and how to go on) when another process failed, so that all stop together instead of waiting
    for the failed one at the next collective call until the group's timeout.
    """
    if not runtime.distributed:
        if error is not None:
            raise error
        return finite
    flags = torch.tensor([0 if finite else 1, runtime.rank + 1 if error is not None else 0], device=runtime.device)
    torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if flags[1].item():
        raise StoppedTogether(int(flags[1].item()) - 1, runtime.world_size, what)
    return not flags[0].item()


@contextmanager
def process_group(device: str = "auto") -> Iterator[Runtime]:
    """:func:`join_process_group` for a ``with`` block, which leaves the group however the block ends (a return,
    an error, an interrupt)."""
    runtime = join_process_group(device)
    try:
        yield runtime
    finally:
        leave_process_group(runtime)


def leave_process_group(runtime: Runtime) -> None:
    """Leave the group joined by :func:`join_process_group` (nothing alone)."""
    if runtime.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
