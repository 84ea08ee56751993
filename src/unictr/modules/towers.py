"""Per-surface tower trees: an MLP over the trunk output, late fusion, one head per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(in_dim: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(in_dim, w), nn.ReLU()]
        in_dim = w
    return nn.Sequential(*layers)


class SurfaceTower(nn.Module):
    """MLP(trunk) ‖ late features (the surface's own) → one logit per task."""

    def __init__(self, in_dim: int, late_dim: int, hidden: list[int], tasks: int) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, hidden)
        self.heads = nn.Linear((hidden[-1] if hidden else in_dim) + late_dim, tasks)

    def forward(self, z: Tensor, late: Tensor) -> Tensor:
        return self.heads(torch.cat([self.mlp(z), late], dim=1))


class TowerTree(nn.Module):
    """One tower per surface, each run only on its own rows (index-select, not masking).

    `late_columns[i]` lists which columns of the late-feature tensor tower `i` fuses (every column is
    some tower's, so the tensor has `1 + max` of them). With a single tower every row is its row, so
    no selection happens (`forward_single_tower`: the exported-surface and shared-tower case).
    `tower_of_surface` maps a surface index to its tower.
    """

    def __init__(
        self,
        in_dim: int,
        late_columns: list[list[int]],
        late_dim: int,
        hidden: list[int],
        tasks: int,
        tower_of_surface: list[int],
    ) -> None:
        super().__init__()
        self.towers = nn.ModuleList(
            SurfaceTower(in_dim, len(cols) * late_dim, hidden, tasks) for cols in late_columns
        )
        fields = 1 + max(max(cols) for cols in late_columns)  # every late column is some tower's
        for i, cols in enumerate(late_columns):  # index tensors: one gather each (list indexing exports as three nodes)
            every = cols == list(range(fields))  # all columns in order: no gather
            self.register_buffer(f"late_index_{i}", None if every else torch.tensor(cols), persistent=False)
        self.register_buffer("tower_of_surface", torch.tensor(tower_of_surface, dtype=torch.int64), persistent=False)
        self.tasks = tasks

    def _late(self, late: Tensor, tower: int) -> Tensor:
        """The late-feature columns tower `tower` fuses, flattened: `[rows, len(cols) * D]`."""
        index = getattr(self, f"late_index_{tower}")
        return (late if index is None else late.index_select(1, index)).flatten(1)

    def forward(self, z: Tensor, late: Tensor, surface: Tensor) -> Tensor:
        """z `[N, P]`, late `[N, F_late, D]`, surface `[N]` → logits `[N, tasks]`."""
        if len(self.towers) == 1:
            return self.forward_single_tower(z, late)
        return self.forward_routed(z, late, surface)

    def forward_routed(self, z: Tensor, late: Tensor, surface: Tensor) -> Tensor:
        """The reference: each tower scores its own rows (index-select), written back in row order."""
        tower = self.tower_of_surface[surface]
        logits = z.new_zeros(z.shape[0], self.tasks)
        for i, t in enumerate(self.towers):
            rows = torch.nonzero(tower == i, as_tuple=True)[0]
            if rows.numel():
                out = t(z[rows], self._late(late[rows], i))
                logits = logits.index_copy(0, rows, out.to(logits.dtype))
        return logits

    def forward_single_tower(self, z: Tensor, late: Tensor) -> Tensor:
        """The single-tower specialisation (a surface export, a shared tower): every row is its row."""
        return self.towers[0](z, self._late(late, 0))
