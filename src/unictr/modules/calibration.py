"""Learned logit calibration per key (view type, surface or global) and task."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
