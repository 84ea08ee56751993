"""What the data holds: input columns, the action sequence, surfaces, tasks, key columns."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unictr.config.base import _Strict


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
    encoding: Literal["hash", "modulo"] = Field(
        default="hash", description="How raw ids become table rows: hash (a fixed mixing hash modulo hash_size: "
        "any int64 ids, which may collide) or modulo (the id itself modulo hash_size: for small integer codes "
        "such as an hour, a position or a tab, or ids numbered from 0, with hash_size above the largest code, so "
        "no two collide; -1 lands on the last row; reading data, a code the table cannot keep apart is refused, "
        "naming the column). Set on the table's owner; features sharing its table use its encoding."
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
        if self.encoding != "hash" and (self.kind != "categorical" or self.table is not None):
            raise ValueError(f"feature {self.name!r}: encoding belongs to a categorical feature that owns its table "
                             "(a feature sharing a table uses its owner's)")
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
