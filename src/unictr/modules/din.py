"""DIN (Zhou et al., KDD 2018) as FuxiCTR 2.3 builds it, for the `din` baseline arm of `experiment unify`.

Written here to FuxiCTR's specification (its `Dice`, `MLP_Block`, `DIN_Attention` and model-zoo `DIN` with
their defaults) rather than imported, so the project keeps no new runtime dependency; `tests/test_din.py`
copies these weights into FuxiCTR's own layers and checks the outputs agree.

The model is single-task and per row: one embedding table per categorical feature (features that share a
table in the config share it here; `surface` and `view_type` are categorical features too), a dense
feature is its value times a learned vector, the candidate's `[item, side features...]` embeddings are the
target of an attention over the events' `[item, side features...]` embeddings (the same tables), the
events' action types are embedded and mask-averaged (FuxiCTR's `MaskedAveragePooling`), and the flat
concat of every field goes through a ReLU MLP to one logit. The event ages are not used: FuxiCTR's DIN
has no notion of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from unictr.config import Config
from unictr.data.batch import Batch, Schema


class Dice(nn.Module):
    """Dice activation: `p·x + α·(1−p)·x` with `p = sigmoid(BatchNorm(x))` (no affine, eps 1e-9,
    momentum 0.01) and a learned `α` per unit, zero at the start."""

    def __init__(self, dim: int, eps: float = 1e-9) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=eps, momentum=0.01)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        p = torch.sigmoid(self.bn(x))
        return p * x + self.alpha * (1 - p) * x


def mlp(
    input_dim: int, hidden: Sequence[int], activation: Callable[[int], nn.Module], output_dim: int = 1
) -> nn.Sequential:
    """`Linear, activation` per hidden layer, then a `Linear` to `output_dim`: FuxiCTR's `MLP_Block.mlp`
    layout without dropout or batch norm (so its `state_dict` keys line up)."""
    layers: list[nn.Module] = []
    dim = input_dim
    for units in hidden:
        layers += [nn.Linear(dim, units), activation(units)]
        dim = units
    layers.append(nn.Linear(dim, output_dim))
    return nn.Sequential(*layers)


class DINAttention(nn.Module):
    """Target attention over a history: an MLP (Dice hidden units) scores `[t, h, t−h, t·h]` per event;
    the scores, zeroed at padding and not normalised (no softmax), weight the sum of the events."""

    def __init__(self, dim: int, units: Sequence[int] = (64,)) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = mlp(4 * dim, units, Dice)

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        """target `[B, E]`, history `[B, L, E]`, mask `[B, L]` → `[B, E]`.

        The first layer's `W·[t, h, t−h, t·h]` is computed as `(Wt+Wd)·t + (Wh−Wd)·h + Wp·(t·h)`: the same
        function and weights, half the multiplications (the target part once per row), no `[B, L, 4E]` copy.
        """
        first = self.mlp[0]
        wt, wh, wd, wp = first.weight.split(self.dim, dim=1)
        per_row = (target @ (wt + wd).T + first.bias).unsqueeze(1)
        z = per_row + history @ (wh - wd).T + (target.unsqueeze(1) * history) @ wp.T
        w = self.mlp[1:](z.reshape(-1, z.shape[-1])).view(history.shape[:2]) * mask.float()
        return (w.unsqueeze(-1) * history).sum(1)


class DIN(nn.Module):
    """Single-task DIN on a `Batch`: `forward` gives one logit per row `[N]` (see the module docstring)."""

    def __init__(
        self, cfg: Config, dim: int = 16, attention_units: Sequence[int] = (64,), dnn_units: Sequence[int] = (256, 128)
    ) -> None:
        super().__init__()
        schema = Schema.from_config(cfg)
        self.schema, self.dim = schema, dim
        owners = {n: cfg.table_of(n) for n in (*schema.user_cat, *schema.cand_cat)}
        self.tables = nn.ModuleDict({o: nn.Embedding(cfg.hash_size(o), dim) for o in dict.fromkeys(owners.values())})
        self.user_tables = [owners[n] for n in schema.user_cat]
        self.cand_tables = [owners[n] for n in schema.cand_cat]
        view_names = sorted({v for _, v in schema.view_keys})
        self.register_buffer("view_type_of_key", torch.tensor([view_names.index(v) for _, v in schema.view_keys]))
        self.surface = nn.Embedding(len(schema.surfaces), dim)
        self.view_type = nn.Embedding(len(view_names), dim)
        std = math.sqrt(2.0 / (1 + dim))  # FuxiCTR's numeric embedding: a Linear(1, dim) with Xavier-normal init
        self.user_dense = nn.Parameter(torch.randn(len(schema.user_dense), dim) * std)
        self.cand_dense = nn.Parameter(torch.randn(len(schema.cand_dense), dim) * std)
        seq = schema.sequence
        fields = len(schema.user_cat) + len(schema.user_dense) + len(schema.cand_cat) + len(schema.cand_dense) + 2
        if seq is not None:
            targets = [seq.item_feature, *seq.side_features.values()]
            self.target_cols = [schema.cand_cat.index(f) for f in targets]
            self.seq_tables = [owners[f] for f in targets]
            self.attention = DINAttention(dim * len(targets), attention_units)
            self.action = nn.Embedding(seq.num_actions, dim)
            fields += len(targets) + 1
        self.dnn = mlp(fields * dim, dnn_units, lambda _: nn.ReLU())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """FuxiCTR's initialisation: Xavier-normal `Linear` weights and zero biases, embeddings N(0, 1e-4²)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=1e-4)

    def _cat(self, names: list[str], ids: Tensor) -> Tensor:
        """ids `[..., F]` looked up in the tables `names` → `[..., F, dim]`."""
        return torch.stack([self.tables[n](ids[..., j]) for j, n in enumerate(names)], dim=-2)

    def forward(self, b: Batch) -> Tensor:
        ui = b.user_index
        user = torch.cat([self._cat(self.user_tables, b.user_cat), b.user_dense[..., None] * self.user_dense], 1)
        cand = self._cat(self.cand_tables, b.cand_cat)
        fields = [
            user[ui], cand, b.cand_dense[..., None] * self.cand_dense,
            self.surface(b.surface)[:, None], self.view_type(self.view_type_of_key[b.view_key])[:, None],
        ]
        if self.schema.sequence is not None:
            fields += self._history(b, cand)
        x = torch.cat([f.flatten(1) for f in fields], 1)
        return self.dnn(x).squeeze(1)

    def _history(self, b: Batch, cand: Tensor) -> list[Tensor]:
        """The attention-pooled events (one field per target feature) and the mask-averaged action types."""
        ids = torch.cat([b.seq_item[..., None], b.seq_side], -1)  # [U, L, 1+Ks]
        events = self._cat(self.seq_tables, ids).flatten(2)  # [U, L, E]
        mask = b.seq_mask.float()
        actions = (self.action(b.seq_action) * mask[..., None]).sum(1) / (mask.sum(1, keepdim=True) + 1e-12)
        ui = b.user_index
        target = cand[:, self.target_cols].flatten(1)  # [N, E]
        pooled = self.attention(target, events[ui], b.seq_mask[ui])
        return [pooled, actions[ui]]
