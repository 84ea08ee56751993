"""How a scorer runs its model: the backends (eager PyTorch, `torch.compile`, ONNX Runtime) behind one
`Runner`. A new backend is one branch of `runner` and one name in `config.Backend`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unictr.data.batch import MODEL_INPUTS, Batch
from unictr.export.probe import probe_batch
from unictr.model import UnifiedCTR, probabilities
from unictr.optional import require

# An ONNX graph: its file, or its bytes as read and checked by `load_export` (what a verified export serves).
Graph = str | Path | bytes


@dataclass(frozen=True)
class Runner:
    """A backend's forward → probabilities `[N, T]` (float32 numpy), on an encoded request's numpy arrays
    (`EncodedRequest.arrays`) or on a `Batch`; each backend takes one natively and converts the other
    without copying."""

    arrays: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    batch: Callable[[Batch], np.ndarray]


def _source(graph: Graph) -> str | bytes:
    return graph if isinstance(graph, bytes) else str(graph)


def choose_backend(backend: str, onnx_graph: Graph | None, bf16: bool, device: torch.device) -> str:
    """`backend`, with `auto` resolved: onnx when there is a `model.onnx` and neither bf16 nor another
    device is asked for (the fastest path measured in docs/performance.md), else eager."""
    if backend != "auto":
        return backend
    return "onnx" if onnx_graph is not None and not bf16 and device.type == "cpu" else "eager"


def runner(
    model: UnifiedCTR,
    backend: str,
    bf16: bool,
    onnx_graph: Graph | None,
    onnx_one_user_graph: Graph | None,
    device: torch.device,
) -> Runner:
    """The forward of `backend` (eager, compile or onnx; see `choose_backend` for auto)."""
    if backend == "onnx":
        return _onnx_runner(bf16, onnx_graph, onnx_one_user_graph, device)
    net = torch.compile(model.to(device), dynamic=True) if backend == "compile" else model.to(device)

    def forward(b: Batch) -> np.ndarray:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return probabilities(net, b.to(device)).cpu().numpy()

    if backend == "compile":  # compile now, for one user and for several, not on the first requests
        for users, rows in ((1, 3), (3, 7)):
            forward(probe_batch(model.schema, model.schema.surfaces[0], users, rows))
    return Runner(lambda arrays: forward(Batch.from_numpy(arrays)), forward)


def _onnx_runner(
    bf16: bool, onnx_graph: Graph | None, onnx_one_user_graph: Graph | None, device: torch.device
) -> Runner:
    """ONNX Runtime on the export's graph (CPU, fp32); batches of one user run the one-user graph if given."""
    if bf16 or device.type != "cpu":
        raise ValueError("the onnx backend runs in fp32 on the CPU (no bf16, no device)")
    if onnx_graph is None:
        raise ValueError("the onnx backend needs onnx_graph (the export's model.onnx)")
    ort = require("onnxruntime", "onnx", "the onnx backend")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same thread budget as torch's pool
    general = ort.InferenceSession(_source(onnx_graph), options, providers=["CPUExecutionProvider"])
    one_user = general
    if onnx_one_user_graph is not None:
        one_user = ort.InferenceSession(_source(onnx_one_user_graph), options, providers=["CPUExecutionProvider"])

    def run(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        session = one_user if len(arrays["user_cat"]) == 1 else general
        return session.run(None, {n: arrays[n] for n in MODEL_INPUTS})[0]

    return Runner(run, lambda b: run({n: getattr(b, n).numpy() for n in MODEL_INPUTS}))
