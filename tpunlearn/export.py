"""ONNX export with a parity check against onnxruntime."""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch
from torch import nn

from tpunlearn.io import atomic_path
from tpunlearn.targets import _as_tensor


def to_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor,
    opset: int = 17,
    output_transform: Callable[[Any], torch.Tensor] | None = None,
    input_name: str = "images",
    output_name: str = "output0",
    dynamic_batch: bool = True,
) -> float:
    """Export ``model`` to one ONNX file and return the max abs diff vs torch (onnxruntime).

    Uses the TorchScript exporter (``dynamo=False``), which handles pruned convolutions of any
    width at opset 17 and writes a single file. The model is exported in eval mode; its
    training flag is restored afterwards. The file is written atomically.
    """
    transform = output_transform or _as_tensor
    wrapped = _Wrapped(model, transform)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = transform(model(example_inputs)).float()
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, (example_inputs,), str(tmp), dynamo=False, opset_version=opset,
                input_names=[input_name], output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None,
            )
    finally:
        model.train(was_training)
    return parity(path, example_inputs, reference)


def parity(path: str | os.PathLike[str], example_inputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs diff between onnxruntime's output for ``example_inputs`` and ``reference``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (out, *_) = session.run(None, {name: example_inputs.detach().cpu().numpy()})
    return float((torch.from_numpy(out) - reference.cpu()).abs().max())


def latency_ms(path: str | os.PathLike[str], example_inputs: torch.Tensor, runs: int = 20, warmup: int = 3) -> float:
    """Median onnxruntime latency (ms) of one forward on ``example_inputs``."""
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example_inputs.detach().cpu().numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]


class _Wrapped(nn.Module):
    """The model with its output reduced to one tensor, so ONNX has a single output."""

    def __init__(self, model: nn.Module, transform: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(self.model(x))
