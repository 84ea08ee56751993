"""User-sequence encoders by name: the interface the model needs, and the registry `model.sequence.encoder`
chooses from.

A new encoder is one new file under `modules/` (a class built as `Encoder(spec, dim, num_actions)` that
meets `SequenceEncoder`) plus its name here and in `SequenceModelSpec.encoder`'s choices (config/model.py).
Its parameters live under `sequence.` in the state dict, which a surface export copies unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor, nn

from unictr.config import SequenceModelSpec
from unictr.modules.mean_pool import MeanPoolEncoder
from unictr.modules.sequence import TransformerEncoder


class SequenceEncoder(Protocol):
    """What the model and `TargetAttention` need of a user-sequence encoder (an `nn.Module`)."""

    out_dim: int  # width of the per-user summary

    def __call__(self, item: Tensor, action: Tensor, age_s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """item `[U, L, D]` (event embeddings), action/age (seconds)/mask `[U, L]` (left-padded) →
        (tokens `[U, L+1, D]` with an always-visible start token first, their mask `[U, L+1]`,
        summary `[U, out_dim]`); the tokens are the target attention's keys and values."""
        ...


ENCODERS: dict[str, Callable[[SequenceModelSpec, int, int], nn.Module]] = {
    "transformer": TransformerEncoder,
    "mean_pool": MeanPoolEncoder,
}


def build_sequence_encoder(spec: SequenceModelSpec, dim: int, num_actions: int) -> nn.Module:
    """The encoder `spec.encoder` names, `dim` wide, over `num_actions` action types."""
    if spec.encoder not in ENCODERS:  # the config's choices and this registry disagree
        raise ValueError(f"model.sequence.encoder={spec.encoder!r}: known encoders are {sorted(ENCODERS)}")
    return ENCODERS[spec.encoder](spec, dim, num_actions)
