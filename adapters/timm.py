"""timm family: any ``timm.create_model`` name.

Multi-label (sigmoid) or multi-class (softmax) heads; the classifier returned by
``get_classifier()`` is never pruned. A pruned model saves as the architecture, its
torch-pruning history and the state dict, so it reloads with ``weights_only=True``.

Checkpoints it reads: its own ``tpunlearn-timm/1`` (what :meth:`TimmAdapter.save` writes),
the zoo's ``tpunlearn-zoo/1`` (fp16, with a training record), a plain state dict, a
``{"state_dict": ...}`` dict, timm's own training checkpoints (``state_dict_ema`` preferred, as
timm's loader does, a ``module.`` prefix stripped), or a pickled timm module. A plain state dict's
class count is read from its classifier weight when ``num_classes`` is not given.

Data (``--data``): ``digits`` or a user's ImageFolder root, tags CSV or CelebA folder, read by
:func:`tpunlearn.data.specs.read_classification` with timm's eval transform for the model.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tpunlearn.calibrate import Calibration
from tpunlearn.errors import DataError, UsageError, WeightsError, listed
from tpunlearn.evaluate import Evaluation
from tpunlearn.targets import ClassLogit, Target

from .base import Adapter, BuildState, ModelInfo, as_size, check_stored, describe_foreign, pruning_history
from .registry import register

SAVE_FORMAT = "tpunlearn-timm/1"
ZOO_FORMAT = "tpunlearn-zoo/1"  # the zoo's own checkpoints of timm models (scripts/train_zoo.py)
_FORMATS = (SAVE_FORMAT, ZOO_FORMAT)
_DATA_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode")  # timm's data config, as options too
_DESCRIBING = ("input_size", "imgsz", "task", "class_names", *_DATA_KEYS)  # options that describe, not build
# the zoo trains on [0, 1] images, unnormalised and uncropped (scripts/zoo_glyphs.py's timm transforms)
ZOO_DATA_CONFIG = {"mean": [0.0], "std": [1.0], "interpolation": "bilinear", "crop_pct": 1.0}


@register
class TimmAdapter(Adapter):
    name = "timm"
    library = "timm"
    metric_name = "recall"
    # Measured on both zoo classifiers (benchmarks/results/defaults.md): the library's tolerance 0 forgets
    # DigitScenes digits but no GlyphScenes target (recall 0.41-0.94 after: 23 retained classes share the
    # last channels); 0.1 of the retained targets (1 of 9 digits, 2 of 23 glyphs) forgets every target
    # tried on both, and calibrating the head keeps the worst retained drop at 0.4-1.2 points for 8 of 10
    calibrates = True
    defaults = {"retain_tolerance": 0.1}

    def handles(self, arch: str) -> bool:
        import timm

        return bool(timm.is_model(str(arch).removeprefix("timm/")))

    # ---- building (the template's steps) -------------------------------------------------------
    def resolve(self, state: BuildState) -> None:
        """The timm name; a zoo entry's arch must be one too. Explicit sizes become ``input_size``."""
        import timm

        state.builder = (state.zoo.arch if state.zoo is not None else state.arch).removeprefix("timm/")
        if not timm.is_model(state.builder):
            raise UsageError(f"unknown timm model {state.builder!r}")
        size = state.options.pop("imgsz", None)
        if size is not None and "input_size" not in state.options:
            state.options["input_size"] = _size_from_imgsz(size, int(state.options.get("in_chans", 3)))

    def reconcile(self, state: BuildState) -> None:
        """timm kwargs from the zoo entry or the defaults, then the options, then a tpunlearn checkpoint."""
        explicit = {k: v for k, v in state.options.items() if k not in _DESCRIBING}
        if state.zoo is not None:
            state.kwargs = {**state.zoo.kwargs, **explicit}
            state.extra["data"] = state.zoo.data
        else:
            state.kwargs = {"num_classes": 10, "in_chans": 3, **explicit}
        ckpt = state.checkpoint
        saved = ckpt if isinstance(ckpt, dict) and ckpt.get("format") in _FORMATS else None
        if ckpt is not None and saved is None:
            self._refuse_foreign(state)
        if saved is not None:
            self._reconcile_saved(state, saved, explicit)
        elif ckpt is not None:
            state.state = _state_of(ckpt)
            if state.state is None:
                raise WeightsError(f"{state.weights} holds no state dict")
            if state.zoo is None and "in_chans" not in explicit:
                state.kwargs["in_chans"] = _stem_chans(state.builder, state.kwargs, state.state)
            if state.zoo is None and "num_classes" not in explicit:
                state.kwargs["num_classes"] = _head_classes(state.builder, state.kwargs, state.state)
        state.class_names = state.options.get("class_names") or state.class_names
        state.task = state.options.get("task") or state.task
        state.input_size = as_size(state.options.get("input_size")) or state.input_size
        if state.input_size is not None and saved is None:  # the channels are the model's (a state dict's stem)
            state.input_size = (int(state.kwargs.get("in_chans", 3)), *state.input_size[1:])
        if state.input_size is None and state.zoo is not None:
            state.input_size = as_size(state.zoo.input_size)
        self._reconcile_data_config(state, saved)

    def _reconcile_data_config(self, state: BuildState, saved: dict[str, Any] | None) -> None:
        """The input normalisation the model was trained with: the zoo's ([0, 1]), a tpunlearn
        checkpoint's record, over them the caller's ``mean``/``std``/... (None: timm's pretrained cfg)."""
        config: dict[str, Any] = {}
        if state.zoo is not None or (saved is not None and saved.get("format") == ZOO_FORMAT):
            config.update(ZOO_DATA_CONFIG)
        if saved is not None and isinstance(saved.get("data_config"), dict):
            config.update({k: v for k, v in saved["data_config"].items() if k in _DATA_KEYS})
        config.update({k: state.options[k] for k in _DATA_KEYS if k in state.options})
        state.extra["data_config"] = config or None

    def _reconcile_saved(self, state: BuildState, saved: dict[str, Any], explicit: dict[str, Any]) -> None:
        """A tpunlearn checkpoint describes itself; it must be the named architecture (and zoo entry)."""
        name, stored = state.builder, dict(saved.get("timm_kwargs") or {})
        zoo = state.zoo
        if zoo is not None and (saved.get("timm_name") != zoo.arch or stored != dict(zoo.kwargs)):
            raise WeightsError(f"{state.weights} holds {saved.get('timm_name')} {stored}, not zoo model {zoo.name} "
                               f"({zoo.arch} {dict(zoo.kwargs)}); rebuild it with "
                               f"`python scripts/train_zoo.py {zoo.name}`")
        if saved.get("timm_name") != name:
            raise WeightsError(f"{state.weights} holds a {saved.get('timm_name')}, not a {name}")
        check_stored(stored, explicit, state.weights, name)
        state.kwargs = {**state.kwargs, **stored}
        state.input_size = as_size(saved.get("input_size"))
        state.class_names = saved.get("class_names")
        state.task = saved.get("task")
        if saved.get("format") == SAVE_FORMAT:
            state.history = pruning_history(saved.get("history"))
            if isinstance(saved.get("zoo"), dict):  # a pruned copy of a zoo model says which
                state.extra["zoo"] = dict(saved["zoo"])
        else:
            state.extra["train"] = dict(saved.get("train") or {})
        state.state = saved.get("state_dict")

    def _refuse_foreign(self, state: BuildState) -> None:
        """A checkpoint of another family (another tpunlearn format, an ultralytics model) is a WeightsError."""
        ckpt = state.checkpoint
        if state.zoo is not None:
            from tpunlearn.safeload import describe_checkpoint

            raise WeightsError(f"{state.weights} is {describe_checkpoint(ckpt)}, not a checkpoint of zoo model "
                               f"{state.zoo.name} ({ZOO_FORMAT}, or {SAVE_FORMAT} as `tpunlearn prune` writes it)")
        foreign = isinstance(ckpt, dict) and (isinstance(ckpt.get("format"), str) or any(
            isinstance(ckpt.get(k), nn.Module) for k in ("model", "ema")))
        if foreign or (isinstance(ckpt, nn.Module) and not type(ckpt).__module__.startswith("timm.")):
            raise describe_foreign(state.weights, ckpt, "timm", state.arch)

    def construct(self, state: BuildState) -> nn.Module:
        import timm

        model = timm.create_model(state.builder, pretrained=False, **state.kwargs)
        if state.input_size is None:
            in_ch = int(state.kwargs.get("in_chans", 3))
            cfg: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
            _, h, w = cfg.get("input_size", (3, 224, 224))
            state.input_size = (in_ch, int(h), int(w))
        return model

    def describe(self, model: nn.Module, state: BuildState) -> ModelInfo:
        num = int(state.kwargs.get("num_classes", 10))
        zoo = state.zoo
        names = state.class_names or (list(zoo.class_names) if zoo is not None else [str(i) for i in range(num)])
        outputs = _head_width(model)
        if outputs is not None and len(names) != outputs:
            raise UsageError(f"{len(names)} class names ({listed(names)}) for a model with {outputs} class "
                             "outputs; give one name per output (or --num-classes to match)")
        weights = None if state.weights is None else str(state.weights)
        return ModelInfo(arch=zoo.name if zoo is not None else state.arch, family="timm",
                         task=state.task or (zoo.task if zoo is not None else "multilabel"),
                         class_names=list(names), input_size=state.size(),
                         weights=weights, extra={"timm_name": state.builder, "timm_kwargs": state.kwargs,
                                                 "history": state.history, **state.extra,
                                                 "own_names": bool(state.class_names or zoo),
                                                 "zoo_entry": zoo is not None,
                                                 "own_task": bool(state.task or zoo)})

    # ---- what the core needs -------------------------------------------------------------------
    def target(self, info: ModelInfo, index: int) -> Target:
        return ClassLogit(index, multilabel=info.task == "multilabel")

    def ignored_layers(self, model: nn.Module, info: ModelInfo) -> list[nn.Module]:
        get_classifier = getattr(model, "get_classifier", None)
        head = get_classifier() if callable(get_classifier) else None
        return [head] if isinstance(head, nn.Module) else []

    def samples(self, model: nn.Module, info: ModelInfo, spec: str | None,
                batch_size: int = 32) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        from tpunlearn import data

        spec = _own_data(info, spec)
        if not _is_user_data(spec):
            return data.loader(data.digitscenes("train", size=info.input_size[-1],
                                                n_scenes=_digits(spec, "read")), batch_size=batch_size)
        return data.loader(_read(info, str(spec)).split("train"), batch_size=batch_size)

    def bind_data(self, model: nn.Module, info: ModelInfo, spec: str | None) -> ModelInfo:
        """Class names and task from a user's ``--data`` when the model has none of its own;
        a class count that differs from the head is one line."""
        spec = _own_data(info, spec)
        if not _is_user_data(spec):
            return info
        found = _read(info, str(spec))
        k, n = len(found.class_names), len(info.class_names)
        if k != n:
            raise DataError(f"--data {spec} has {k} classes but the model's head has {n} outputs; "
                            f"pass --num-classes {k} (or data with {n} classes)")
        if not info.extra.get("own_names"):
            info.class_names = list(found.class_names)
        elif list(info.class_names) != list(found.class_names):
            raise DataError(f"--data {spec} names classes {', '.join(found.class_names[:12])}, the model "
                            f"{', '.join(info.class_names[:12])}")
        if not info.extra.get("own_task"):
            info.task = found.task
        info.extra["data_split"] = found.describe()
        info.extra["data_present"] = found.present("train")
        return info

    def calibration(self, model: nn.Module, info: ModelInfo) -> Calibration | None:
        """timm's classifier (``get_classifier()``) when it is a Linear or a 1x1 conv: sigmoid-weighted
        for multi-label models, every image alike for multi-class ones."""
        get = getattr(model, "get_classifier", None)
        head = get() if callable(get) else None
        names = {id(m): n for n, m in model.named_modules()}
        if not isinstance(head, (nn.Linear, nn.Conv2d)) or id(head) not in names:
            return None
        return Calibration(layers=(names[id(head)],), weighting="sigmoid" if info.task == "multilabel" else "uniform")

    def evaluate(self, model: nn.Module, info: ModelInfo, spec: str | None, **kw: Any) -> Evaluation:
        """Per-class recall and precision at the model's decision rule (and AP for multi-label) on
        DigitScenes' test split."""
        return _evaluation(model, info, spec, "test", "evaluate on")

    def validate(self, model: nn.Module, info: ModelInfo, spec: str | None, **kw: Any) -> Evaluation:
        """The same on DigitScenes' validation split (its own scans, not the test split's)."""
        return _evaluation(model, info, spec, "val", "validate on")

    def repair_data(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int],
                    batch_size: int = 32) -> Iterable[Any]:
        """Training samples that hold none of ``forget``, shuffled with a fixed seed."""
        from torch.utils.data import Subset

        from tpunlearn import data

        train = _train_split(info, spec, "repair on")
        keep = (_labels(train)[:, [int(t) for t in forget]].sum(1) == 0).nonzero().flatten().tolist()
        return data.loader(Subset(train, keep), batch_size=batch_size, shuffle=True, seed=0)

    def mia_data(self, model: nn.Module, info: ModelInfo, spec: str | None,
                 forget: Sequence[int]) -> tuple[Iterable[Any], Iterable[Any], Iterable[Any]]:
        """Training samples without / with ``forget`` (members) and the test (or val) split."""
        from torch.utils.data import Subset

        from tpunlearn import data

        train = _train_split(info, spec, "run --mia on")
        holds = _labels(train)[:, [int(t) for t in forget]].sum(1) > 0
        if not holds.any():
            present = info.extra.get("data_present")
            found = f"; classes it holds: {listed(present)}" if present is not None else ""
            raise DataError(f"no training sample of {spec or 'the default data'} holds "
                            f"{', '.join(repr(info.class_names[int(t)]) for t in forget)}{found}")
        test = (_read(info, str(spec)).split("test") if _is_user_data(spec)
                else data.digitscenes("test", size=info.input_size[-1]))
        return (data.loader(Subset(train, (~holds).nonzero().flatten().tolist()), batch_size=128),
                data.loader(test, batch_size=128),
                data.loader(Subset(train, holds.nonzero().flatten().tolist()), batch_size=128))

    def repair_loss(self, info: ModelInfo, forget: Sequence[int] = (),
                    original: nn.Module | None = None) -> Callable[[Any, Any], torch.Tensor]:
        """Binary cross-entropy on the multi-hot labels (multi-label), else cross-entropy."""
        import torch.nn.functional as F

        if info.task == "multilabel":
            return lambda out, batch: F.binary_cross_entropy_with_logits(out, batch[1].to(out.device).float())
        return lambda out, batch: F.cross_entropy(out, batch[1].to(out.device).argmax(1))

    erases = True
    # features, not distill: on the zoo classifier it kept the retained digits (worst drop <= 1.3 points),
    # brought the refitted probe to or below the retrained reference's and matched its entropy attack in
    # all 10 settings, where distill lost 3-6 points and missed both attacks and the probe
    # (benchmarks/results/compare_erase_a.md, compare_erase_b.md)
    erase_default = "features"

    def erase_data(self, model: nn.Module, info: ModelInfo, spec: str | None, batch_size: int = 64) -> Iterable[Any]:
        """Every training sample (with and without the forget targets), shuffled with a fixed seed:
        the erase stage distils the retained targets and relabels the forget ones on the same scenes."""
        from tpunlearn import data

        return data.loader(_train_split(info, spec, "erase on"), batch_size=batch_size, shuffle=True, seed=0)

    def erase(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int], *,
              original: nn.Module, method: str | None = None, plan: Any = None, seed: int = 0,
              progress: bool = True) -> dict[str, Any]:
        """:func:`tpunlearn.erase.erase` on the training split of ``spec`` (the model's own data when None),
        reading the head as the model's task says (multi-label: sigmoid per class; multi-class: softmax)."""
        from tpunlearn.erase import EraseSpec, erase

        guard, _task = _eval_batches(info, spec, "val")  # samples it never trained on: the features guard's
        return erase(model, original, self.erase_data(model, info, spec), forget,
                     spec=EraseSpec(method=method or self.erase_default, guard=guard),
                     task="multilabel" if info.task == "multilabel" else "multiclass", plan=plan, seed=seed,
                     progress=progress)

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
            "data_config": data_config(info),  # the normalisation it was scored and evaluated with
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},  # loads anywhere
        }
        record = info.extra.get("zoo")
        name = record.get("name") if isinstance(record, dict) else (info.arch if info.extra.get("zoo_entry") else None)
        if name:  # tu.load rebuilds it as that zoo model (its data, names and record)
            payload["zoo"] = {"name": str(name), "pruned": bool(payload["history"])}
        save_torch(payload, path)


def _state_of(ckpt: Any) -> Any:
    """The state dict inside a plain checkpoint: itself, timm's training checkpoint's
    ``state_dict_ema`` (timm's loader prefers it) or ``state_dict``, or a pickled module's;
    a ``module.`` prefix (DataParallel / DDP) is stripped."""
    if isinstance(ckpt, nn.Module):  # torch.save(model) of a timm model
        return ckpt.state_dict()
    if not isinstance(ckpt, dict):
        return None
    inner = ckpt.get("state_dict_ema") or ckpt.get("state_dict") or ckpt
    if not isinstance(inner, dict):
        return None
    return {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v
            for k, v in inner.items()}


def _size_from_imgsz(imgsz: int | Sequence[int], channels: int) -> tuple[int, int, int]:
    if isinstance(imgsz, int):
        return (channels, int(imgsz), int(imgsz))
    dims = [int(v) for v in imgsz]
    if len(dims) != 2:
        raise UsageError(f"imgsz must be an int or (H, W), got {imgsz!r}")
    return (channels, dims[0], dims[1])


def _evaluation(model: nn.Module, info: ModelInfo, spec: str | None, split: str, verb: str) -> Evaluation:
    """:func:`tpunlearn.evaluate.classification_evaluation` on ``split`` of the user's data or DigitScenes,
    at the decision rule of the data's task (multi-label: logit > 0; multi-class: argmax)."""
    from tpunlearn.evaluate import classification_evaluation, predict_multilabel

    batches, task = _eval_batches(info, spec, split)
    logits, labels = predict_multilabel(model, batches)
    return classification_evaluation(logits, labels, info.class_names,
                                     "multilabel" if task == "multilabel" else "multiclass")


def _digits(spec: str | None, verb: str) -> int | None:
    """Scene count of a ``digits`` / ``digits:N`` spec (None: the split's own); other specs are refused."""
    from tpunlearn.data import digits_count

    if spec is None:
        return None
    n = digits_count(spec, 0)
    if n is None:
        raise UsageError(f"the timm adapter can only {verb} --data digits (or digits:N) for now, got {spec!r}")
    return n or None


def _own_data(info: ModelInfo, spec: str | None) -> str | None:
    """``spec``, or the zoo model's own generated data (``glyphs``) when none is given; DigitScenes
    stays the default of every other model."""
    own = info.extra.get("data")
    return spec if spec is not None or own in (None, "digits") else str(own)


def _is_user_data(spec: str | None) -> bool:
    """True for a ``--data`` that is not DigitScenes (a path the readers decide on)."""
    from tpunlearn.data import digits_count

    return spec is not None and digits_count(str(spec), 0) is None


_READ: dict[tuple[Any, ...], Any] = {}  # (spec, timm name, input size) -> ClassData: one read per process


def data_config(info: ModelInfo) -> dict[str, Any]:
    """timm's data config for the model (``resolve_data_config``): its recorded input size and
    normalisation (``info.extra["data_config"]``), the rest from the architecture's pretrained cfg;
    a one-channel model's mean and std are the channel mean of a three-channel cfg's."""
    import timm
    from timm.data import resolve_data_config

    name = str(info.extra.get("timm_name", info.arch))
    cfg = timm.models.get_pretrained_cfg(name)
    args = {"input_size": tuple(info.input_size), **(info.extra.get("data_config") or {})}
    config = resolve_data_config(args=args, pretrained_cfg=cfg.to_dict() if cfg is not None else None)
    channels = int(info.input_size[0])
    for key in ("mean", "std"):
        values = [float(v) for v in config[key]]
        if len(values) != channels:
            values = [sum(values) / len(values)] * channels
        config[key] = values
    config["input_size"] = [int(v) for v in config["input_size"]]
    return config


def _transform(info: ModelInfo) -> Any:
    """timm's eval transform for the model's data config; images are read as one channel
    (grayscale) for a one-channel model, else as RGB."""
    from timm.data import create_transform
    from torchvision import transforms

    config = data_config(info)
    timm_transform = create_transform(**{**config, "input_size": tuple(config["input_size"])}, is_training=False)
    if int(info.input_size[0]) == 1:
        return transforms.Compose([transforms.Grayscale(num_output_channels=1), timm_transform])
    return timm_transform


def _read(info: ModelInfo, spec: str) -> Any:
    """The user's data ``spec`` (:func:`tpunlearn.data.specs.read_classification`), read once."""
    from tpunlearn.data.specs import read_classification

    key = (str(spec), info.extra.get("timm_name", info.arch), tuple(info.input_size),
           repr(info.extra.get("data_config")))
    if key not in _READ:
        _READ[key] = read_classification(str(spec), _transform(info), size=info.input_size[-1])
    return _READ[key]


def _labels(dataset: Any) -> torch.Tensor:
    from tpunlearn.data.specs import labels_of

    return labels_of(dataset)


def _train_split(info: ModelInfo, spec: str | None, verb: str) -> Any:
    """The training split: the user's data, or DigitScenes' train scenes."""
    from tpunlearn import data

    spec = _own_data(info, spec)
    if _is_user_data(spec):
        return _read(info, str(spec)).split("train")
    return data.digitscenes("train", size=info.input_size[-1], n_scenes=_digits(spec, verb))


def _eval_batches(info: ModelInfo, spec: str | None, split: str,
                  batch_size: int = 128) -> tuple[Iterable[tuple[torch.Tensor, torch.Tensor]], str]:
    """``(batches of (images, labels), task)`` of ``split`` ("val" or "test"): the user's data
    (test falls back to val) or DigitScenes; labels are one-hot (multi-class) or multi-hot."""
    from tpunlearn import data

    spec = _own_data(info, spec)
    if _is_user_data(spec):
        found = _read(info, str(spec))
        return data.loader(found.split(split), batch_size=batch_size), found.task
    scenes = data.digitscenes(split, size=info.input_size[-1], n_scenes=_digits(spec, f"evaluate ({split}) on"))
    return data.loader(scenes, batch_size=batch_size), info.task


def _head_classes(name: str, kwargs: dict[str, Any], state: Any) -> int:
    """The class count of a plain state dict's classifier (``kwargs``' own when it has none)."""
    import timm

    default = int(kwargs.get("num_classes", 10))
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    for mod_name, module in model.named_modules():
        if module is head and isinstance(state, dict):
            weight = state.get(f"{mod_name}.weight")
            if isinstance(weight, torch.Tensor) and weight.ndim >= 1:
                return int(weight.shape[0])
    return default


def _stem_chans(name: str, kwargs: dict[str, Any], state: Any) -> int:
    """The input channels of a plain state dict's stem (a grayscale model's 1), ``kwargs``' own else:
    the first convolution that reads the image, looked up in the state dict."""
    import timm

    default = int(kwargs.get("in_chans", 3))
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == default and isinstance(state, dict):
            weight = state.get(f"{mod_name}.weight")
            if isinstance(weight, torch.Tensor) and weight.ndim == 4:
                return int(weight.shape[1]) * module.groups
            break
    return default


def _head_width(model: nn.Module) -> int | None:
    """How many class outputs the timm model's classifier has (None: no classifier it can name)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        return int(head.out_features)
    if isinstance(head, nn.Conv2d):
        return int(head.out_channels)
    return None
