"""ONNX export with a parity check against onnxruntime."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from tpunlearn.io import atomic_path
from tpunlearn.torchutils import eval_mode, main_tensor, model_device, to_device


def to_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor,
    opset: int = 17,
    output_transform: Callable[[Any], torch.Tensor] | None = None,
    input_name: str = "images",
    output_name: str = "output0",
    dynamic_batch: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> float:
    """Export ``model`` to one ONNX file and return the max abs diff vs torch (onnxruntime).

    Uses the TorchScript exporter (``dynamo=False``), which handles pruned convolutions of any
    width at opset 17 and writes a single file. The model is exported in eval mode; every module's
    training flag is restored afterwards. The file is written atomically. ``metadata`` goes into
    the file's ``metadata_props`` (values as ``str(value)``, as ultralytics' exporter writes them,
    so that its ``AutoBackend`` reads ``names``, ``imgsz`` and ``stride`` back).
    """
    transform = output_transform or main_tensor
    example_inputs = to_device(example_inputs, model_device(model))
    wrapped = _Wrapped(model, transform)
    with eval_mode(model):
        with torch.no_grad():
            reference = transform(model(example_inputs)).float()
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, (example_inputs,), str(tmp), dynamo=False, opset_version=opset,
                input_names=[input_name], output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None,
            )
            if metadata:
                _add_metadata(tmp, metadata)
    return parity(path, example_inputs, reference)


def _add_metadata(path: str | os.PathLike[str], metadata: Mapping[str, Any]) -> None:
    """Write ``metadata`` into the ONNX file's ``metadata_props`` (replacing keys already there)."""
    import onnx

    proto = onnx.load(str(path))
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*keep, *((str(k), str(v)) for k, v in metadata.items())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def parity(path: str | os.PathLike[str], example_inputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs diff between onnxruntime's output for ``example_inputs`` and ``reference``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (out, *_) = session.run(None, {name: example_inputs.detach().cpu().numpy()})
    return float((torch.from_numpy(out) - reference.cpu()).abs().max())


def latency_ms(path: str | os.PathLike[str], example_inputs: torch.Tensor, runs: int = 20, warmup: int = 3) -> float:
    """Median onnxruntime latency (ms) of one forward on ``example_inputs`` (one thread)."""
    return compare_latency([path], example_inputs, runs=runs, warmup=warmup)[0]


def compare_latency(paths: list[str | os.PathLike[str]], example_inputs: torch.Tensor, runs: int = 20,
                    warmup: int = 3) -> list[float]:
    """Median onnxruntime latency (ms) of each model, runs interleaved so load hits all alike.

    Timing one model after the other lets a busy neighbour on the machine favour one of
    them; alternating runs and taking medians makes the ratio between them fair.
    """
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
    feeds = [{s.get_inputs()[0].name: example_inputs.detach().cpu().numpy()} for s in sessions]
    for session, feed in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, (session, feed) in enumerate(zip(sessions, feeds, strict=True)):
            t0 = time.perf_counter()
            session.run(None, feed)
            times[i].append((time.perf_counter() - t0) * 1000)
    return [sorted(t)[len(t) // 2] for t in times]


class _Wrapped(nn.Module):
    """The model with its output reduced to one tensor, so ONNX has a single output."""

    def __init__(self, model: nn.Module, transform: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(self.model(x))
