"""The Adapter contract: what tpunlearn needs to know about one model family.

The core (targets, scoring, graph, plan, api) never imports a model library. An adapter
joins a family (timm, torchvision segmentation, ultralytics) to the core: it builds or
loads the model, names its classes, makes the Target for a class, lists the layers that
must never lose output channels, and evaluates and saves the model in the family's format.

Every model is built the same way (after timm's ``build_model_with_cfg``), by
:meth:`Adapter.build`: resolve the arch -> read the checkpoint (through safeload) ->
reconcile the arguments with it -> construct -> replay the pruning history -> load the
state (strict, fp16 -> fp32) -> describe. A family writes only the steps that differ.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from tpunlearn.calibrate import Calibration
from tpunlearn.errors import UsageError, WeightsError
from tpunlearn.evaluate import Evaluation
from tpunlearn.targets import Target


@dataclass
class ModelInfo:
    """What an adapter knows about a built model: enough to score, prune and report on it."""

    arch: str
    family: str
    task: str  # "multilabel" | "multiclass" | "segmentation" | "detection"
    class_names: list[str]
    input_size: tuple[int, int, int]  # (C, H, W)
    weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "family": self.family,
            "task": self.task,
            "class_names": list(self.class_names),
            "input_size": list(self.input_size),
            "weights": self.weights,
            **self.extra,
        }


class ZooSpec(Protocol):
    """A named, trained configuration of an architecture (a :class:`tpunlearn.zoo.ZooEntry`).

    Adapters never import the zoo; the zoo hands them its entry, and a checkpoint built
    for that entry must match it.
    """

    name: str
    arch: str
    kwargs: Mapping[str, Any]
    class_names: Sequence[str]
    input_size: tuple[int, int, int]
    task: str
    data: str


@dataclass
class BuildState:
    """What :meth:`Adapter.build` knows at each step; a family's steps fill it in."""

    arch: str  # the name the caller gave (a zoo name when built for the zoo)
    weights: Path | None
    options: dict[str, Any]  # the caller's explicit options (None values dropped)
    zoo: ZooSpec | None = None
    builder: str = ""  # the family's own architecture name (timm name, torchvision builder, YAML)
    checkpoint: Any = None  # the file as read, before reconciling
    kwargs: dict[str, Any] = field(default_factory=dict)  # what construct() passes to the family's builder
    history: list[list[Any]] = field(default_factory=list)  # torch-pruning history to replay before loading
    state: dict[str, torch.Tensor] | None = None  # the state dict to load
    class_names: list[str] | None = None
    input_size: tuple[int, int, int] | None = None
    task: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # goes to ModelInfo.extra

    def size(self) -> tuple[int, int, int]:
        """The ``(C, H, W)`` input size, once a step has set it."""
        if self.input_size is None:
            raise UsageError(f"{self.arch}: no input size known; pass imgsz")
        return self.input_size


def as_size(value: Any) -> tuple[int, int, int] | None:
    """A recorded ``(C, H, W)`` input size as a tuple of ints (None when not recorded)."""
    if not value:
        return None
    c, h, w = (int(v) for v in value)
    return (c, h, w)


class Adapter(ABC):
    """One model family. Subclasses are registered by name in :mod:`tpunlearn.adapters.registry`."""

    name: str = ""
    library: str = ""  # the model library whose version goes in reports
    # unlearn() settings that suit this family better than the library's own defaults; the CLI
    # uses them where the user gives none (say why in the adapter, with the measurement)
    defaults: dict[str, Any] = {}
    metric_name: str = "recall"  # the primary per-target metric of its Evaluation
    # ``--auto``'s search space for this family, ``{"sigmas": (...), "deltas": (...)}``, smallest first;
    # a key left out means tpunlearn.auto's own (SIGMAS, DELTAS)
    auto_space: dict[str, tuple[Any, ...]] = {}

    @abstractmethod
    def handles(self, arch: str) -> bool:
        """True when this family can build ``arch``."""

    # ---- building: one fixed sequence, the steps below ---------------------------------------
    def build(self, arch: str, weights: str | Path | None = None, *, trust_checkpoint: bool = False,
              zoo: ZooSpec | None = None, **options: Any) -> tuple[nn.Module, ModelInfo]:
        """Build ``arch`` (randomly initialised when ``weights`` is None) and describe it.

        ``zoo`` is the zoo entry the model is built for (its checkpoint must match it).
        ``options`` are the family's build options (``num_classes``, ``imgsz``, ...);
        ``trust_checkpoint`` loads a file off safeload's allow-list with full unpickling.
        """
        state = BuildState(arch=str(arch), weights=Path(weights) if weights is not None else None,
                           options={k: v for k, v in options.items() if v is not None}, zoo=zoo)
        self.resolve(state)
        if state.weights is not None:
            state.checkpoint = self.read(state.weights, trust_checkpoint)
        self.reconcile(state)
        model = self.construct(state)
        if state.history:
            replay_history(model, state.history, self.trace_inputs(state), self.output_transform,
                           state.weights, state.builder or state.arch)
        if state.state is not None:
            load_state(model, state.state, state.weights, state.builder or state.arch, self.load_hint)
        model.eval()
        return model, self.describe(model, state)

    @abstractmethod
    def resolve(self, state: BuildState) -> None:
        """Step 1: the family's architecture name (``state.builder``); unknown archs and options raise."""

    def read(self, path: Path, trust: bool) -> Any:
        """Step 2: the checkpoint at ``path``, read through :mod:`tpunlearn.safeload`."""
        return read_checkpoint(path, trust)

    @abstractmethod
    def reconcile(self, state: BuildState) -> None:
        """Step 3: merge the options with the checkpoint (a contradiction is a WeightsError) into
        ``state.kwargs``, ``history``, ``state``, names, input size and task."""

    @abstractmethod
    def construct(self, state: BuildState) -> nn.Module:
        """Step 4: the (unpruned, unloaded) module, from ``state.kwargs``."""

    def trace_inputs(self, state: BuildState) -> torch.Tensor:
        """An input to trace the dependency graph with when replaying a pruning history."""
        size = state.input_size or (3, 64, 64)
        return torch.rand(1, *size)

    load_hint: str = ""  # appended to a state dict's size-mismatch error (what usually causes it here)

    @abstractmethod
    def describe(self, model: nn.Module, state: BuildState) -> ModelInfo:
        """Step 7: the :class:`ModelInfo` of the built model."""

    # ---- what the core needs -----------------------------------------------------------------
    @abstractmethod
    def target(self, info: ModelInfo, index: int) -> Target:
        """The Target callable ``Y_t`` for class ``index``."""

    @abstractmethod
    def ignored_layers(self, model: nn.Module, info: ModelInfo) -> list[nn.Module]:
        """Layers whose output channels must never be removed (heads)."""

    def target_factory(self, info: ModelInfo) -> Callable[[int], Target]:
        """A callable from class index to Target, as :func:`tpunlearn.unlearn` takes."""
        return lambda index: self.target(info, index)

    def example_inputs(self, info: ModelInfo, batch: int = 1) -> torch.Tensor:
        """A random input of the model's size, for tracing and export."""
        return torch.rand(batch, *info.input_size)

    def output_transform(self, output: Any) -> torch.Tensor:
        """Reduce a model output to one tensor for tracing (identity for plain tensors)."""
        return output

    def unlearn_kwargs(self, model: nn.Module, info: ModelInfo, example_inputs: Any = None) -> dict[str, Any]:
        """What ``tu.unlearn`` needs to know of this family, as ``prune`` passes it: the target factory, an
        example input (``example_inputs``, else a new :meth:`example_inputs`), the ignored output layers,
        the output transform and the number of targets."""
        example = self.example_inputs(info) if example_inputs is None else example_inputs
        return dict(target=self.target_factory(info), example_inputs=example,
                    ignored_layers=self.ignored_layers(model, info), output_transform=self.output_transform,
                    num_targets=len(info.class_names))

    @abstractmethod
    def samples(self, model: nn.Module, info: ModelInfo, spec: str | None,
                batch_size: int = 32) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``(images, multi_hot)`` for scoring, read from a data spec."""

    @abstractmethod
    def evaluate(self, model: nn.Module, info: ModelInfo, spec: str | None, **kw: Any) -> Evaluation:
        """Per-target metrics on held-out data (an :class:`~tpunlearn.evaluate.Evaluation` keyed by
        class name). Detectors take ``conf``, the deployment confidence."""

    def validate(self, model: nn.Module, info: ModelInfo, spec: str | None, **kw: Any) -> Evaluation:
        """Per-target metrics on a validation split, for choosing settings (``--auto``).

        Families whose data has a validation split distinct from the test split that
        :meth:`evaluate` reports on override this; the default evaluates.
        """
        return self.evaluate(model, info, spec, **kw)

    @abstractmethod
    def save(self, model: nn.Module, info: ModelInfo, path: str | Path) -> None:
        """Save in the family's own format (atomically)."""

    def onnx_metadata(self, model: nn.Module, info: ModelInfo) -> dict[str, Any]:
        """What an ONNX export of ``model`` carries in its metadata (the family's runtime reads it back)."""
        return {"description": f"{info.arch} exported by tpunlearn", "names": dict(enumerate(info.class_names))}

    # ---- calibration (optional; tpunlearn.calibrate) -------------------------------------------
    calibrates: bool = False  # whether prune calibrates by default (--calibrate / --no-calibrate choose)

    def calibration(self, model: nn.Module, info: ModelInfo) -> Calibration | None:
        """The output layers whose channel ``i`` is target ``i``'s score, for :mod:`tpunlearn.calibrate`
        (None: this family cannot calibrate)."""
        return None

    # ---- repair fine-tune (optional; families without it refuse --repair-epochs) -------------
    def repair_data(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int],
                    batch_size: int = 32) -> Iterable[Any]:
        """Re-iterable training batches that hold none of the ``forget`` targets."""
        raise UsageError(f"the {self.name} adapter has no repair fine-tune yet; drop --repair-epochs")

    def mia_data(self, model: nn.Module, info: ModelInfo, spec: str | None,
                 forget: Sequence[int]) -> tuple[Iterable[Any], Iterable[Any], Iterable[Any]]:
        """``(retain_train, test, forget_train)`` batches for :func:`tpunlearn.privacy.mia_score`."""
        raise UsageError(f"--mia is for classifiers; the {self.name} adapter ({info.task}) has no membership check")

    # ---- region probes (optional; segmentation and detection) ------------------------------------
    def probe_layer(self, model: nn.Module, info: ModelInfo) -> str | None:
        """The qualified name of the layer whose feature map the region probes pool
        (:func:`tpunlearn.privacy.region_checks`); None: this family has no region probes."""
        return None

    def region_batches(self, model: nn.Module, info: ModelInfo, spec: str | None) -> Iterable[Any] | None:
        """Re-iterable ``(images, regions)`` training batches for the region probes: per image a list
        of ``(class, region)``, the region a bool mask (any resolution) or a box ``(4,)`` xyxy in
        [0, 1] of the input; None: this family has none."""
        return None

    def repair_loss(self, info: ModelInfo, forget: Sequence[int] = (),
                    original: nn.Module | None = None) -> Callable[[Any, Any], torch.Tensor]:
        """``loss(model_output, batch)`` for :func:`tpunlearn.repair.repair`, the family's training loss
        on retained targets (``original``, when given, is the unpruned model to distil from)."""
        raise UsageError(f"the {self.name} adapter has no repair fine-tune yet; drop --repair-epochs")

    repair_lr: float = 1e-4  # the learning rate --repair-lr defaults to for this family

    def repair(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int], *,
               original: nn.Module | None = None, epochs: int = 1, lr: float = 1e-4, plan: Any = None,
               seed: int = 0, progress: bool = True) -> dict[str, Any]:
        """Fine-tune the pruned ``model`` in place on the retained targets of ``spec``'s training data;
        return a summary (epochs, steps, losses, what was optimised).

        The one repair entry point of every family (``prune --repair-epochs``, :func:`tpunlearn.api.repair`).
        The default runs :func:`tpunlearn.repair.repair` over :meth:`repair_data` with :meth:`repair_loss`;
        a family whose own trainer serves better (ultralytics for yolov5) overrides it, and must keep the
        pruned module (never rebuild it from a config) and keep mask-mode channels zero (``plan``).
        """
        from tpunlearn.repair import repair

        return repair(model, self.repair_data(model, info, spec, forget),
                      self.repair_loss(info, forget=forget, original=original),
                      epochs=epochs, lr=lr, plan=plan, seed=seed, progress=progress)

    # ---- erase stage (optional; tpunlearn.erase; families without it refuse --erase) ---------
    erases: bool = False  # whether this family has an erase stage

    def erase_methods(self) -> tuple[str, ...]:
        """The erase methods this family runs (``--erase METHOD``): every :data:`tpunlearn.erase.METHODS`
        entry for a family with the stage, none without; a family that cannot run some narrows it."""
        if not self.erases:
            return ()
        from tpunlearn.erase import METHODS

        return tuple(METHODS)

    def erase(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int], *,
              original: nn.Module, method: str | None = None, plan: Any = None, seed: int = 0,
              progress: bool = True) -> dict[str, Any]:
        """Erase what is left of ``forget`` from the pruned ``model`` in place, after pruning
        (:mod:`tpunlearn.erase`; ``method`` None: its default), on ``spec``'s training data; return
        what changed (method, steps, weights touched, seconds). ``original`` is the unpruned model (never
        changed); ``plan``'s zeroed channels stay zero.

        The default refuses: the families that override it (timm classifiers, DeepLab segmenters, yolov5
        detectors: see :meth:`erase_methods`) have an erase stage.
        """
        raise UsageError(f"the {self.name} adapter has no erase stage; drop --erase")


# ---- the shared steps ------------------------------------------------------------------------
def read_checkpoint(path: Path, trust: bool = False, unsafe_load: Callable[[Path], Any] | None = None,
                    missing_hint: str = "") -> Any:
    """A checkpoint loaded safely; a missing, unreadable or unsafe file is a :class:`WeightsError`."""
    from tpunlearn.safeload import load_checkpoint

    if missing_hint and not path.exists():
        raise WeightsError(f"weights file not found: {path} ({missing_hint})")
    return load_checkpoint(path, trust=trust, unsafe_load=unsafe_load)


def replay_history(model: nn.Module, history: Sequence[Sequence[Any]], example_inputs: torch.Tensor,
                   output_transform: Callable[[Any], Any] | None, path: Path | None, arch: str) -> None:
    """Redo a saved torch-pruning history on a freshly built ``model`` (in place), before its weights load."""
    from tpunlearn.plan import build_dependency_graph

    try:
        dg = build_dependency_graph(model, example_inputs, output_transform)
        dg.load_pruning_history([list(h) for h in history])
    except Exception as exc:  # noqa: BLE001 - torch-pruning raises anything on a history that does not fit
        raise WeightsError(f"{path}: its pruning history does not fit {arch} ({first_problem(exc)})") from None


def load_state(model: nn.Module, state: Any, path: Path | None, arch: str, hint: str = "") -> None:
    """Load ``state`` strictly, floating-point tensors as float32 (zoo checkpoints are fp16)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict")
    try:
        model.load_state_dict({k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()})
    except RuntimeError as exc:
        extra = hint if hint and "size mismatch" in str(exc) else ""
        raise WeightsError(f"{path} does not fit {arch} (weights of another architecture or size?): "
                           f"{first_problem(exc)}{extra}") from None


def first_problem(exc: BaseException) -> str:
    """The first informative line of an error (``load_state_dict``'s first line is a header)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith("Error(s) in loading")),
                  lines[0] if lines else type(exc).__name__)
    return detail if len(detail) <= 160 else detail[:157] + "..."


def check_stored(stored: Mapping[str, Any], explicit: Mapping[str, Any], path: Path | None, what: str) -> None:
    """Explicit build options must agree with what a checkpoint records (else a :class:`WeightsError`)."""
    clash = {k: v for k, v in explicit.items() if k in stored and stored[k] != v}
    if clash:
        raise WeightsError(f"{path} holds a {what} built with {dict(stored)}, which contradicts {clash}")


def describe_foreign(path: Path | None, ckpt: Any, family: str, arch: str) -> WeightsError:
    """The error for a checkpoint of another family (another tpunlearn format, another library's model)."""
    from tpunlearn.safeload import describe_checkpoint

    return WeightsError(f"{path} is {describe_checkpoint(ckpt)}, not weights for the {family} model {arch}; "
                        "pass the --arch it was made for")


def pruning_history(history: Iterable[Sequence[Any]] | None) -> list[list[Any]]:
    """A pruning history as plain JSON-able lists ``[module name, out?, [indices]]``."""
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in history or []]
