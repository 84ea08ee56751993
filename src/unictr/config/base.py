"""The base of every config model: unknown keys refused, frozen, finite floats only."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # an inf LR passes gt=0: refused
