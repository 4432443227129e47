"""timm family: any ``timm.create_model`` name, plus the DigitScenes zoo classifiers.

Multi-label (sigmoid) or multi-class (softmax) heads; the classifier returned by
``get_classifier()`` is never pruned. A pruned model saves as the architecture, its
torch-pruning history and the state dict, so it reloads with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from tpunlearn.errors import UsageError, WeightsError
from tpunlearn.targets import ClassLogit, Target

from .base import Adapter, ModelInfo
from .registry import register

SAVE_FORMAT = "tpunlearn-timm/1"


@register
class TimmAdapter(Adapter):
    name = "timm"
    library = "timm"
    metric_name = "recall"

    def handles(self, arch: str) -> bool:
        from tpunlearn import zoo

        if arch in zoo.ZOO:
            return zoo.entry(arch).family == "timm"
        import timm

        return timm.is_model(arch.removeprefix("timm/"))

    def build(self, arch: str, weights: str | Path | None = None, num_classes: int | None = None,
              in_chans: int | None = None, input_size: tuple[int, int, int] | None = None, task: str | None = None,
              class_names: list[str] | None = None, trust_checkpoint: bool = False,
              **kwargs: Any) -> tuple[nn.Module, ModelInfo]:
        """A zoo model by name, or ``timm.create_model(arch)`` randomly initialised or from ``weights``.

        A tpunlearn checkpoint (``tpunlearn-timm/1`` as :meth:`save` writes it, or a zoo
        ``tpunlearn-zoo/1`` file) describes itself: its ``timm_kwargs``, input size, class
        names and task rebuild the architecture, and its pruning history is replayed before
        the weights load, so ``build("resnet18", weights="out/model.pt")`` gives back the
        pruned model. Explicit arguments that contradict the checkpoint raise
        :class:`WeightsError`. Files load through :func:`tpunlearn.safeload.load_checkpoint`
        (``torch.load(weights_only=True)``, then an allow-list of model classes; a plain
        state dict, a ``{"state_dict": ...}`` dict or a pickled timm module all work);
        ``trust_checkpoint`` loads a file off the allow-list with full unpickling.
        """
        from tpunlearn import zoo

        ckpt = _read(Path(weights), trust_checkpoint) if weights is not None else None
        saved = ckpt if isinstance(ckpt, dict) and ckpt.get("format") in (SAVE_FORMAT, zoo.FORMAT) else None
        if ckpt is not None and saved is None:
            _refuse_foreign(Path(weights), ckpt, arch)
        if arch in zoo.ZOO and (saved is None or saved.get("format") == zoo.FORMAT):
            if ckpt is not None and saved is None:
                from tpunlearn.safeload import describe_checkpoint

                raise WeightsError(f"{weights} is {describe_checkpoint(ckpt)}, not a checkpoint of zoo model {arch} "
                                   f"({zoo.FORMAT}, or {SAVE_FORMAT} as `tpunlearn prune` writes it)")
            model, meta = zoo.load(arch) if ckpt is None else zoo.from_checkpoint(arch, Path(weights).resolve(), ckpt)
            info = ModelInfo(arch=arch, family="timm", task=meta["task"], class_names=meta["class_names"],
                             input_size=tuple(meta["input_size"]), weights=meta["weights"],
                             extra={"timm_name": meta["arch"], "timm_kwargs": meta["kwargs"], "data": meta["data"],
                                    "history": []})
            return model, info
        import timm

        explicit = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None}
        explicit.update(kwargs)
        extra: dict[str, Any] = {}
        if arch in zoo.ZOO:  # a zoo name with a pruned checkpoint of that zoo model
            e = zoo.entry(arch)
            name, create_kwargs, extra["data"] = e.arch, {**e.kwargs, **explicit}, e.data
        else:
            name = arch.removeprefix("timm/")
            create_kwargs = {"num_classes": 10, "in_chans": 3, **explicit}
        if saved is not None:
            stored = dict(saved.get("timm_kwargs") or {})
            if saved.get("timm_name") != name:
                raise WeightsError(f"{weights} holds a {saved.get('timm_name')}, not a {name}")
            if arch in zoo.ZOO and stored != zoo.entry(arch).kwargs:
                raise WeightsError(f"{weights} holds a {name} built with {stored}, not zoo model {arch} "
                                   f"({zoo.entry(arch).kwargs})")
            clash = {k: v for k, v in explicit.items() if k in stored and stored[k] != v}
            if clash:
                raise WeightsError(f"{weights} holds a {name} built with {stored}, which contradicts {clash}")
            create_kwargs = {**create_kwargs, **stored}
            input_size = input_size or tuple(saved.get("input_size") or ()) or None
            class_names = class_names or saved.get("class_names")
            task = task or saved.get("task")
        in_ch = int(create_kwargs.get("in_chans", 3))
        num = int(create_kwargs.get("num_classes", 10))
        model = timm.create_model(name, pretrained=False, **create_kwargs)
        size = tuple(input_size or (in_ch, *model.pretrained_cfg.get("input_size", (3, 224, 224))[1:]))
        history: list[Any] = []
        if weights is not None:
            history = _load_weights(model, name, Path(weights), ckpt, size)
        model.eval()
        info = ModelInfo(arch=arch, family="timm", task=task or "multilabel",
                         class_names=list(class_names or [str(i) for i in range(num)]),
                         input_size=size, weights=str(weights) if weights is not None else None,
                         extra={"timm_name": name, "timm_kwargs": create_kwargs, "history": history, **extra})
        return model, info

    def target(self, info: ModelInfo, index: int) -> Target:
        return ClassLogit(index, multilabel=info.task == "multilabel")

    def ignored_layers(self, model: nn.Module, info: ModelInfo) -> list[nn.Module]:
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        return [head] if isinstance(head, nn.Module) else []

    def samples(self, model: nn.Module, info: ModelInfo, spec: str | None,
                batch_size: int = 32) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        from tpunlearn import data

        return data.loader(data.digitscenes("train", size=info.input_size[-1], n_scenes=_digits(spec, "read")),
                           batch_size=batch_size)

    def evaluate(self, model: nn.Module, info: ModelInfo, spec: str | None) -> dict[str, float]:
        """Per-class recall on DigitScenes' test split."""
        return _recall(model, info, spec, "test", "evaluate on")

    def validate(self, model: nn.Module, info: ModelInfo, spec: str | None) -> dict[str, float]:
        """Per-class recall on DigitScenes' validation split (its own scans, not the test split's)."""
        return _recall(model, info, spec, "val", "validate on")

    def repair_data(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int],
                    batch_size: int = 32) -> Iterable[Any]:
        """DigitScenes train scenes that hold none of ``forget``, shuffled with a fixed seed."""
        from torch.utils.data import Subset

        from tpunlearn import data

        scenes = data.digitscenes("train", size=info.input_size[-1], n_scenes=_digits(spec, "repair on"))
        keep = (scenes.multi_hot[:, [int(t) for t in forget]].sum(1) == 0).nonzero().flatten().tolist()
        return data.loader(Subset(scenes, keep), batch_size=batch_size, shuffle=True, seed=0)

    def mia_data(self, model: nn.Module, info: ModelInfo, spec: str | None,
                 forget: Sequence[int]) -> tuple[Iterable[Any], Iterable[Any], Iterable[Any]]:
        """DigitScenes train scenes without / with ``forget`` (members) and the test scenes."""
        from torch.utils.data import Subset

        from tpunlearn import data
        from tpunlearn.errors import DataError

        train = data.digitscenes("train", size=info.input_size[-1], n_scenes=_digits(spec, "run --mia on"))
        holds = train.multi_hot[:, [int(t) for t in forget]].sum(1) > 0
        if not holds.any():
            raise DataError("no training scene holds the forget target(s)")
        test = data.digitscenes("test", size=info.input_size[-1])
        return (data.loader(Subset(train, (~holds).nonzero().flatten().tolist()), batch_size=128),
                data.loader(test, batch_size=128),
                data.loader(Subset(train, holds.nonzero().flatten().tolist()), batch_size=128))

    def repair_loss(self, info: ModelInfo) -> Callable[[Any, Any], torch.Tensor]:
        """Binary cross-entropy on the multi-hot labels (multi-label), else cross-entropy."""
        import torch.nn.functional as F

        if info.task == "multilabel":
            return lambda out, batch: F.binary_cross_entropy_with_logits(out, batch[1].to(out.device).float())
        return lambda out, batch: F.cross_entropy(out, batch[1].to(out.device).argmax(1))

    def save(self, model: nn.Module, info: ModelInfo, path: str | Path) -> None:
        """Save architecture, pruning history and CPU weights (loads with ``weights_only=True``, on any machine)."""
        from tpunlearn.io import save_torch

        payload = {
            "format": SAVE_FORMAT,
            "timm_name": info.extra.get("timm_name", info.arch),
            "timm_kwargs": info.extra.get("timm_kwargs", {}),
            "input_size": list(info.input_size),
            "history": info.extra.get("history", []),
            "class_names": list(info.class_names),
            "task": info.task,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},  # loads anywhere
        }
        save_torch(payload, path)


def _recall(model: nn.Module, info: ModelInfo, spec: str | None, split: str, verb: str) -> dict[str, float]:
    """Per-class recall on a DigitScenes split, keyed by class name."""
    from tpunlearn import data
    from tpunlearn.evaluate import recall_table

    batches = data.loader(data.digitscenes(split, size=info.input_size[-1], n_scenes=_digits(spec, verb)),
                          batch_size=128)
    return recall_table(model, batches, info.class_names)


def _digits(spec: str | None, verb: str) -> int | None:
    """Scene count of a ``digits`` / ``digits:N`` spec (None: the split's own); other specs are refused."""
    from tpunlearn.data import digits_count

    if spec is None:
        return None
    n = digits_count(spec, 0)
    if n is None:
        raise UsageError(f"the timm adapter can only {verb} --data digits (or digits:N) for now, got {spec!r}")
    return n or None


def _read(path: Path, trust: bool = False) -> Any:
    """The checkpoint at ``path``, loaded safely; a missing, unreadable or unsafe file is a WeightsError."""
    from tpunlearn.safeload import load_checkpoint

    return load_checkpoint(path, trust=trust)


def _refuse_foreign(path: Path, ckpt: Any, arch: str) -> None:
    """A checkpoint of another family (another tpunlearn format, an ultralytics model) is a WeightsError."""
    from tpunlearn.safeload import describe_checkpoint

    foreign = isinstance(ckpt, dict) and (isinstance(ckpt.get("format"), str) or any(
        isinstance(ckpt.get(k), nn.Module) for k in ("model", "ema")))
    if isinstance(ckpt, nn.Module) and not type(ckpt).__module__.startswith("timm."):
        foreign = True
    if foreign:
        raise WeightsError(f"{path} is {describe_checkpoint(ckpt)}, not weights for the timm model {arch}; "
                           "pass the --arch it was made for")


def _load_weights(model: nn.Module, name: str, path: Path, ckpt: Any, input_size: tuple[int, ...]) -> list[Any]:
    """Load a read checkpoint into ``model``: a tpunlearn one (replaying its pruning) or a plain state dict."""
    history: list[Any] = []
    if isinstance(ckpt, dict) and ckpt.get("format") == SAVE_FORMAT:
        history = [list(h) for h in ckpt.get("history") or []]
        if history:
            from tpunlearn.plan import build_dependency_graph

            try:
                dg = build_dependency_graph(model, torch.rand(1, *input_size))
                dg.load_pruning_history([list(h) for h in history])
            except Exception as exc:  # noqa: BLE001 - a history that does not fit this model
                raise WeightsError(f"{path}: its pruning history does not fit {name} ({_first_problem(exc)})") from None
        state = ckpt.get("state_dict")
    elif isinstance(ckpt, nn.Module):  # torch.save(model) of a timm model
        state = ckpt.state_dict()
    elif isinstance(ckpt, dict):
        state = ckpt.get("state_dict", ckpt)
    else:
        state = None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict")
    try:
        model.load_state_dict({k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()})
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit {name} (weights of another architecture or size?): "
                           f"{_first_problem(exc)}") from None
    return history


def _first_problem(exc: Exception) -> str:
    """The first informative line of a ``load_state_dict`` error (its first line is a header)."""
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    detail = next((l for l in lines if not l.startswith("Error(s) in loading")), lines[0] if lines else type(exc).__name__)
    return detail if len(detail) <= 160 else detail[:157] + "..."
