"""DCNv2 cross layers used as the projection that shrinks the trunk output."""

from __future__ import annotations

from torch import Tensor, nn


class CrossLayer(nn.Module):
    """x_{l+1} = x_0 * (W x_l + b) + x_l, with W full or low rank (U V^T)."""

    def __init__(self, dim: int, rank: int | None) -> None:
        super().__init__()
        if rank is None or rank >= dim:
            self.w = nn.Linear(dim, dim)
        else:
            self.w = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.w(x) + x


class DCNv2Projection(nn.Module):
    """Explicit feature crosses, then a linear projection to `out_dim` (the serving-cost lever).

    `out_dim=None` passes the cross layers' output (`in_dim` wide) to the towers unprojected: the
    baseline the projection's saving is measured against (docs/model.md)."""

    def __init__(self, in_dim: int, layers: int, rank: int | None, out_dim: int | None) -> None:
        super().__init__()
        self.cross = nn.ModuleList(CrossLayer(in_dim, rank) for _ in range(layers))
        unprojected = out_dim is None
        self.proj: nn.Module = nn.Identity() if unprojected else nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())
        self.out_dim = in_dim if out_dim is None else out_dim

    def forward(self, x: Tensor) -> Tensor:
        x0 = x
        for layer in self.cross:
            x = layer(x0, x)
        return self.proj(x)
