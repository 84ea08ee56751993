"""Training: AdamW on the weighted per-task BCE over streamed whole requests, on one process or many.

One process, or one per rank under `torchrun` (`train.distributed`): each epoch deals the training split's
row groups into `train.data_shards` streams (`train.input`), the ranks host disjoint sets of them and step
together under DDP, and rank 0 alone evaluates, logs and writes the crash-safe checkpoints
(`train.checkpoints`): every `train.checkpoint_every_steps` steps and at each epoch's end. A resumed run
replays the data order to the checkpoint's step and restores the optimizers, the LR clock and the RNG
states, so it ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from unictr.checkpoint import MODEL_FILE, fault_point, read_manifest
from unictr.config import Config, TrainSpec
from unictr.data.batch import Batch, Schema
from unictr.data.stream import Unit, split_units, user_chunks
from unictr.model import UnifiedCTR, masked_bce
from unictr.modules.embedding import RowwiseAdagrad
from unictr.threads import resolve_threads
from unictr.train import distributed
from unictr.train.checkpoints import CheckpointStore
from unictr.train.distributed import Dist
from unictr.train.evaluate import evaluate_split
from unictr.train.events import EVERY_STEPS, EventLog
from unictr.train.input import epoch_steps, rank_input, stream_count, unit_cache
from unictr.train.resume import prepare_run_dir, restore
from unictr.train.state import OPTIMIZER_FILE, Position, optimizer_tensors, rng_states
from unictr.train.warm_start import apply_options, warm_start


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)


def setup_runtime(spec: TrainSpec) -> torch.device:
    """Threads, seed, TF32 on CUDA; returns the device."""
    torch.set_num_threads(resolve_threads(spec.threads))
    torch.manual_seed(spec.seed)
    device = resolve_device(spec.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def setup_cpu_scoring(spec: TrainSpec, threads: int | None = None) -> torch.device:
    """The runtime of a job that scores a run on the CPU (eval, monitor, report): its training spec's threads
    unless `threads` is given."""
    return setup_runtime(spec.model_copy(update={"device": "cpu", **({"threads": threads} if threads else {})}))


def make_optimizer(model: UnifiedCTR, spec: TrainSpec) -> torch.optim.AdamW:
    """AdamW; the fused embedding table gets its own LR and weight decay, or (`rowwise_adagrad`) its own
    optimizer fused into the lookup's backward, attached to `model.embedding`.

    AdamW runs its fused kernel (one pass over each tensor instead of a dozen elementwise ops per parameter;
    the same update up to float rounding): docs/performance.md measures the step.
    """
    adamw = partial(torch.optim.AdamW, fused=True)
    table = model.embedding.weight
    others = [p for p in model.parameters() if p is not table]
    rest = {"params": others, "lr": spec.lr, "weight_decay": spec.weight_decay}
    emb_lr = spec.embedding_lr or spec.lr
    if spec.embedding_optimizer == "rowwise_adagrad":
        model.embedding.fused_update = RowwiseAdagrad(
            table.shape[0], lr=emb_lr, weight_decay=spec.embedding_weight_decay
        ).to(table.device)
        return adamw([rest])
    model.embedding.fused_update = None
    opt = adamw([{"params": [table], "lr": emb_lr, "weight_decay": 0.0}, rest])
    if not spec.embedding_weight_decay:
        return opt
    # the table's decay is a hook, one weight decay per row (0 on the rows of the skipped tables), which also
    # keeps the decayed rows out of the subnormal range (_decay_rows)
    emb = model.embedding
    decayed = torch.cat([torch.full((n,), float(name not in spec.embedding_decay_skip))
                         for name, n in zip(emb.names, emb.sizes, strict=True)])
    decay = decayed.to(table.device)[:, None] * spec.embedding_weight_decay
    opt.register_step_pre_hook(partial(_decay_rows, table, decay))
    return opt


_TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32


@torch.no_grad()
def _decay_rows(table: torch.Tensor, decay: torch.Tensor, opt: torch.optim.Optimizer, *_: object) -> None:
    """AdamW's decoupled decay, `w ← w (1 − lr·wd)`, with a weight decay per row `[rows, 1]` of the fused table.

    What falls below float32's smallest normal number is set to 0: the decayed rows would otherwise sink into
    the subnormal range and stay (0.7 × the smallest subnormal rounds back to itself), where x86 CPUs take a
    slow path on every op over the table (docs/performance.md, *Subnormal embeddings*). Done here, not by
    torch.set_flush_denormal: that flag is per thread (the intra-op pool's other threads keep subnormals)
    and process state that other libraries refuse to run under.
    """
    lr = next(g["lr"] for g in opt.param_groups if any(p is table for p in g["params"]))
    table.mul_(1.0 - lr * decay)
    table.masked_fill_(table.abs() < _TINY, 0.0)


def lr_factor(spec: TrainSpec, step: int, total: int) -> float:
    """Multiplier of the base LR at `step` of `total` (a pure function of the step, so resume needs no state)."""
    if spec.schedule == "constant":
        return 1.0
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, total - spec.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def request_minibatches(b: Batch, rows: int, generator: torch.Generator) -> Iterator[Batch]:
    """Shuffle whole requests of an in-memory batch, then cut them into minibatches of about `rows` impressions."""
    return user_chunks(b, rows, torch.randperm(b.num_users, generator=generator))


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, mb: Batch, weights: torch.Tensor, bf16: bool,
    counts: torch.Tensor | None = None, scale: float = 1.0,
) -> torch.Tensor:
    """One step on a minibatch already on the model's device: forward, weighted BCE, backward, update.

    Under DDP, `counts` are the rows per task over all ranks and `scale` the world size (0 on a rank that
    only steps along; `distributed`). Returns the loss (as scaled); raises FloatingPointError (before
    touching the weights) if it is not finite.
    """
    with autocast(mb.user_index.device, bf16):
        logits = model(mb)
    loss, _ = masked_bce(logits, mb, weights, counts)
    if scale != 1.0:
        loss = loss * scale
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


@dataclass
class _Session:
    """What a training run carries from step to step: data, model, optimizer, position and the LR's bases."""

    cfg: Config
    run_dir: Path
    device: torch.device
    dist: Dist
    schema: Schema
    units: list[Unit]  # the training split's row groups
    eval_dir: Path | None
    model: UnifiedCTR
    net: nn.Module  # `model`, in DDP under torchrun
    opt: torch.optim.AdamW
    weights: torch.Tensor
    store: CheckpointStore
    pos: Position
    global_batch: int  # impressions per optimizer step over all ranks
    steps_per_epoch: int  # the LR schedule's estimate (the last minibatch may be short)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    base_lrs: list[float] = field(default_factory=list)
    fused_base_lr: float = 0.0
    last: Batch | None = None  # this rank's latest minibatch (an idle rank steps along on it)
    cache: dict[Unit, Batch | None] | None = None  # decoded row groups, when the split fits the buffer budget
    events: EventLog | None = None
    warm_start: dict[str, Any] | None = None  # what `init_from` loaded (the manifest records it)

    def set_lr(self, factor: float) -> None:
        """Scale every parameter group's LR (and the fused embedding optimizer's) from its base."""
        for group, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        fused = self.model.embedding.fused_update
        if fused is not None:
            fused.lr = self.fused_base_lr * factor

    @property
    def total_steps(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch


def global_batch_size(spec: TrainSpec, world: int) -> int:
    """Impressions per optimizer step over all ranks (`train.batch_size_per`)."""
    return spec.batch_size * world if spec.batch_size_per == "rank" else spec.batch_size


def _setup(  # long: the order of the steps is the point (RNG stream, then warm start or resume)
    cfg: Config, data_dir: Path, run_dir: Path, resume: bool, overwrite: bool, console: Console,
    init_from: Path | None = None,
) -> _Session:
    """Join the job, seed, list the splits, build the model and optimizer, warm-start them from `init_from`
    (a fresh run only) or restore them on resume.

    The order (seed, model init, optimizer, resume) fixes the RNG stream: keep it.
    """
    spec, d = cfg.train, distributed.from_env()
    device = distributed.join(d, setup_runtime(spec))
    if spec.threads == "auto" and d.is_main:
        console.print(f"threads: auto -> {torch.get_num_threads()}", soft_wrap=True)
    store = CheckpointStore(run_dir, spec.keep_checkpoints)
    resume = prepare_run_dir(run_dir, resume, overwrite, store, d)  # an elastic restart resumes by itself
    schema = Schema.from_config(cfg)
    units = split_units(data_dir / "train")
    stream_count(spec, units, d.world)  # refuses a split that cannot give every rank a stream
    model = UnifiedCTR(cfg)
    warm = warm_start(model, cfg, init_from) if init_from is not None and not resume else None
    model = model.to(device)
    opt = make_optimizer(model, spec)
    if warm is not None:
        apply_options(model, opt, warm, spec.warm_start)
        if d.is_main:
            console.print(warm.summary(), soft_wrap=True, markup=False)
    global_batch = global_batch_size(spec, d.world)
    s = _Session(
        cfg=cfg, run_dir=run_dir, device=device, dist=d, schema=schema, units=units,
        eval_dir=data_dir / "eval" if (data_dir / "eval").exists() else None, model=model, net=model, opt=opt,
        weights=torch.tensor([t.weight for t in cfg.tasks], device=device), store=store, pos=Position(),
        global_batch=global_batch, steps_per_epoch=epoch_steps(units, spec, cfg.data, global_batch),
        cache=unit_cache(spec, units), warm_start=warm.as_dict() if warm is not None else None,
    )
    if d.world > 1:
        torch.manual_seed(spec.seed + 1_000_003 * d.rank)  # ranks draw their own masks and dropout
    if resume:
        s.pos, s.history, s.metrics, where = restore(cfg, run_dir, model, opt, s.steps_per_epoch, d, device)
        s.warm_start = read_manifest(where).get("warm_start")  # a resumed run keeps its record, loads nothing
        if d.is_main:
            console.print(f"resumed {where} at epoch {s.pos.epoch + 1}, step {s.pos.step}", soft_wrap=True)
    s.events = EventLog(run_dir, d.is_main, s.pos.step if resume else None)
    s.net = distributed.wrap(model, d)
    s.base_lrs = [g["lr"] for g in opt.param_groups]
    s.fused_base_lr = model.embedding.fused_update.lr if model.embedding.fused_update is not None else 0.0
    return s


def _stream(s: _Session) -> Iterator[Batch | None]:
    """This rank's minibatches of the epoch in progress, from the position's step on (a resume replays and
    drops the ones already trained: the order is a pure function of the seed, the epoch and the stream)."""
    d = s.dist
    steps = rank_input(s.units, s.schema, s.cfg.data, s.cfg.train, s.global_batch, s.pos.epoch, d.rank, d.world,
                       s.cache)
    for _ in range(s.pos.step_in_epoch):
        s.last = next(steps) or s.last
    return steps


def _step(s: _Session, mb: Batch | None) -> bool:
    """One optimizer step on this rank's minibatch; False (on every rank) once every rank has run out.

    A rank that has run out while others have not steps along on its last minibatch with zero weight, so
    each epoch trains every request of the split exactly once, as one process would.
    """
    spec, d = s.cfg.train, s.dist
    if mb is not None:
        mb = s.last = mb.to(s.device)
    local = mb.label_mask.sum(0).float() if mb is not None else torch.zeros(len(s.cfg.tasks), device=s.device)
    counts, any_left = distributed.global_counts(d, local, mb is not None)
    if not any_left:
        return False
    d.idle = mb is None
    if d.idle and s.last is None:
        raise RuntimeError(f"rank {d.rank}: its shard of the epoch held no whole request to step along with")
    s.set_lr(lr_factor(spec, s.pos.step, s.total_steps))
    try:
        loss = train_step(
            s.net, s.opt, mb if mb is not None else s.last, s.weights, spec.bf16,
            counts if d.enabled else None, 0.0 if d.idle else float(d.world),
        )
    except FloatingPointError as e:
        raise FloatingPointError(f"epoch {s.pos.epoch + 1}, step {s.pos.step + 1}: {e}; stopping") from None
    s.pos.step += 1
    s.pos.step_in_epoch += 1
    if mb is not None:
        s.pos.rows += mb.num_rows
        s.pos.loss_sum += loss.item() * mb.num_rows
    return True


def _train_epoch(s: _Session, console: Console, show_progress: bool) -> None:
    """Train the epoch in progress to its end (or to `train.max_steps`), checkpointing every N steps."""
    spec = s.cfg.train
    stream, t0, done0 = _stream(s), time.perf_counter(), s.pos.seconds
    with Progress(
        TextColumn(f"epoch {s.pos.epoch + 1}/{spec.epochs}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
        console=console, disable=not (show_progress and s.dist.is_main), transient=False,
    ) as bar:
        task = bar.add_task("train", total=s.steps_per_epoch, completed=s.pos.step_in_epoch, info="")
        while not _stopped(s) and _step(s, next(stream)):
            s.pos.seconds = done0 + time.perf_counter() - t0
            if not s.dist.restart:  # crash tests kill the first attempt only (docs/distributed.md)
                fault_point(f"rank{s.dist.rank}.step")
            if s.pos.step % EVERY_STEPS == 0:
                s.events.write("step", epoch=s.pos.epoch + 1, step=s.pos.step, loss=s.pos.loss_sum / s.pos.rows,
                               lr=s.opt.param_groups[-1]["lr"], rows_per_s=s.pos.rows / max(s.pos.seconds, 1e-9))
            if spec.checkpoint_every_steps and s.pos.step % spec.checkpoint_every_steps == 0:
                _save(s)
            rate = s.pos.rows / max(s.pos.seconds, 1e-9)
            bar.update(task, advance=1, info=f"loss {s.pos.loss_sum / s.pos.rows:.4f}  {rate:,.0f} rows/s")


def _stopped(s: _Session) -> bool:
    return s.cfg.train.max_steps is not None and s.pos.step >= s.cfg.train.max_steps


def _save(s: _Session) -> None:
    """A checkpoint of the run as it is now (every rank takes part: rank 0 writes, the others wait)."""
    rngs = s.dist.gather(rng_states(s.device))
    totals = s.dist.gather((s.pos.rows, s.pos.loss_sum))  # the epoch's rows and loss over all ranks so far
    if s.dist.is_main:
        position = s.pos.as_dict() | {"rows": sum(r for r, _ in totals), "loss_sum": sum(x for _, x in totals)}
        s.store.save(
            s.pos.step, s.cfg,
            {MODEL_FILE: s.model.state_dict(), OPTIMIZER_FILE: optimizer_tensors(s.opt, s.model, rngs)},
            extra={"train_state": position, "history": s.history, "metrics": s.metrics}
            | ({"warm_start": s.warm_start} if s.warm_start else {}),
        )
    s.dist.barrier()


def _end_epoch(s: _Session, console: Console) -> None:
    """Evaluate (rank 0), log and checkpoint; the epoch counts as done unless `train.max_steps` cut it short
    (so a resume with a larger max_steps trains the rest of it)."""
    pos, done = s.pos, not _stopped(s)
    ranks = s.dist.gather((pos.rows, pos.loss_sum))
    rows, loss_sum = sum(r for r, _ in ranks), sum(loss for _, loss in ranks)
    state: dict[str, Any] = {
        "epoch": pos.epoch + 1, "train_loss": loss_sum / max(rows, 1), "rows": rows, "steps": pos.step,
        "train_seconds": pos.seconds, "rows_per_s": rows / max(pos.seconds, 1e-9),
    }
    if s.dist.is_main and s.eval_dir is not None:
        s.metrics = evaluate_split(s.model, s.eval_dir, s.device)
        state["eval_overall"] = {t: m.get("auc") for t, m in s.metrics["overall"].items()}
    s.history.append(state)
    if done:
        s.pos = Position(epoch=pos.epoch + 1, step=pos.step)
    _save(s)
    if s.dist.is_main:
        s.events.write("epoch", step=pos.step, **state)
        aucs = "  ".join(f"{t} {a:.4f}" for t, a in state.get("eval_overall", {}).items() if a is not None)
        console.print(f"epoch {state['epoch']}/{s.cfg.train.epochs}: loss {state['train_loss']:.4f}  "
                      f"{rows:,} rows in {pos.seconds:.1f} s ({state['rows_per_s']:,.0f}/s)"
                      + (f"  eval AUC {aucs}" if aucs else ""), soft_wrap=True)


def train(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    overwrite: bool = False,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train on `data_dir/train`, evaluate on `data_dir/eval` after each epoch, checkpoint into `run_dir`.

    A non-empty `run_dir` is refused unless `resume` (continue its last checkpoint) or `overwrite`.
    `init_from` (a trained run) warm-starts a fresh run (`train.warm_start`); a resumed one ignores it.
    Returns the last checkpoint's manifest (with `metrics` and `history`), on every rank.
    """
    console = console or Console()
    s = _setup(cfg, Path(data_dir), Path(run_dir), resume, overwrite, console,
               Path(init_from) if init_from is not None else None)
    try:
        while s.pos.epoch < cfg.train.epochs and not _stopped(s):
            _train_epoch(s, console, show_progress)
            _end_epoch(s, console)
        latest = s.store.latest() if s.dist.is_main else None
        manifest = s.dist.broadcast(read_manifest(latest) if latest is not None else {})
    finally:
        s.dist.close()
    return manifest
