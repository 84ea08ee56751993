"""Logit calibration: learned per key (view type, surface or global) and task, then post-hoc per view key.

Also how a fitted isotonic map is applied: a monotone piecewise-linear knot table evaluated with
comparisons, gathers and arithmetic only (ONNX-exportable, no searchsorted). The fitters
(`unictr.calibration.fit`) import it from here, so the layer does not depend on the fitting job.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Y_CLIP = 1e-6  # fitted probabilities stay in [Y_CLIP, 1 - Y_CLIP], so their logits are finite


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


def _interp_rows(x: Tensor, xk: Tensor, yk: Tensor) -> Tensor:
    """Row-wise linear interpolation of x[N] in knot rows xk/yk[N, M], clamped at the ends.

    The segment index comes from a comparison count (exportable, unlike searchsorted); repeated
    (padding) knots give zero-width segments, which resolve to their common value.
    """
    m = xk.shape[1]
    idx = ((x[:, None] >= xk).sum(dim=1) - 1).clamp(0, m - 2)[:, None]
    x0, x1 = xk.gather(1, idx)[:, 0], xk.gather(1, idx + 1)[:, 0]
    y0, y1 = yk.gather(1, idx)[:, 0], yk.gather(1, idx + 1)[:, 0]
    dx = x1 - x0
    t = ((x - x0) / torch.where(dx > 0, dx, torch.ones_like(dx))).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)


def apply_piecewise_linear(x: Tensor, xk: Tensor, yk: Tensor) -> Tensor:
    """Evaluate the knot table (xk, yk)[M] at x (any shape), clamping outside the knot range."""
    if xk.shape[0] == 1:
        return yk.expand_as(x).clone()
    flat = x.reshape(-1)
    rows = (flat.shape[0], xk.shape[0])
    return _interp_rows(flat, xk.expand(rows), yk.expand(rows)).reshape(x.shape)


def apply_piecewise_linear_keyed(x: Tensor, key: Tensor, xk: Tensor, yk: Tensor) -> Tensor:
    """Evaluate per-row knot tables: row i uses table `key[i]` of xk/yk[K, M] (pad with the last knot)."""
    if xk.shape[1] == 1:
        return yk[key, 0]
    return _interp_rows(x, xk[key], yk[key])
