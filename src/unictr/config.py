"""Configuration: pydantic models loaded from YAML.

One `Config` describes the data columns, the features, the surfaces and view types, the tasks, the
model's hyper-parameters and the training loop. Every field is validated; a bad file raises
`ConfigError` naming the file, the key path and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # an inf LR passes gt=0: refused


class FeatureSpec(_Strict):
    """One input column of the canonical Parquet."""

    name: str = Field(description="Column name in the canonical Parquet.")
    kind: Literal["categorical", "dense"] = Field(description="Categorical ids are hashed; dense are floats.")
    side: Literal["user", "candidate"] = Field(
        description="`user`: constant within a request, computed once per unique user; "
        "`candidate`: one value per impression."
    )
    hash_size: int | None = Field(
        default=None, gt=0, description="Rows of this feature's embedding table (categorical only); every "
        "hash_size together at most 2**31 - 1 (the fused table's rows; modules/native.py indexes them with int32)."
    )
    table: str | None = Field(
        default=None,
        description="Share the embedding table of this other categorical trunk feature (the same id space, e.g. a "
        "query topic and an ad topic); hash_size then comes from it and must be omitted.",
    )
    towers: list[str] = Field(
        default_factory=list,
        description="Surfaces whose tower late-fuses this feature. Empty: the feature enters the shared "
        "trunk. Only candidate-side categorical features may be tower features.",
    )

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if self.kind == "categorical" and (self.hash_size is None) == (self.table is None):
            raise ValueError(
                f"feature {self.name!r}: categorical features need exactly one of hash_size (a positive int) or table"
            )
        if self.table is not None and (self.kind != "categorical" or self.towers):
            raise ValueError(f"feature {self.name!r}: only categorical trunk features may share a table")
        if self.kind == "dense" and self.hash_size is not None:
            raise ValueError(f"feature {self.name!r}: dense features take no hash_size")
        if self.towers and (self.kind != "categorical" or self.side != "candidate"):
            raise ValueError(f"feature {self.name!r}: only candidate-side categorical features may set towers")
        return self


class SequenceSpec(_Strict):
    """The user's action sequence: list columns, newest event last."""

    item_column: str = Field(default="seq_item", description="List<int64> column of item ids.")
    action_column: str = Field(default="seq_action", description="List<int64> column of action-type ids.")
    time_column: str = Field(default="seq_ts", description="List<int64> column of event times (ms).")
    item_feature: str = Field(
        description="Candidate categorical feature whose embedding table the sequence items share "
        "(the candidate is the query of the target attention)."
    )
    side_features: dict[str, str] = Field(
        default_factory=dict,
        description="Extra list<int64> columns describing each event's item (e.g. its topic), mapped to the "
        "candidate feature whose embedding table they share; the candidate's value joins the attention query.",
    )
    num_actions: int = Field(default=8, gt=0, description="Action-type vocabulary size (ids are taken modulo).")
    max_len: int = Field(default=32, gt=0, description="Events kept per user (the newest).")


class SurfaceSpec(_Strict):
    name: str = Field(description="Value of the `surface` column.")
    view_types: list[str] = Field(min_length=1, description="Values of the `view_type` column on this surface.")


class TaskSpec(_Strict):
    name: str = Field(description="Task name (click, save, ...).")
    label: str = Field(description="Label column (0/1).")
    weight: float = Field(default=1.0, gt=0.0, description="Loss weight.")
    surfaces: list[str] | None = Field(
        default=None, description="Surfaces where the task applies (at least one); null means every surface. "
        "`[]` only in an export's config (export/prune.py): a task of the unified model that does not apply."
    )


class DataSpec(_Strict):
    """Names of the canonical key columns."""

    request_id: str = Field(default="request_id", description="int64; rows of one request share the user side.")
    user_id: str = Field(default="user_id", description="int64 raw user id.")
    timestamp: str = Field(default="timestamp", description="int64 impression time, ms since the epoch.")
    surface: str = Field(default="surface", description="string surface name (one of `surfaces[].name`).")
    view_type: str = Field(default="view_type", description="string view type (one of that surface's).")


class SequenceModelSpec(_Strict):
    enabled: bool = Field(default=True, description="Use the user-sequence encoder (off for ablation).")
    encoder: Literal["transformer", "mean_pool"] = Field(
        default="transformer",
        description="User-sequence encoder, by name (unictr.modules.encoders.ENCODERS): `transformer` (TransAct-style; "
        "the fields below up to `last_k` are its own) or `mean_pool` (the masked mean of the event tokens: no "
        "attention between events, the target attention still reads each one; half the KuaiRand training step at "
        "the same validation click AUC, docs/results.md).",
    )
    layers: int = Field(default=1, ge=1, description="Transformer encoder layers.")
    heads: int = Field(default=2, ge=1, description="Attention heads.")
    ff_mult: int = Field(default=2, ge=1, description="Feed-forward width as a multiple of the model width.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Attention dropout while training.")
    last_k: int = Field(default=2, ge=0, description="Newest encoded events concatenated to the max-pool.")
    time_buckets: int = Field(default=24, ge=2, description="Buckets of log2(1 + event age in seconds).")
    window_mask_prob: float = Field(
        default=0.3, ge=0.0, le=1.0,
        description="Training only: probability that a user's events inside a random recent time window "
        "are masked (TransAct's random time-window mask), so the model does not lean on real-time events only.",
    )
    window_max_seconds: float = Field(default=3600.0, gt=0, description="Upper end of that random window.")


class MMoESpec(_Strict):
    enabled: bool = Field(default=True, description="Off: one shared MLP replaces the experts (ablation).")
    experts: int = Field(default=4, ge=1, description="Experts shared by every surface and task.")
    expert_dim: int = Field(default=64, ge=1, description="Width of each expert's output.")
    expert_hidden: int = Field(default=128, ge=1, description="Hidden width inside each expert.")


class DCNSpec(_Strict):
    layers: int = Field(default=2, ge=0, description="Cross layers.")
    rank: int | None = Field(default=16, ge=1, description="Low-rank factorisation; null = full rank.")
    out_dim: int = Field(default=64, ge=1, description="Width the projection shrinks the trunk output to.")


class TowerSpec(_Strict):
    per_surface: bool = Field(default=True, description="Off: one tower shared by every surface (ablation).")
    hidden: list[int] = Field(default_factory=lambda: [64], description="Tower MLP widths.")


class CalibrationSpec(_Strict):
    scope: Literal["view_type", "surface", "global"] = Field(
        default="view_type", description="Key of the learned temperature+bias on the logits."
    )
    posthoc: Literal["none", "platt", "isotonic"] = Field(
        default="none",
        description="Post-hoc map after the learned one, fitted by `unictr calibrate` and stored per view key "
        "and task in model.safetensors (none: no tensors, the identity).",
    )
    posthoc_scope: Literal["view_type", "surface", "global"] = Field(
        default="view_type",
        description="Key the post-hoc map was fitted per (a surface or global fit is copied to its view keys).",
    )
    posthoc_knots: int = Field(
        default=64, ge=2, description="Isotonic: knots per stored table (shorter fits are padded with their last)."
    )


class ModelSpec(_Strict):
    embedding_dim: int = Field(default=16, ge=1, description="Width of every embedding and of the sequence model.")
    interaction: bool = Field(
        default=True, description="Pairwise dot products of the user and candidate embeddings enter the trunk."
    )
    dense_hidden: int = Field(default=16, ge=1, description="Width of the dense-feature projection.")
    sequence: SequenceModelSpec = Field(default=SequenceModelSpec(), description="User-sequence encoder.")
    mmoe: MMoESpec = Field(default=MMoESpec(), description="Mixture of experts.")
    dcn: DCNSpec = Field(default=DCNSpec(), description="DCNv2 projection.")
    tower: TowerSpec = Field(default=TowerSpec(), description="Surface towers.")
    calibration: CalibrationSpec = Field(default=CalibrationSpec(), description="Learned and post-hoc calibration.")


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
    threads: int = Field(default=2, ge=1, description="torch intra-op threads.")
    bf16: bool = Field(default=False, description="bf16 autocast (CPU with bf16, or CUDA).")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto (cuda when available), cpu, cuda.")


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


class Config(_Strict):
    data: DataSpec = Field(default=DataSpec(), description="Names of the canonical key columns.")
    features: list[FeatureSpec] = Field(min_length=1, description="Input columns (see `features[]`).")
    sequence: SequenceSpec | None = Field(default=None, description="The user action sequence; null = none.")
    surfaces: list[SurfaceSpec] = Field(min_length=1, description="Surfaces and their view types.")
    tasks: list[TaskSpec] = Field(min_length=1, description="Engagement tasks (one head each per surface).")
    model: ModelSpec = Field(default=ModelSpec(), description="Model hyper-parameters.")
    train: TrainSpec = Field(default=TrainSpec(), description="Training loop.")

    @model_validator(mode="after")
    def _cross_check(self, info: ValidationInfo) -> Config:
        _unique("features", [f.name for f in self.features])
        _unique("surfaces", [s.name for s in self.surfaces])
        _unique("tasks", [t.name for t in self.tasks])
        _unique("tasks[].label", [t.label for t in self.tasks])
        for s in self.surfaces:
            _unique(f"surfaces.{s.name}.view_types", s.view_types)
        sizes = {f.name: f.hash_size for f in self.features if f.hash_size}
        if sum(sizes.values()) >= 2**31:  # the fused table's rows: modules/native.py indexes them with int32
            big = max(sizes, key=sizes.__getitem__)
            raise ValueError(f"features.{big}.hash_size: {sizes[big]}; every hash_size together (the fused embedding "
                             f"table's rows) must be at most 2**31 - 1 = 2147483647, got {sum(sizes.values())}")
        surfaces = {s.name for s in self.surfaces}
        by_name = {f.name: f for f in self.features}
        for f in self.features:
            owner = by_name.get(f.table) if f.table else None
            if f.table and (owner is None or owner.kind != "categorical" or owner.table or owner.towers):
                raise ValueError(
                    f"features.{f.name}.table: {f.table!r} must name a categorical trunk feature that owns its table"
                )
            bad = set(f.towers) - surfaces
            if bad:
                raise ValueError(
                    f"features.{f.name}.towers: unknown surface(s) {sorted(bad)}; known {sorted(surfaces)}"
                )
        for t in self.tasks:
            if t.surfaces == [] and not (info.context or {}).get("placeholder_tasks"):
                raise ValueError(f"tasks.{t.name}.surfaces: empty; list at least one surface, or null for all")
            bad = set(t.surfaces or []) - surfaces
            if bad:
                raise ValueError(f"tasks.{t.name}.surfaces: unknown surface(s) {sorted(bad)}; known {sorted(surfaces)}")
        if self.sequence is not None:
            named = {"sequence.item_feature": self.sequence.item_feature}
            named.update({f"sequence.side_features.{c}": n for c, n in self.sequence.side_features.items()})
            for key, name in named.items():
                feat = next((f for f in self.features if f.name == name), None)
                if feat is None or feat.kind != "categorical" or feat.side != "candidate" or feat.towers:
                    raise ValueError(f"{key}: {name!r} must name a candidate-side categorical trunk feature")
        return self

    # Derived views used across the package.
    def table_of(self, name: str) -> str:
        """The feature whose embedding table `name` uses (itself unless it shares one)."""
        return next(f.table or f.name for f in self.features if f.name == name)

    def hash_size(self, name: str) -> int:
        owner = self.table_of(name)
        return int(next(f.hash_size for f in self.features if f.name == owner) or 0)

    def feature_names(self, side: str, kind: str) -> list[str]:
        return [f.name for f in self.features if f.side == side and f.kind == kind]

    @property
    def surface_names(self) -> list[str]:
        return [s.name for s in self.surfaces]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task_surface_mask(self) -> list[list[bool]]:
        """[surface][task]: whether the task applies on the surface."""
        return [[t.surfaces is None or s.name in t.surfaces for t in self.tasks] for s in self.surfaces]


def _unique(key: str, names: list[str]) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{key}: duplicate value(s) {dup}; each may appear once")


class ConfigError(ValueError):
    """A config file or dict that does not validate; the message names the key."""


def config_from_dict(raw: object, source: str = "<dict>", *, placeholder_tasks: bool = False) -> Config:
    """`raw` validated; `placeholder_tasks` accepts tasks with `surfaces: []`, which only an export's config
    holds (see `TaskSpec.surfaces`): a config to train from needs each task to apply somewhere."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw, context={"placeholder_tasks": placeholder_tasks})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{loc}: {err['msg']}{got_s}")
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines)) from None


def with_changes(cfg: Config, section: str, **changes: Any) -> Config:
    """`cfg` with keys of one section changed, validated again; `section` is dotted (`train`,
    `model.tower`, `model.calibration`, `sequence`, ...)."""
    raw = cfg.model_dump(mode="json")
    node = raw
    for key in section.split("."):
        node = node[key]
    node |= changes
    placeholders = any(t.surfaces == [] for t in cfg.tasks)  # an export's config stays one
    return config_from_dict(raw, f"<config with {section} {changes}>", placeholder_tasks=placeholders)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The YAML config at `path` with `overrides` (`config_overrides`) applied, then validated as one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not overrides or not isinstance(raw, dict):
        return config_from_dict(raw, str(path))
    from unictr.config_overrides import apply_overrides  # the command line's concern, kept out of the models

    return config_from_dict(apply_overrides(raw, overrides), f"{path} with --set {' --set '.join(overrides)}")
