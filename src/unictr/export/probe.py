"""Random but valid batches of one surface: the export's parity checks, ONNX tracing and warm-up."""

from __future__ import annotations

import torch
from torch import Tensor

from unictr.data.batch import Batch, Schema


def probe_batch(schema: Schema, surface: str, users: int = 5, rows: int = 17, seed: int = 0) -> Batch:
    """A random but valid batch of `surface` rows (rows >= users), for export-time checks and ONNX tracing."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int, sizes: tuple[int, ...]) -> Tensor:
        cols = [torch.randint(0, size, (n,), generator=g) for size in sizes]
        return torch.stack(cols, 1) if cols else torch.zeros((n, 0), dtype=torch.int64)

    spec = schema.sequence
    length = spec.max_len if spec is not None else 1
    seen = torch.randint(0, length + 1, (users,), generator=g) if spec is not None else torch.zeros(users).long()
    seq_mask = torch.arange(length)[None, :] >= (length - seen)[:, None]
    view_keys = [i for i, (name, _) in enumerate(schema.view_keys) if name == surface]
    s = schema.surfaces.index(surface)
    tasks = len(schema.tasks)
    return Batch(
        user_cat=ids(users, schema.user_cat_sizes),
        user_dense=torch.randn((users, len(schema.user_dense)), generator=g),
        seq_item=torch.randint(0, schema.item_hash_size if spec else 1, (users, length), generator=g) * seq_mask,
        seq_side=torch.stack(
            [torch.randint(0, size, (users, length), generator=g) * seq_mask for size in schema.seq_side_sizes]
            or [torch.zeros((users, length), dtype=torch.int64)],
            dim=2,
        )[..., : len(schema.seq_side_sizes)],
        seq_action=torch.randint(0, spec.num_actions if spec else 1, (users, length), generator=g) * seq_mask,
        seq_age=torch.rand((users, length), generator=g) * 1e5 * seq_mask,
        seq_mask=seq_mask,
        cand_cat=ids(rows, schema.cand_cat_sizes),
        cand_dense=torch.randn((rows, len(schema.cand_dense)), generator=g),
        surface=torch.full((rows,), s, dtype=torch.int64),
        view_key=torch.tensor(view_keys)[torch.randint(0, len(view_keys), (rows,), generator=g)],
        user_index=torch.cat([torch.arange(users), torch.randint(0, users, (rows - users,), generator=g)]),
        labels=torch.zeros((rows, tasks)),
        label_mask=torch.tensor(schema.task_mask[s]).expand(rows, tasks).clone(),
    )
