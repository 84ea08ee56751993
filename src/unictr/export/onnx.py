"""The surface model as an ONNX graph (torch's dynamo exporter), checked against torch with onnxruntime."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from unictr.data.batch import MODEL_INPUTS, USER_FIELDS, Batch
from unictr.export import ExportError
from unictr.model import UnifiedCTR, probabilities

ONNX_ATOL = 1e-4  # torch vs onnxruntime probabilities


class BatchInputs(nn.Module):
    """Wraps a model so it takes the `Batch` tensors positionally (`MODEL_INPUTS`) and returns probabilities."""

    def __init__(self, model: UnifiedCTR) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        tensors = dict(zip(MODEL_INPUTS, inputs, strict=True))
        n, tasks = tensors["cand_cat"].shape[0], len(self.model.schema.tasks)
        b = Batch(
            **tensors, labels=tensors["cand_dense"].new_zeros((n, tasks)),
            label_mask=tensors["surface"].new_zeros((n, tasks)).bool(),
        )
        return probabilities(self.model, b)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_onnx(model: UnifiedCTR, path: Path, example: Batch, check: Batch, one_user: bool = False) -> float:
    """Write `model` as ONNX (torch's dynamo exporter, dynamic U and N) and check it with onnxruntime.

    `one_user`: the graph for batches of exactly one user (U fixed at 1; `example` and `check` must
    have one user). Returns the max abs difference of the probabilities on `check`; raises
    ExportError above ONNX_ATOL.
    """
    import onnxruntime as ort

    wrapper = BatchInputs(model).eval()
    users, rows = torch.export.Dim("users"), torch.export.Dim("rows")
    user_dims = None if one_user else {0: users}  # one user: the user inputs keep their static first dim of 1
    dynamic = tuple(user_dims if n in USER_FIELDS else {0: rows} for n in MODEL_INPUTS)  # for forward's *inputs
    log = io.StringIO()  # the exporter is chatty; keep its output for the error message only
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                _quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, tuple(getattr(example, n) for n in MODEL_INPUTS), str(path), dynamo=True,
                input_names=list(MODEL_INPUTS), output_names=["probabilities"], dynamic_shapes=(dynamic,),
                external_data=False, verbose=False,
            )
    except Exception as e:  # the exporter raises many types; all mean the same here
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}\n{log.getvalue()[-2000:]}") from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: getattr(check, n).numpy() for n in MODEL_INPUTS})[0]
    diff = float(np.abs(got - probabilities(model, check).numpy()).max())
    if not diff <= ONNX_ATOL:
        raise ExportError(f"ONNX output differs from torch by {diff:.3g} (> {ONNX_ATOL}); export refused")
    return diff
