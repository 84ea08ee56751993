"""Data-parallel training under `torchrun`: one process per rank, DDP over the dense parameters.

torchrun (torch.distributed elastic) starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous; this module joins them (gloo on the CPU, NCCL on CUDA), wraps the model in
DistributedDataParallel, and supplies what DDP alone does not: a loss normalised by the global row counts
(so N ranks step exactly like one process on the union of their minibatches; a rank whose shard ran out
steps along with zero weight until every rank's has), the fused row-wise Adagrad's exchange of looked-up
rows (its update runs inside the lookup's backward, out of DDP's sight), and the per-rank RNG states a
checkpoint needs. Without WORLD_SIZE > 1 everything is a no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from unictr.model import UnifiedCTR


@dataclass
class Dist:
    """This process's place in the job; `world == 1` means a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    restart: int = 0  # torchrun's restart count: > 0 after an elastic restart
    groups: dict[str, Any] = field(default_factory=dict)
    idle: bool = False  # this rank has run out of minibatches and steps along with zero weight

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def from_env() -> Dist:
    """The job torchrun describes in the environment (RANK, WORLD_SIZE, ...), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(
        rank=int(os.environ.get("RANK", "0")),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        restart=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
    )


def join(d: Dist, device: torch.device) -> torch.device:
    """Join the process group (NCCL for CUDA, gloo for the CPU); returns this rank's device."""
    if not d.enabled:
        return device
    if device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        device = torch.device("cuda", d.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, store=_attempt_store(d), rank=d.rank, world_size=d.world)
    # the fused embedding's row exchange runs inside backward, interleaved with DDP's bucket all-reduces in an
    # order that may differ between ranks: it gets its own group, so the two never match against each other
    d.groups["embedding"] = dist.new_group(backend=backend)
    return device


def _attempt_store(d: Dist) -> dist.Store:
    """The rendezvous store, its keys namespaced by torchrun's restart count.

    torchrun's agent keeps one store across elastic restarts, so a restarted rank could read a dead
    rank's address from the previous attempt and fail to connect (seen with gloo on torch 2.13).
    """
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), d.world,
        is_master=d.rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True",
        timeout=timedelta(minutes=30),
    )
    return dist.PrefixStore(f"unictr/attempt-{d.restart}", store)


def wrap(model: UnifiedCTR, d: Dist) -> nn.Module:
    """`model` in DDP (or as it is on one process). The fused table stays out of DDP when its row-wise
    Adagrad updates it in backward (it has no gradient to reduce); `exchange_rows` keeps it in step."""
    if not d.enabled:
        return model
    table = model.embedding.weight
    fused = model.embedding.fused_update
    if fused is not None:
        dist.broadcast(table.data, src=0)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ["embedding.weight"])
        group = d.groups["embedding"]
        fused.exchange = lambda rows, grad: exchange_rows(rows[:0] if d.idle else rows, grad, d.world, group)
    # a rank's minibatch may lack a surface (its tower, heads and calibration get no gradient there)
    return DistributedDataParallel(model, find_unused_parameters=True)


def exchange_rows(rows: Tensor, grad: Tensor, world: int, group: Any) -> tuple[Tensor, Tensor]:
    """Every rank's looked-up rows `[n_r, k]` and bag gradients `[n_r, dim]`, concatenated in rank order, the
    gradients divided by `world`: what one process would see on the union of the minibatches (each rank's
    loss is scaled by `world`, see `global_counts`), so every rank applies the same row-wise update."""
    sizes = [torch.zeros(1, dtype=torch.int64, device=rows.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([rows.shape[0]], device=rows.device), group=group)
    counts = [int(s) for s in sizes]

    def gathered(x: Tensor) -> Tensor:
        padded = torch.cat([x, x.new_zeros(max(counts) - x.shape[0], *x.shape[1:])])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])

    return gathered(rows), gathered(grad).div_(world)


def global_counts(d: Dist, local: Tensor, has_rows: bool) -> tuple[Tensor, bool]:
    """(rows per task `local` summed over ranks, whether any rank still has a minibatch), one all-reduce.

    Each rank divides its masked loss sums by these counts (`model.masked_bce`) and multiplies by `world`:
    DDP averages the gradients over ranks, so the step is exactly one process's on the union of the batches.
    """
    if not d.enabled:
        return local, has_rows
    packed = torch.cat([local.float(), torch.tensor([1.0 if has_rows else 0.0], device=local.device)])
    dist.all_reduce(packed)
    return packed[:-1], bool(packed[-1] > 0)
