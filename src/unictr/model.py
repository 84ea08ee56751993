"""The unified multi-surface engagement model, composed top to bottom as in the design:

    fused embedding → user side once per user (features + sequence encoder, a Transformer by default,
    + the mean of the current session's events)
    → candidate side per impression (features + target attention)
    → MMoE (gates per surface × task) → DCNv2 projection → per-surface towers → calibration
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unictr.config import Config
from unictr.data.batch import Batch, Schema
from unictr.modules.activation_unit import ActivationUnitAttention
from unictr.modules.broadcast import rows_of_users
from unictr.modules.calibration import LogitCalibration, PosthocCalibration
from unictr.modules.dcn import DCNv2Projection
from unictr.modules.embedding import FusedEmbedding, dense_lookup
from unictr.modules.encoders import build_sequence_encoder
from unictr.modules.interaction import DotInteraction
from unictr.modules.mmoe import MMoE
from unictr.modules.sequence import TargetAttention, short_term_mean
from unictr.modules.towers import TowerTree


class UnifiedCTR(nn.Module):
    """Scores every impression of a `Batch` for every task; `forward` returns calibrated logits `[N, T]`."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.schema = Schema.from_config(cfg)
        # The builders run in this order: it is the order of the random initialisation and of the state dict.
        tower_feats = {f.name: f.towers for f in cfg.features if f.towers}
        self._build_embeddings(tower_feats)
        self._build_sequence()
        user_dim, cand_dim = self._build_interaction()
        self._build_trunk(user_dim, cand_dim)
        self._build_towers(tower_feats)
        self._build_calibration()

    def _build_embeddings(self, tower_feats: dict[str, list[str]]) -> None:
        """Every categorical table fused into one weight (features of one id space share a table), the
        candidate columns split into trunk and tower features, the view type and dense projections."""
        s, m, d = self.schema, self.cfg.model, self.cfg.model.embedding_dim
        owners = [f.name for f in self.cfg.features if f.kind == "categorical" and f.table is None]
        sizes = [self.cfg.hash_size(n) for n in owners]
        self.embedding = FusedEmbedding(owners, sizes, d, init_std=m.embedding_init_std)
        self.register_buffer("user_offsets", self._table_offsets(s.user_cat), persistent=False)
        self.register_buffer("cand_offsets", self._table_offsets(s.cand_cat), persistent=False)
        trunk_cols = [i for i, n in enumerate(s.cand_cat) if n not in tower_feats]
        tower_cols = [i for i, n in enumerate(s.cand_cat) if n in tower_feats]
        # as index tensors: one gather each (list indexing exports as transpose-gather-transpose); none for
        # the trunk when it takes every column (a surface export without tower features: nothing to copy)
        every = trunk_cols == list(range(len(s.cand_cat)))
        self.register_buffer("trunk_index", None if every else torch.tensor(trunk_cols), persistent=False)
        self.register_buffer("tower_index", torch.tensor(tower_cols, dtype=torch.int64), persistent=False)
        self.trunk_fields = len(trunk_cols)
        self.view_embedding = nn.Embedding(len(s.view_keys), d)
        self.user_dense = nn.Linear(len(s.user_dense), m.dense_hidden) if s.user_dense else None
        self.cand_dense = nn.Linear(len(s.cand_dense), m.dense_hidden) if s.cand_dense else None

    def _build_sequence(self) -> None:
        """The sequence encoder `model.sequence.encoder` names, per unique user; target attention per impression."""
        cfg, s = self.cfg, self.schema
        self.sequence: nn.Module | None = None
        if cfg.sequence is None or not cfg.model.sequence.enabled:
            return
        spec, d = cfg.model.sequence, cfg.model.embedding_dim
        self.sequence = build_sequence_encoder(spec, d, cfg.sequence.num_actions)
        self.target_attention = TargetAttention(d) if spec.target_attention != "activation_unit" else None
        self.short_term_seconds = spec.short_term_seconds
        self.item_col = s.cand_cat.index(cfg.sequence.item_feature)
        self.item_offset = int(self._table_offsets([cfg.sequence.item_feature])[0])
        # each event's side features share their candidate feature's table; the candidate's join the query
        side = list(cfg.sequence.side_features.values())
        self.side_cols = [s.cand_cat.index(f) for f in side]
        self.register_buffer("side_offsets", self._table_offsets(side), persistent=False)
        self.activation_unit = None
        if spec.target_attention != "dot":
            self.activation_unit = ActivationUnitAttention((1 + len(side)) * d, d, spec.attention_hidden)
            self.register_buffer("field_index", torch.tensor([self.item_col, *self.side_cols]), persistent=False)

    def _build_interaction(self) -> tuple[int, int]:
        """Explicit crosses: dot products among user fields (with the short-term events' mean), candidate trunk
        fields and the target attention's output. Returns the widths of the user and candidate vectors that
        enter the trunk."""
        s, m, d = self.schema, self.cfg.model, self.cfg.model.embedding_dim
        user_dim = len(s.user_cat) * d + (m.dense_hidden if s.user_dense else 0)
        short = self.sequence is not None and self.short_term_seconds > 0
        user_dim += (self.sequence.out_dim if self.sequence else 0) + (d if short else 0)
        cand_dim = self.trunk_fields * d + (m.dense_hidden if s.cand_dense else 0)
        dot = self.sequence is not None and self.target_attention is not None
        cand_dim += (d if dot else 0) + (self.activation_unit.out_dim if self.sequence and self.activation_unit else 0)
        self.interaction: DotInteraction | None = None
        if m.interaction:
            self.interaction = DotInteraction(len(s.user_cat) + short + self.trunk_fields + (1 if dot else 0))
            cand_dim += self.interaction.out_dim
        return user_dim, cand_dim

    def _build_trunk(self, user_dim: int, cand_dim: int) -> None:
        """Shared trunk: MMoE (gates per surface × task), then the DCNv2 projection that shrinks its output."""
        m, tasks = self.cfg.model, len(self.schema.tasks)
        self.mmoe = MMoE(
            user_dim, cand_dim, m.mmoe.experts, m.mmoe.expert_hidden, m.mmoe.expert_dim,
            len(self.schema.surfaces), tasks, enabled=m.mmoe.enabled,
        )
        self.projection = DCNv2Projection(tasks * m.mmoe.expert_dim, m.dcn.layers, m.dcn.rank, m.dcn.out_dim)

    def _build_towers(self, tower_feats: dict[str, list[str]]) -> None:
        """Towers: late fusion of the view type plus each surface's own tower features (or all, shared)."""
        s, m = self.schema, self.cfg.model
        tower_names = [n for n in s.cand_cat if n in tower_feats]
        late_view = len(tower_names)  # the view-type embedding is the last late column
        if m.tower.per_surface:
            late_columns = [
                [j for j, n in enumerate(tower_names) if sn in tower_feats[n]] + [late_view] for sn in s.surfaces
            ]
            tower_of_surface = list(range(len(s.surfaces)))
        else:
            late_columns = [list(range(len(tower_names))) + [late_view]]
            tower_of_surface = [0] * len(s.surfaces)
        self.towers = TowerTree(
            self.projection.out_dim, late_columns, m.embedding_dim, m.tower.hidden, len(s.tasks), tower_of_surface
        )

    def _build_calibration(self) -> None:
        """Calibration keyed by view type, surface or nothing, then the post-hoc fit (`unictr calibrate`)
        per view key × task: a child of `calibration`, so its tensors are `calibration.posthoc.*` and
        export prunes them by view-key rows."""
        s, c = self.schema, self.cfg.model.calibration
        self.calibration_scope = c.scope
        keys = {"view_type": len(s.view_keys), "surface": len(s.surfaces), "global": 1}[self.calibration_scope]
        self.calibration = LogitCalibration(keys, len(s.tasks))
        self.calibration.posthoc = PosthocCalibration(c.posthoc, len(s.view_keys), len(s.tasks), c.posthoc_knots)

    def _table_offsets(self, features: list[str] | tuple[str, ...]) -> Tensor:
        """Row offsets in the fused table of the tables these features use."""
        return self.embedding.table_offsets([self.cfg.table_of(f) for f in features])

    def forward(self, b: Batch) -> Tensor:
        u, n, d = b.num_users, b.num_rows, self.cfg.model.embedding_dim

        # 1. One fused lookup: user features [U·Fu], candidate features [N·Fc], sequence items [U·L].
        rows = [(b.user_cat + self.user_offsets).flatten(), (b.cand_cat + self.cand_offsets).flatten()]
        if self.sequence is not None:
            rows.append((b.seq_item + self.item_offset).flatten())
            rows.append((b.seq_side + self.side_offsets).flatten())
        parts = self.embedding(torch.cat(rows)).split([r.numel() for r in rows])
        user_emb = parts[0].view(u, -1, d)
        cand_emb = parts[1].view(n, -1, d)

        # 2. User side, once per unique user.
        user_fields = user_emb  # [U, F, D], the user's side of the dot interactions
        user_parts = [user_emb.flatten(1)]
        if self.user_dense is not None:
            user_parts.append(torch.relu(self.user_dense(b.user_dense)))
        if self.sequence is not None:
            length = b.seq_item.shape[1]
            seq_emb = parts[2].view(u, length, d)
            side_emb = parts[3].view(u, length, len(self.side_cols), d)
            if self.side_cols:
                seq_emb = seq_emb + side_emb.sum(2)
            tokens, tok_mask, summary = self.sequence(seq_emb, b.seq_action, b.seq_age, b.seq_mask)
            user_parts.append(summary)
            if self.short_term_seconds > 0:  # the encoder's mask: a training-time window mask hides them here too
                short = short_term_mean(seq_emb, tok_mask[:, 1:], b.seq_age, self.short_term_seconds)
                user_parts.append(short)
                user_fields = torch.cat([user_emb, short[:, None]], dim=1)
        user_vec = torch.cat(user_parts, dim=1)

        # 3. Candidate side, per impression; the target attention is where user meets candidate.
        trunk_emb = cand_emb if self.trunk_index is None else cand_emb.index_select(1, self.trunk_index)
        cand_parts = [trunk_emb.flatten(1)]
        if self.cand_dense is not None:
            cand_parts.append(torch.relu(self.cand_dense(b.cand_dense)))
        fields = [rows_of_users(user_fields, b.user_index), trunk_emb]
        if self.sequence is not None:
            events = torch.cat([parts[2].view(u, length, 1, d), side_emb], dim=2)  # [U, L, fields, D]
            dot, unit = self._read_events(b, cand_emb, events, seq_emb, tokens, tok_mask)
            cand_parts += [x for x in (dot, unit) if x is not None]
            fields += [dot[:, None]] if dot is not None else []
        if self.interaction is not None:
            cand_parts.append(self.interaction(torch.cat(fields, dim=1)))
        cand_vec = torch.cat(cand_parts, dim=1)

        # 4. Shared trunk: MMoE over [user[user_index] ‖ candidate], then the DCNv2 projection.
        experts = self.mmoe(user_vec, cand_vec, b.user_index, b.surface)
        z = self.projection(experts.flatten(1))

        # 5. Per-surface towers with late fusion (the tower features if any, then the view type).
        late = dense_lookup(self.view_embedding.weight, b.view_key)[:, None]
        if self.tower_index.numel():
            late = torch.cat([cand_emb.index_select(1, self.tower_index), late], dim=1)
        logits = self.towers(z, late, b.surface)

        # 6. Learned calibration per (key, task), then the post-hoc fit per (view key, task).
        logits = self.calibration(logits, self.calibration_key(b))
        return self.calibration.posthoc(logits, b.view_key)

    def _read_events(
        self, b: Batch, cand_emb: Tensor, events: Tensor, seq_emb: Tensor, tokens: Tensor, tok_mask: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """The target attentions `model.sequence.target_attention` names, where user meets candidate: the dot
        product's output `[N, D]` and the activation unit's `[N, fields·D]` (None where not configured)."""
        dot = unit = None
        if self.target_attention is not None:
            # the item's row plus its side features' rows, as adds (a ReduceSum over 2-4 rows is slow in ONNX Runtime)
            query = cand_emb[:, self.item_col]
            for col in self.side_cols:
                query = query + cand_emb[:, col]
            dot = self.target_attention(query, seq_emb, tokens, tok_mask, b.user_index)
        if self.activation_unit is not None:
            # the item's fields side by side, for the candidate and for each event (start token left out)
            target = cand_emb.index_select(1, self.field_index).flatten(1)
            unit = self.activation_unit(target, events.flatten(2), tokens[:, 1:], tok_mask[:, 1:], b.user_index)
        return dot, unit

    def calibration_key(self, b: Batch) -> Tensor:
        if self.calibration_scope == "view_type":
            return b.view_key
        if self.calibration_scope == "surface":
            return b.surface
        return torch.zeros_like(b.surface)


@torch.inference_mode()
def probabilities(model: nn.Module, b: Batch) -> Tensor:
    """Sigmoid of the model's calibrated logits, `[N, T]` float32 (the model's mode is the caller's)."""
    return torch.sigmoid(model(b).float())


def masked_bce(logits: Tensor, b: Batch, weights: Tensor, counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Weighted sum over tasks of the mean BCE on the rows where each task applies.

    `counts` (per task) replaces this batch's own row counts as the means' denominators: data-parallel
    ranks pass the counts over all ranks, so their losses sum to the loss of the union of their batches.
    Returns (loss, per-task mean losses).
    """
    per = nn.functional.binary_cross_entropy_with_logits(logits.float(), b.labels, reduction="none")
    mask = b.label_mask.float()
    per_task = (per * mask).sum(0) / (mask.sum(0) if counts is None else counts).clamp_min(1.0)
    return (per_task * weights).sum(), per_task.detach()
