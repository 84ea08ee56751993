"""Per-surface export: cut the unified model down to one surface and write it as a verified artifact.

A surface export is a smaller `UnifiedCTR` built from a pruned config (one surface, only the features
that surface uses, every task kept so the trunk's shapes stay whole) whose weights are sliced out of
the unified run. It loads through the same `UnifiedCTR(cfg)` + `load_state_dict(strict=True)` path as
a training run, and its scores equal the unified model's on that surface's rows.

One concern per module: `prune` (config and weights cut to one surface), `probe` (random valid
batches for export-time checks and tracing), `onnx` (the ONNX graph and its check), `artifact` (the
directory format: manifest, staged atomic write, checksum verification, loading) and `job` (the
export command: prune, check parity, write).
"""


class ExportError(ValueError):
    """An export that cannot be made or fails its own checks."""
