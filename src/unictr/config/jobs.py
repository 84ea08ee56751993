"""Options of the jobs that run a model: the training loop and the scoring service."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator

from unictr.config.base import _Strict


class WarmStartSpec(_Strict):
    """How a warm-started run (`unictr train --init-from RUN`) trains the tensors it loaded from RUN."""

    lr_multiplier: float = Field(
        default=1.0, gt=0, description="LR of the tensors loaded whole from the old run, as a multiple of their "
        "group's LR (1 = trained like the new ones). Partly loaded tensors (a grown table, gates or calibration "
        "with rows for a new surface) train at the base LR."
    )
    new_surfaces_from: dict[str, str] = Field(
        default_factory=dict, description="New surfaces that start as a copy of a surface of the old run (new: old): "
        "their tower (same shape, so no tower features of their own), gate rows, view-type rows and learned "
        "calibration take that surface's trained values instead of a fresh initialisation; their post-hoc "
        "calibration stays the identity (fit it on their own rows). Empty = fresh (the default)."
    )
    freeze: list[str] = Field(
        default_factory=list, description="Name prefixes of loaded tensors to freeze (e.g. `embedding.`, "
        "`sequence.`, `mmoe.`, `projection.`): their old entries stay bit-identical, the new entries of a partly "
        "loaded tensor (a new surface's gate rows) still train. Empty = train everything (the default)."
    )


class TrainSpec(_Strict):
    batch_size: int = Field(default=2048, ge=1, description="Impressions per optimizer step (whole requests); "
                            "see batch_size_per.")
    batch_size_per: Literal["global", "rank"] = Field(
        default="global", description="What batch_size counts under torchrun: global (the step's impressions over "
        "all ranks; each rank takes batch_size / world size, so results do not depend on the number of processes) "
        "or rank (each rank takes batch_size; the global batch grows with the world size, scale lr with it; "
        "docs/distributed.md)."
    )
    data_shards: int = Field(default=8, ge=1, description="Streams the split's row groups are dealt into each "
                             "epoch (at most one per row group); a step takes a minibatch from each. Ranks host "
                             "whole streams, so 1 to 8 processes train the same model; at least the number of ranks.")
    shuffle_buffer_rows: int = Field(
        default=262_144, ge=1, description="Impressions held in the training streams' shuffle buffers together "
        "(whole requests; the row groups' order is shuffled per epoch too). Bounds the input's memory: a split "
        "larger than this is never held whole."
    )
    checkpoint_every_steps: int | None = Field(
        default=2000, ge=1, description="Optimizer steps between mid-epoch checkpoints (1.5-2 minutes of the "
        "example configs on 2 CPU cores), besides the one at each epoch's end; a crash loses at most this "
        "much. null = epoch ends only."
    )
    keep_checkpoints: int = Field(default=3, ge=1, description="Complete checkpoints kept in RUN/checkpoints/.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (then evaluate and checkpoint); "
        "null = train all epochs. For smoke tests and benchmarks."
    )
    lr: float = Field(default=2e-3, gt=0, description="AdamW base learning rate.")
    embedding_lr: float | None = Field(default=None, gt=0, description="Embedding-table LR; null = lr.")
    weight_decay: float = Field(default=1e-5, ge=0, description="AdamW weight decay (not on embeddings).")
    embedding_weight_decay: float = Field(
        default=0.0, ge=0, description="AdamW (decoupled) weight decay of the embedding table: pulls rarely seen "
        "ids towards 0, against memorising sparse ids on small data (KuaiRand)."
    )
    embedding_decay_skip: list[str] = Field(
        default_factory=list, description="Categorical features (each owning its table) whose tables get no "
        "embedding_weight_decay: a few values with very different rates, some of them rare (KuaiRand's `tab`: "
        "the `other` surface pools ten rare tabs), which the decay would pull to 0 between their rows (adamw only)."
    )
    embedding_optimizer: Literal["adamw", "rowwise_adagrad"] = Field(
        default="adamw", description="Optimizer of the fused embedding table: adamw (with the rest of the model), or "
        "rowwise_adagrad fused into the lookup's backward (FBGEMM-style: touches only the rows looked up, one "
        "accumulator per row; use a larger embedding_lr, e.g. 0.05). On the CPU its update is a C++ kernel "
        "compiled on first use (~25 s, cached; torch ops where no compiler is, or with UNICTR_NATIVE=0)."
    )
    schedule: Literal["constant", "cosine"] = Field(
        default="cosine", description="LR schedule over the whole run: constant, or linear warm-up then cosine to 0."
    )
    warmup_steps: int = Field(default=100, ge=0, description="Linear warm-up steps (cosine schedule).")
    epochs: int = Field(default=2, ge=1, description="Passes over the training split.")
    seed: int = Field(default=0, description="Seeds torch (init, window masks) and the request shuffle.")
    surface_sample: dict[str, float] = Field(
        default_factory=dict, description="Fraction of each named surface's requests trained on per epoch: a fresh "
        "uniform sample of whole requests every epoch (surfaces not named: all of them). Stage 2 of a staged "
        "unification replays part of the old surfaces' rows (docs/model.md *Warm start*); it also thins a dominant "
        "surface. Uniform within a surface, so that surface's label rates, and so its calibration, stay as logged."
    )
    threads: int | Literal["auto"] = Field(
        default="auto", description="torch intra-op threads, or auto: the cores this process may use (affinity, "
        "cgroup quota) less those other processes keep busy when the job starts, at least 1 (unictr/threads.py; "
        "2 threads beside another job on 2 cores ran 4x slower than 1, docs/performance.md)."
    )

    @field_validator("surface_sample")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0 < v <= 1}
        if bad:
            raise ValueError(f"surface_sample: fractions must be in (0, 1]; got {bad}")
        return value

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"threads must be auto or at least 1; got {value}")
        return value
    bf16: bool = Field(default=False, description="bf16 autocast (CPU with bf16, or CUDA).")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto (cuda when available), cpu, cuda.")
    warm_start: WarmStartSpec = Field(
        default=WarmStartSpec(), description="Options for the old tensors of a run started with "
        "`unictr train --init-from RUN` (ignored without it, and on --resume: a resumed run uses its own checkpoint)."
    )


# How a scorer runs its model (serving/backends.py; docs/performance.md measures each).
Backend = Literal["auto", "eager", "compile", "onnx"]


class ServeSpec(_Strict):
    """Options of the scoring service (`unictr serve`, `serving.app.create_app`) and its scorers."""

    host: str = Field(default="127.0.0.1", description="Interface to bind (localhost by default).")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port.")
    max_concurrency: int = Field(
        default=64, ge=1, description="Score requests in flight (reading their body or scored) before a quick 503."
    )
    max_connections: int = Field(default=1000, ge=1, description="Open connections before uvicorn answers 503.")
    header_timeout: float = Field(default=10.0, gt=0, description="Seconds to a request's last header (from the "
                                  "connection's start or the previous response) before the connection is closed.")
    body_timeout: float = Field(default=30.0, gt=0, description="Seconds from the headers to the body's end "
                                "before the connection is closed.")
    keepalive_timeout: float = Field(default=5.0, gt=0, description="Seconds an idle keep-alive connection stays.")
    max_unique_users: int = Field(default=256, ge=1, description="Users per forward pass; larger requests are chunked.")
    max_candidates: int = Field(default=5000, ge=1, description="Candidates per request; more is refused (413).")
    max_body_bytes: int = Field(default=8 << 20, ge=1, description="Largest request body in bytes (413 above).")
    poll_seconds: float = Field(default=1.0, gt=0, description="How often the registry pointers are checked.")
    threads: int | None = Field(
        default=1, ge=1, description="Intra-op threads per request (torch's and ONNX Runtime's), set process-wide when "
        "the app starts; null leaves torch's setting. 1 measured best on 2 cores (docs/serving.md); run a process "
        "per core for more."
    )
    backend: Backend = Field(
        default="auto", description="How each surface's model runs: auto (onnx where the export has a model.onnx "
        "and neither bf16 nor another device is asked for, else eager), eager, compile or onnx."
    )
    bf16: bool = Field(default=False, description="bf16 autocast for eager/compile (CPUs with AMX or AVX512-BF16).")
    inline: bool = Field(
        default=False, description="Score on the event loop's thread, not a worker thread: less time per request, "
        "one request at a time (for one process per core with threads 1)."
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _known_backend(cls, value: object) -> object:
        if value not in get_args(Backend):
            raise ValueError(f"backend must be one of {', '.join(get_args(Backend))}; got {value!r}")
        return value
