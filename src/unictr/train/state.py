"""What a training checkpoint holds besides the weights, and putting it back: the run's position (epoch,
minibatch within it, optimizer step), the optimizers' state and every rank's RNG state.

Together with the data order (a pure function of the seed, the epoch and the rank; `train.loop`) this is
all a resumed run needs to take exactly the steps the interrupted one would have taken.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from unictr.model import UnifiedCTR

OPTIMIZER_FILE = "optimizer.safetensors"
FUSED_STATE = "embedding.rowwise_adagrad.sum_sq"  # the fused embedding optimizer's state in OPTIMIZER_FILE
RNG = "rng.torch"  # rank 0's CPU RNG state; rank r > 0 is f"{RNG}.{r}"
CUDA_RNG = "rng.cuda"


@dataclass
class Position:
    """Where a run is: saved in every checkpoint's manifest (`train_state`)."""

    epoch: int = 0  # the epoch in progress (0-based); == epochs when training is done
    step_in_epoch: int = 0  # minibatches of that epoch already trained (a resume replays and skips them)
    step: int = 0  # optimizer steps over the whole run (the LR schedule's clock)
    loss_sum: float = 0.0  # the epoch's running loss x rows and rows on this rank, for its log line (a
    rows: int = 0  # checkpoint holds their sums over ranks)
    seconds: float = 0.0  # the epoch's training seconds so far

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, train_state: dict[str, Any], steps_per_epoch: int) -> Position:
        """The position a manifest records; one written before mid-epoch checkpoints has only `epoch`."""
        if set(train_state) == {"epoch"}:
            return cls(epoch=int(train_state["epoch"]), step=int(train_state["epoch"]) * steps_per_epoch)
        return cls(**{k: train_state[k] for k in asdict(cls())})


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's RNG states (the model's randomness: window masks, dropout)."""
    out = {RNG: torch.get_rng_state()}
    if device.type == "cuda":
        out[CUDA_RNG] = torch.cuda.get_rng_state(device)
    return out


def rank_key(key: str, rank: int) -> str:
    return key if rank == 0 else f"{key}.{rank}"


def optimizer_tensors(
    opt: torch.optim.Optimizer, model: UnifiedCTR, rngs: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The optimizers' state (AdamW's, the fused row-wise Adagrad's) and each rank's RNG states `rngs`."""
    out = {rank_key(k, r): v for r, states in enumerate(rngs) for k, v in states.items()}
    if model.embedding.fused_update is not None:
        out[FUSED_STATE] = model.embedding.fused_update.sum_sq
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"state.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def load_optimizer(
    opt: torch.optim.Optimizer, model: UnifiedCTR, tensors: dict[str, torch.Tensor], rank: int, device: torch.device
) -> bool:
    """Restore what `optimizer_tensors` saved; returns whether this rank's RNG state was in it (a job resumed
    with more ranks than it was saved with reseeds the new ranks instead)."""
    if model.embedding.fused_update is not None:
        model.embedding.fused_update.sum_sq.copy_(tensors[FUSED_STATE])
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    own = rank_key(RNG, rank)
    if own not in tensors:
        return False
    torch.set_rng_state(tensors[own])
    if device.type == "cuda" and rank_key(CUDA_RNG, rank) in tensors:
        torch.cuda.set_rng_state(tensors[rank_key(CUDA_RNG, rank)], device)
    return True
