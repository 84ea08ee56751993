"""The model's hyper-parameters, one spec per module of the diagram."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unictr.config.base import _Strict


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
    target_attention: Literal["dot", "activation_unit", "both"] = Field(
        default="dot",
        description="How the candidate reads its user's events: `dot` (one query, the sum of the item's and "
        "its side features' embeddings, against each event's raw embedding and encoder token), "
        "`activation_unit` (DIN's MLP over the candidate's and each event's fields side by side; "
        "unictr.modules.activation_unit) or `both`, concatenated.",
    )
    attention_hidden: int = Field(default=64, ge=1, description="Hidden width of the activation unit.")
    short_term_seconds: float = Field(
        default=0.0, ge=0.0,
        description="Events younger than this (seconds before the request: the user's current session) are "
        "averaged (item + side-feature embeddings) into one more user field, which joins the user vector and, "
        "with `model.interaction`, the dot products with the candidate's fields: the candidate meets the "
        "user's short-term intent directly. 0 = off. At 900 s the simulator's home_feed oracle gap went "
        "0.0083 -> 0.0060 (1M rows, 3 seeds) and the quickstart's 0.0059 -> 0.0050 (docs/results.md).",
    )


class MMoESpec(_Strict):
    enabled: bool = Field(default=True, description="Off: one shared MLP replaces the experts (ablation).")
    experts: int = Field(default=4, ge=1, description="Experts shared by every surface and task.")
    expert_dim: int = Field(default=64, ge=1, description="Width of each expert's output.")
    expert_hidden: int = Field(default=128, ge=1, description="Hidden width inside each expert.")


class DCNSpec(_Strict):
    layers: int = Field(default=2, ge=0, description="Cross layers.")
    rank: int | None = Field(default=16, ge=1, description="Low-rank factorisation; null = full rank.")
    out_dim: int | None = Field(
        default=64, ge=1,
        description="Width the projection shrinks the trunk output to; null = no projection: the cross layers' "
        "output (tasks × mmoe.expert_dim wide) goes to the towers as it is.",
    )


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
    embedding_init_std: float | None = Field(
        default=None, gt=0, description="Standard deviation of the fused table's normal initialisation; null = "
        "1/sqrt(embedding_dim). A small value (FuxiCTR's and the DIN arm's 1e-4) keeps the random start out of "
        "the dot interactions, which no loss gradient fully removes: the simulator's models then differ less "
        "between training seeds and sit closer to the oracle (docs/results.md, issue #21).",
    )
    interaction: bool = Field(
        default=True, description="Pairwise dot products of the user and candidate embeddings enter the trunk."
    )
    dense_hidden: int = Field(default=16, ge=1, description="Width of the dense-feature projection.")
    sequence: SequenceModelSpec = Field(default=SequenceModelSpec(), description="User-sequence encoder.")
    mmoe: MMoESpec = Field(default=MMoESpec(), description="Mixture of experts.")
    dcn: DCNSpec = Field(default=DCNSpec(), description="DCNv2 projection.")
    tower: TowerSpec = Field(default=TowerSpec(), description="Surface towers.")
    calibration: CalibrationSpec = Field(default=CalibrationSpec(), description="Learned and post-hoc calibration.")
