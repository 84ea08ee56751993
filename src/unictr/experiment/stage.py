"""`unictr experiment stage`: staged unification. Stage 1 trains on the first group of surfaces only;
stage 2 warm-starts from it (`--init-from`) and trains on every row, for fewer epochs."""

from __future__ import annotations

from unictr.config import Config, config_from_dict


def restrict_config(cfg: Config, surfaces: list[str]) -> Config:
    """The config of a model for `surfaces` only: those surfaces (in the config's order), the trunk features
    and their tower features, and the tasks that apply on one of them (each on those of them it applies to).

    The multi-surface form of `export.prune.prune_config(keep_shapes=False)`: stage 1 of a staged run.
    """
    unknown = sorted(set(surfaces) - set(cfg.surface_names))
    if unknown or not surfaces:
        raise ValueError(f"stages: unknown surface(s) {unknown or surfaces}; the config has {cfg.surface_names}")
    keep = set(surfaces)
    raw = cfg.model_dump(mode="json")
    raw["surfaces"] = [s for s in raw["surfaces"] if s["name"] in keep]
    raw["features"] = [
        {**f, "towers": [s for s in f["towers"] if s in keep]} if f["towers"] else f
        for f in raw["features"]
        if not f["towers"] or keep & set(f["towers"])
    ]
    raw["tasks"] = [
        {**t, "surfaces": None if t["surfaces"] is None else [s for s in t["surfaces"] if s in keep]}
        for t in raw["tasks"]
        if t["surfaces"] is None or keep & set(t["surfaces"])
    ]
    return config_from_dict(raw, f"config restricted to surfaces {sorted(keep)}")
