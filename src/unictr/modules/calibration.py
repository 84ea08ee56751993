"""Logit calibration: learned per key (view type, surface or global) and task, then post-hoc per view key."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unictr.calibration_fit import Y_CLIP, apply_piecewise_linear_keyed


class LogitCalibration(nn.Module):
    """logit' = logit * exp(log_temperature[key, task]) + bias[key, task]; the identity at init.

    Trained with the model, it absorbs each key's base-rate shift so the shared towers need not.
    """

    def __init__(self, keys: int, tasks: int) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(keys, tasks))
        self.bias = nn.Parameter(torch.zeros(keys, tasks))

    def forward(self, logits: Tensor, key: Tensor) -> Tensor:
        return logits * self.log_temperature[key].exp() + self.bias[key]


class PosthocCalibration(nn.Module):
    """A fitted logit → logit map per (view key, task), applied after the learned calibration.

    The tensors are buffers written by `unictr calibrate` (always one row per view key, so a per-surface
    export slices them like the view embedding). `platt`: logit' = a * logit + b. `isotonic`: p = the
    monotone piecewise-linear table at sigmoid(logit), then logit' = logit(p) clamped to the table's
    [1e-6, 1 - 1e-6] range. `none` holds no tensors and is the identity.
    """

    def __init__(self, method: str, view_keys: int, tasks: int, knots: int) -> None:
        super().__init__()
        self.method = method
        if method == "platt":
            self.register_buffer("a", torch.ones(view_keys, tasks))
            self.register_buffer("b", torch.zeros(view_keys, tasks))
        elif method == "isotonic":  # identity table until fitted
            grid = torch.linspace(0.0, 1.0, knots).expand(view_keys, tasks, knots).contiguous()
            self.register_buffer("x_knots", grid)
            self.register_buffer("y_knots", grid.clamp(Y_CLIP, 1.0 - Y_CLIP))
        elif method != "none":
            raise ValueError(f"unknown post-hoc calibration method {method!r}")

    def forward(self, logits: Tensor, view_key: Tensor) -> Tensor:
        if self.method == "platt":
            return logits * self.a[view_key] + self.b[view_key]
        if self.method == "isotonic":
            keys, tasks, knots = self.x_knots.shape
            table = (view_key[:, None] * tasks + torch.arange(tasks, device=view_key.device)).reshape(-1)
            p = apply_piecewise_linear_keyed(
                torch.sigmoid(logits.float()).reshape(-1), table,
                self.x_knots.reshape(keys * tasks, knots), self.y_knots.reshape(keys * tasks, knots),
            ).reshape(logits.shape).clamp(Y_CLIP, 1.0 - Y_CLIP)
            return torch.log(p) - torch.log1p(-p)
        return logits
