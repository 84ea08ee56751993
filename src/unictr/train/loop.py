"""Training: AdamW on the weighted per-task BCE, whole requests per step, a checkpoint per epoch."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from unictr.checkpoint import (
    MODEL_FILE,
    CheckpointError,
    load_tensors,
    read_manifest,
    write_checkpoint,
)
from unictr.config import Config, TrainSpec
from unictr.data.batch import Batch, Schema
from unictr.data.reader import load_split
from unictr.model import UnifiedCTR, masked_bce
from unictr.modules.embedding import RowwiseAdagrad
from unictr.train.evaluate import evaluate, user_chunks

OPTIMIZER_FILE = "optimizer.safetensors"
FUSED_STATE = "embedding.rowwise_adagrad.sum_sq"  # the fused embedding optimizer's state in OPTIMIZER_FILE


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)


def setup_runtime(spec: TrainSpec) -> torch.device:
    """Threads, seed, TF32 on CUDA; returns the device."""
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    device = resolve_device(spec.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def make_optimizer(model: UnifiedCTR, spec: TrainSpec) -> torch.optim.AdamW:
    """AdamW; the fused embedding table gets its own LR and weight decay, or (`rowwise_adagrad`) its own
    optimizer fused into the lookup's backward, attached to `model.embedding`."""
    table = model.embedding.weight
    others = [p for p in model.parameters() if p is not table]
    rest = {"params": others, "lr": spec.lr, "weight_decay": spec.weight_decay}
    emb_lr = spec.embedding_lr or spec.lr
    if spec.embedding_optimizer == "rowwise_adagrad":
        model.embedding.fused_update = RowwiseAdagrad(
            table.shape[0], lr=emb_lr, weight_decay=spec.embedding_weight_decay
        ).to(table.device)
        return torch.optim.AdamW([rest])
    model.embedding.fused_update = None
    return torch.optim.AdamW([{"params": [table], "lr": emb_lr, "weight_decay": spec.embedding_weight_decay}, rest])


def lr_factor(spec: TrainSpec, step: int, total: int) -> float:
    """Multiplier of the base LR at `step` of `total` (a pure function of the step, so resume needs no state)."""
    if spec.schedule == "constant":
        return 1.0
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, total - spec.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def request_minibatches(b: Batch, rows: int, generator: torch.Generator) -> Iterator[Batch]:
    """Shuffle whole requests, then cut them into minibatches of about `rows` impressions."""
    return user_chunks(b, rows, torch.randperm(b.num_users, generator=generator))


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_step(
    model: UnifiedCTR, opt: torch.optim.Optimizer, mb: Batch, weights: torch.Tensor, bf16: bool
) -> torch.Tensor:
    """One step on a minibatch already on the model's device: forward, weighted BCE, backward, update.

    Returns the loss; raises FloatingPointError (before touching the weights) if it is not finite.
    """
    with autocast(mb.user_index.device, bf16):
        logits = model(mb)
    loss, _ = masked_bce(logits, mb, weights)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _optimizer_tensors(opt: torch.optim.Optimizer, model: UnifiedCTR) -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if model.embedding.fused_update is not None:
        out[FUSED_STATE] = model.embedding.fused_update.sum_sq
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"state.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, model: UnifiedCTR, tensors: dict[str, torch.Tensor]) -> None:
    if model.embedding.fused_update is not None:
        model.embedding.fused_update.sum_sq.copy_(tensors[FUSED_STATE])
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])


def _resumable(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config without `train.epochs`, which a resumed run may raise."""
    return {**cfg, "train": {k: v for k, v in cfg.get("train", {}).items() if k != "epochs"}}


@dataclass
class _Session:
    """What a training run carries from epoch to epoch: data, model, optimizer and the LR schedule's bases."""

    cfg: Config
    run_dir: Path
    device: torch.device
    train_b: Batch
    eval_b: Batch | None
    model: UnifiedCTR
    opt: torch.optim.AdamW
    weights: torch.Tensor
    start_epoch: int
    history: list[dict[str, Any]]
    base_lrs: list[float]
    fused_base_lr: float
    steps: int  # minibatches per epoch (the last may be short)

    def set_lr(self, factor: float) -> None:
        """Scale every parameter group's LR (and the fused embedding optimizer's) from its base."""
        for group, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        fused = self.model.embedding.fused_update
        if fused is not None:
            fused.lr = self.fused_base_lr * factor


def _setup(cfg: Config, data_dir: Path, run_dir: Path, resume: bool, console: Console) -> _Session:
    """Seed, load the splits, build the model and optimizer, and restore them from `run_dir` on resume.

    The order (seed, data, model init, optimizer, resume) fixes the RNG stream: keep it.
    """
    spec = cfg.train
    device = setup_runtime(spec)
    schema = Schema.from_config(cfg)
    train_b = load_split(data_dir / "train", schema, cfg.data)
    eval_b = load_split(data_dir / "eval", schema, cfg.data) if (data_dir / "eval").exists() else None

    model = UnifiedCTR(cfg).to(device)
    opt = make_optimizer(model, spec)
    weights = torch.tensor([t.weight for t in cfg.tasks], device=device)
    start_epoch, history = 0, []
    if resume:
        start_epoch, history = _resume(cfg, run_dir, model, opt)
        console.print(f"resumed {run_dir} at epoch {start_epoch}")
    fused = model.embedding.fused_update
    return _Session(
        cfg=cfg, run_dir=run_dir, device=device, train_b=train_b, eval_b=eval_b, model=model, opt=opt,
        weights=weights, start_epoch=start_epoch, history=history,
        base_lrs=[g["lr"] for g in opt.param_groups], fused_base_lr=fused.lr if fused is not None else 0.0,
        steps=-(-train_b.num_rows // spec.batch_size),
    )


def _resume(
    cfg: Config, run_dir: Path, model: UnifiedCTR, opt: torch.optim.Optimizer
) -> tuple[int, list[dict[str, Any]]]:
    """Load the run's weights, optimizer and RNG state; returns (epochs done, history)."""
    manifest = read_manifest(run_dir)
    if _resumable(manifest.get("config", {})) != _resumable(cfg.model_dump(mode="json")):
        raise CheckpointError(
            f"{run_dir}: --resume needs the run's config (only train.epochs may change); this one differs"
        )
    model.load_state_dict(load_tensors(run_dir, MODEL_FILE, manifest))
    _load_optimizer(opt, model, load_tensors(run_dir, OPTIMIZER_FILE, manifest))
    return manifest["train_state"]["epoch"], manifest.get("history", [])


def _train_epoch(s: _Session, epoch: int, console: Console, show_progress: bool) -> dict[str, Any]:
    """One pass over the shuffled training requests; returns the epoch's loss and speed."""
    spec = s.cfg.train
    s.model.train()
    gen = torch.Generator().manual_seed(spec.seed * 1000 + epoch)
    seen, loss_sum, t0 = 0, 0.0, time.perf_counter()
    with Progress(
        TextColumn(f"epoch {epoch + 1}/{spec.epochs}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
        console=console, disable=not show_progress, transient=False,
    ) as bar:
        task = bar.add_task("train", total=s.steps, info="")
        for i, mb in enumerate(request_minibatches(s.train_b, spec.batch_size, gen)):
            s.set_lr(lr_factor(spec, epoch * s.steps + i, spec.epochs * s.steps))
            mb = mb.to(s.device)
            try:
                loss = train_step(s.model, s.opt, mb, s.weights, spec.bf16)
            except FloatingPointError as e:
                raise FloatingPointError(f"epoch {epoch + 1}: {e}; stopping") from None
            seen += mb.num_rows
            loss_sum += loss.item() * mb.num_rows
            rate = seen / (time.perf_counter() - t0)
            bar.update(task, advance=1, info=f"loss {loss_sum / seen:.4f}  {rate:,.0f} rows/s")
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(seen, 1),
        "train_seconds": time.perf_counter() - t0,
        "rows_per_s": seen / (time.perf_counter() - t0),
    }


def _end_epoch(s: _Session, epoch_state: dict[str, Any], console: Console) -> dict[str, Any]:
    """Evaluate, append the epoch to the history and checkpoint; returns the new manifest."""
    metrics = evaluate(s.model, s.eval_b, s.device) if s.eval_b is not None else None
    if metrics is not None:
        epoch_state["eval_overall"] = {t: m.get("auc") for t, m in metrics["overall"].items()}
    s.history.append(epoch_state)
    epoch = epoch_state["epoch"]
    manifest = write_checkpoint(
        s.run_dir,
        s.cfg,
        {MODEL_FILE: s.model.state_dict(), OPTIMIZER_FILE: _optimizer_tensors(s.opt, s.model)},
        extra={"train_state": {"epoch": epoch}, "history": s.history, "metrics": metrics},
    )
    console.print(f"epoch {epoch}: " + json.dumps({k: v for k, v in epoch_state.items() if k != "epoch"}))
    return manifest


def train(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train on `data_dir/train`, evaluate on `data_dir/eval` after each epoch, checkpoint into `run_dir`.

    Returns the last manifest (with `metrics` and `history`).
    """
    console = console or Console()
    session = _setup(cfg, Path(data_dir), Path(run_dir), resume, console)
    manifest: dict[str, Any] = {}
    for epoch in range(session.start_epoch, cfg.train.epochs):
        epoch_state = _train_epoch(session, epoch, console, show_progress)
        manifest = _end_epoch(session, epoch_state, console)
    return manifest
