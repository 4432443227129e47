"""Devices and data-parallel runs on ``torch.distributed`` (launched by ``torchrun``).

tpunlearn takes part in a process group only when one is initialised: by the user's own
``init_process_group`` in a torchrun script, or by the CLI from torchrun's environment
(:func:`process_group_from_env`). Every rank reads the same samples; scoring shards the
instances across the ranks and all-reduces what they found (see :mod:`tpunlearn.scoring`).
Rank 0 alone plans, prunes and writes.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import distributed as dist

from tpunlearn.errors import DistributedError, UsageError
from tpunlearn.settings import check_device


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group; ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0, and in a process that is not part of a group: the one that writes."""
    return world()[0] == 0


def resolve_device(spec: str | torch.device) -> torch.device:
    """The device ``spec`` names (``cpu``, ``cuda`` or ``cuda:N``), checked against this machine.

    ``cuda`` means the current CUDA device (under torchrun, the one set for the rank).
    """
    text = check_device(str(spec))
    device = torch.device(text)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        built = "" if torch.version.cuda else ", a build without CUDA"
        raise UsageError(f"device {text!r}: CUDA is not available on this machine (torch {torch.__version__}{built}); "
                         "use cpu")
    count = torch.cuda.device_count()
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.index >= count:
        raise UsageError(f"device {text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over every rank (a new tensor on the input's device; itself when alone).

    NCCL reduces CUDA tensors only, so under it the data travels through the rank's GPU.
    """
    if world()[1] == 1:
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buffer = tensor.detach().to(comm, copy=True)
    dist.all_reduce(buffer, op=ops[op])
    return buffer.to(tensor.device)


def rank_device(spec: str) -> torch.device:
    """The device this process uses for ``spec``: under torchrun ``cuda`` is ``cuda:LOCAL_RANK``."""
    local_size = _env_int("LOCAL_WORLD_SIZE", 1)
    if _env_int("WORLD_SIZE", 1) > 1 and str(spec).startswith("cuda") and torch.cuda.is_available():
        if ":" in str(spec) and local_size > 1:
            raise UsageError(f"device {spec!r} with {local_size} processes per node: pass cuda, and each rank "
                             "uses cuda:LOCAL_RANK")
        if str(spec) == "cuda":
            local_rank = _env_int("LOCAL_RANK", 0)
            if local_rank >= torch.cuda.device_count():
                raise UsageError(f"{local_size} processes per node but {torch.cuda.device_count()} CUDA device(s): "
                                 "start at most one process per GPU")
            return resolve_device(f"cuda:{local_rank}")
    return resolve_device(spec)


@contextlib.contextmanager
def process_group_from_env(device: torch.device) -> Iterator[bool]:
    """Join the process group torchrun's environment describes, for the ``with`` block.

    Yields True when this call made the group (it is destroyed on exit); False outside
    torchrun (``WORLD_SIZE`` unset or 1) or when a group already exists. The backend is
    gloo for CPU and nccl for CUDA.
    """
    if _env_int("WORLD_SIZE", 1) <= 1 or (dist.is_available() and dist.is_initialized()):
        yield False
        return
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed; run a single process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    except Exception as exc:  # noqa: BLE001 - missing MASTER_ADDR, unreachable store, ...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(f"cannot join the torchrun process group ({backend}): {detail}") from None
    try:
        yield True
    finally:
        dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer") from None
