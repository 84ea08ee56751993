"""Multi-gate mixture of experts with one softmax gate per (surface, task)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unictr.modules.broadcast import BroadcastLinear, one_user


def _softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Softmax over `dim` (the few experts), written out as five elementwise nodes: ONNX Runtime's
    Softmax kernel is slow on a dim this short (docs/performance.md). `torch.softmax` is its reference."""
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


class MMoE(nn.Module):
    """Experts shared by every surface and task; each (surface, task) mixes them with its own gate.

    Inputs arrive split into the per-user part and the per-impression part (see BroadcastLinear).
    Returns `[N, tasks, expert_dim]`. With `enabled=False` one expert serves every task (ablation).
    """

    def __init__(
        self,
        user_dim: int,
        cand_dim: int,
        experts: int,
        hidden: int,
        out_dim: int,
        surfaces: int,
        tasks: int,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.experts = experts if enabled else 1
        self.hidden, self.out_dim = hidden, out_dim
        self.surfaces, self.tasks = surfaces, tasks
        self.first = BroadcastLinear(user_dim, cand_dim, self.experts * hidden)
        self.w2 = nn.Parameter(torch.empty(self.experts, hidden, out_dim).uniform_(-1, 1) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(self.experts, out_dim))
        self.gate = BroadcastLinear(user_dim, cand_dim, surfaces * tasks * self.experts) if enabled else None

    def forward(self, user: Tensor, cand: Tensor, user_index: Tensor, surface: Tensor) -> Tensor:
        n = cand.shape[0]
        out = self._experts_one_user(user, cand) if one_user(user) else self._experts(user, cand, user_index)
        if self.gate is None:
            return out.expand(n, self.tasks, self.out_dim)
        if self.surfaces == 1:
            weights = self._gate_weights_one_surface(user, cand, user_index)
        else:
            weights = self._gate_weights(user, cand, user_index, surface)
        return torch.matmul(weights, out)  # [N, T, E] @ [N, E, O]

    def _gate_weights(self, user: Tensor, cand: Tensor, user_index: Tensor, surface: Tensor) -> Tensor:
        """The reference gate: each row's (surface, task) softmax over experts, `[N, T, E]`."""
        n = cand.shape[0]
        logits = self.gate(user, cand, user_index).view(n, self.surfaces, self.tasks * self.experts)
        own = logits.gather(1, surface.view(n, 1, 1).expand(n, 1, logits.shape[2]))  # the row's surface
        return _softmax(own.view(n, self.tasks, self.experts))

    def _gate_weights_one_surface(self, user: Tensor, cand: Tensor, user_index: Tensor) -> Tensor:
        """The single-surface specialisation (a surface export): every row's gate is the one surface's.

        Its softmax over experts runs transposed (`[T, E, N]`), so each broadcast is over rows of N values,
        not N·T rows of E (ONNX Runtime's broadcasts over a short last dim are slow; two small transposes
        cost less).
        """
        n = cand.shape[0]
        logits = self.gate(user, cand, user_index).t().reshape(self.tasks, self.experts, n)
        return _softmax(logits, dim=1).permute(2, 0, 1)

    def _experts(self, user: Tensor, cand: Tensor, user_index: Tensor) -> Tensor:
        """The reference: every expert's output `[N, E, O]` as one wide GEMM, then a batched one (the
        faster form for training batches, forward and backward)."""
        n = cand.shape[0]
        h = torch.relu(self.first(user, cand, user_index)).view(n, self.experts, self.hidden)
        # matmul rather than einsum: the same math, exported to ONNX as plain MatMul nodes (faster there)
        return torch.relu(torch.matmul(h.transpose(0, 1), self.w2).transpose(0, 1) + self.b2)

    def _experts_one_user(self, user: Tensor, cand: Tensor) -> Tensor:
        """The one-user specialisation of `_experts`: each expert as two GEMMs with its bias (the user row
        for the first) and ReLU fused, no `[N, E, H]` transposes (faster in ONNX Runtime)."""
        w1 = self.first.cand.weight.view(self.experts, self.hidden, -1)
        u1 = self.first.per_user(user).view(self.experts, 1, self.hidden)
        outs = []
        for e in range(self.experts):  # expert by expert: one [N, H] hidden alive at a time, still in cache
            hidden = torch.relu(torch.addmm(u1[e], cand, w1[e].t()))
            outs.append(torch.relu(torch.addmm(self.b2[e], hidden, self.w2[e])))
        return torch.stack(outs, dim=1)
