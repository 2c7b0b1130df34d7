"""Distributed training in plain lines: the only module that reads torchrun's environment.

torchrun (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them the process is a world
of one and nothing here touches ``torch.distributed``. Backend: NCCL on CUDA, gloo on CPU.

Shutdown: a rank can abort at exit (``terminate called without an active exception``) when
``destroy_process_group`` runs while the DDP model is alive; the fix that held in 65 of 65
runs is ``barrier(); del model, optimizer; gc.collect(); destroy_process_group()``, which
``shutdown`` does given a dict that holds the only references.

Restarts (``torchrun --max-restarts``): torchrun's agent hosts the key-value store the workers
meet in (``TORCHELASTIC_USE_AGENT_STORE=True``) and keeps it across restarts, and torch 2.13
does not separate the keys of one attempt from the next; a restarted rank could read a dead
peer's gloo address (or NCCL id) and fail with ``connectFullMesh failed ... Connection
refused`` (pytorch/pytorch#135712). ``init`` therefore joins under a prefix per attempt when
one agent runs every worker (``GROUP_WORLD_SIZE=1``: its restart count is the same for all).
With several nodes the counts can differ between agents (a restart for a membership change
does not count), so there the launcher should set ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``
(a fresh store per rendezvous round hosted by rank 0).
"""

from __future__ import annotations

import gc
import os
import random
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from glioseg.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands.

    Attributes:
        rank: global rank (0 on a single process).
        world_size: number of processes.
        local_rank: rank within the node (selects the CUDA device).
        local_world_size: processes on this node (to share CPU threads).
        device: the device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, draws bars and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"environment variable {name}={raw!r} is not an integer") from None


def env_ranks() -> tuple[int, int, int, int]:
    """``(rank, world_size, local_rank, local_world_size)`` from torchrun's environment."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world, local_rank, local_world


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` when asked for (or ``auto`` and available), else ``cpu``."""
    if preference not in ("auto", "cpu", "cuda"):
        raise InputError(f"device {preference!r} is not auto, cpu or cuda")
    if preference == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda was asked for but no CUDA device is available")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init(device: str = "auto", threads: int = 0, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when launched by torchrun; pick the device; share CPU threads.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for this process; 0 divides the cores among the node's processes.
        timeout_s: collective timeout.
    """
    rank, world, local_rank, local_world = env_ranks()
    dev = pick_device(device, local_rank)
    if threads > 0:
        torch.set_num_threads(threads)
    elif local_world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        timeout = timedelta(seconds=timeout_s)
        store = attempt_store(world, timeout)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world,
                                    timeout=timeout)
    return DistInfo(rank, world, local_rank, local_world, dev)


def attempt_prefix() -> str | None:
    """The store prefix of this torchrun attempt, ``glioseg/attempt_<restart count>``, when
    torchrun's single agent hosts the store (see the module docstring); else None."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if _env_int("GROUP_WORLD_SIZE", 1) != 1:
        return None
    return f"glioseg/attempt_{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}"


def attempt_store(world: int, timeout: timedelta) -> dist.Store | None:
    """A client of the agent's store (``MASTER_ADDR:MASTER_PORT``) under ``attempt_prefix``, or
    None to let ``init_process_group`` read the environment as usual."""
    prefix = attempt_prefix()
    if prefix is None:
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0),
                          world_size=world, is_master=False, timeout=timeout)
    return dist.PrefixStore(prefix, store)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op on a single process)."""
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (in place; returned for chaining). Single process: as is."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(value: float | torch.Tensor, device: torch.device | None = None) -> Any:
    """Mean over ranks of a float (returns a float) or a tensor (returns a new tensor)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().clone().to(torch.float64 if value.device.type == "cpu" else
                                      torch.float32)
        all_reduce_sum(t)
        return t / (dist.get_world_size() if is_initialized() else 1)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device or collective_device())
    all_reduce_sum(t)
    return float(t.item()) / (dist.get_world_size() if is_initialized() else 1)


def collective_device() -> torch.device:
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` on a single process."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int) -> None:
    """Seed python, numpy's legacy global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shutdown(live: MutableMapping[str, Any] | None = None, clean: bool = True) -> None:
    """Leave the process group without the exit-time abort.

    Args:
        live: a dict holding the only references to the DDP model, optimiser, etc.; it is
            cleared (``del model, optimizer``) and garbage collected before the group goes.
        clean: False after an error on this rank: skip the barrier (peers may be gone).
    """
    if is_initialized() and clean:
        dist.barrier()
    if live is not None:
        live.clear()
    gc.collect()
    if is_initialized():
        dist.destroy_process_group()
