"""ultralytics YOLOv5 family: ``yolov5{n,s,m,l,x}`` (the anchor-free ``yolov5*u`` models).

Architecture from ultralytics' bundled ``yolov5.yaml`` (scale letter from the name, as
``YOLO("yolov5s.yaml")`` does), weights from an ultralytics checkpoint (``yolov5su.pt``
style, or a pruned model this adapter saved). The returned module is the ultralytics
``DetectionModel`` itself.

* Names. ``yolov5s`` means the pretrained ``yolov5su.pt`` (as ``YOLO("yolov5s")``): a local
  file (cwd or ultralytics' ``weights_dir``) is used, a download is left to ultralytics only
  when it is online, and offline a one-line :class:`WeightsError` says to pass ``--weights``.
  ``yolov5s.yaml`` (or ``pretrained=False``) is the randomly initialised architecture.
* Detect head. ``ignored_layers`` is the whole ``Detect`` module (``model.model[-1]``): no
  group may remove its output channels (class logits, box distributions, the fixed DFL
  conv), and its attributes (``nc``, ``no``, ``reg_max``) never change. Groups of the neck
  still shrink the head convs' *inputs*, which is fine.
* Output. In eval mode ``Detect`` returns ``(y, raw)`` (``y`` alone in export mode) with
  ``y`` the decoded ``(B, 4 + nc, A)`` tensor; :meth:`output_transform` returns ``y``. The
  box half of ``y`` runs through the DFL (a view to ``(B, 4, reg_max, A)``, a softmax and a
  fixed 1x1 conv) and a concat over anchors: every node on that path lies inside the
  ignored head, so tracing it couples no channel of a prunable layer (the tests check the
  groups and the mask-mode parity).
* Saving writes ultralytics' own checkpoint layout (``{"model": half module, "train_args":
  ..., "date", "version", ...}``), holding only torch and ultralytics classes, so
  ``ultralytics.YOLO(path)`` predicts, validates and exports it. ``nc`` and ``names`` are
  kept: a forgotten class keeps its output, it just stops firing.
* Zoo and data. ``digitscenes-yolov5`` (a :mod:`tpunlearn.zoo` entry of family ``yolov5``)
  loads the bundled checkpoint. ``--data digits`` (``digits:N`` for N scenes), the default
  for that model and for any checkpoint whose ``train_args`` say ``data: digits``, writes
  DigitScenes once as a YOLO dataset at the model's input size into a cache folder
  (:func:`digits_yaml`): scoring reads its train split, evaluation its test split.
* Checkpoints load through :mod:`tpunlearn.safeload`: ``weights_only`` first, then an
  allow-list of torch and ultralytics model classes that a checkpoint may fill but never
  call (``DetectionModel(cfg)`` evaluates strings from its ``cfg``). A file that names
  anything else is refused unless trusted (``--trust-checkpoint``); a trusted one is
  unpickled the way ``YOLO(path)`` does, but missing modules are never auto-installed.
"""
from __future__ import annotations

import contextlib
import copy
import os
import re
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from tpunlearn.errors import DataError, UsageError, WeightsError
from tpunlearn.targets import DetectionScore, Target

from .base import Adapter, BuildState, ModelInfo
from .registry import register

_NAME = re.compile(r"^yolov5([nsmlx])(u)?(\.pt|\.ya?ml)?$", re.IGNORECASE)
_DEFAULT_IMGSZ = 640
_PSEUDO_CONF = 0.25  # a class counts as present in an unlabelled image when a box passes this after NMS
_PSEUDO_IOU = 0.7
DIGITS = "digits"  # the data spec of DigitScenes (``"digits:N"``: N scenes)
DIGITS_SCENES = {"train": 512, "test": 1000}  # default scene counts: scoring reads train, evaluation test
DIGITS_SEED = 0


@register
class YOLOv5Adapter(Adapter):
    name = "yolov5"
    library = "ultralytics"
    metric_name = "ap50"
    # On digitscenes-yolov5 the library defaults (sigma 4, delta 0.05, tolerance 0) leave every
    # digit's AP50 unchanged: a detector's neck channels serve every class. These settings took
    # every digit to AP50 0 with retained mAP50 within 2.5 points
    # (benchmarks/bench_forget_yolov5.py, results/forget_yolov5.md). Width alignment is off: topping
    # the head's narrow convs up to multiples of 8 cost other digits up to 10 points of AP50.
    defaults = {"sigma": 12, "delta": 0.2, "retain_tolerance": 5, "align": 1}

    # ---- building ------------------------------------------------------------------------
    def handles(self, arch: str) -> bool:
        from tpunlearn import zoo

        arch = str(arch)
        if arch in zoo.ZOO:
            return zoo.entry(arch).family == self.name
        if _NAME.match(Path(arch).name) and (Path(arch).name == arch or Path(arch).exists()):
            return True
        path = Path(arch)
        if path.suffix.lower() == ".pt" and path.is_file():
            return _is_ultralytics_detection_pt(path)
        if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
            return _is_detection_yaml(path)
        return False

    # transitional: this family still overrides build() whole; the template's steps are unused
    def resolve(self, state: BuildState) -> None:
        raise NotImplementedError

    def reconcile(self, state: BuildState) -> None:
        raise NotImplementedError

    def construct(self, state: BuildState) -> nn.Module:
        raise NotImplementedError

    def describe(self, model: nn.Module, state: BuildState) -> ModelInfo:
        raise NotImplementedError

    def build(self, arch: str, weights: str | Path | None = None, nc: int | None = None,
              imgsz: int | None = None, names: Sequence[str] | dict[int, str] | None = None,
              pretrained: bool | None = None, trust_checkpoint: bool = False, zoo: Any = None,
              **kwargs: Any) -> tuple[nn.Module, ModelInfo]:
        """A YOLOv5 ``DetectionModel``: from a checkpoint, or randomly initialised from its YAML.

        ``arch``: ``yolov5{n,s,m,l,x}[u]`` (pretrained ``yolov5{scale}u.pt``, or random with
        ``pretrained=False``), ``yolov5s.yaml`` or any detection model YAML (random), or an
        ultralytics ``.pt`` file. ``weights`` (a checkpoint path) always wins. ``nc`` and
        ``names`` set the classes of a random model and must agree with a checkpoint's.
        ``imgsz`` is the square input side (default: the checkpoint's training size, else 640).
        A zoo name (``digitscenes-yolov5``) loads the bundled checkpoint, or ``weights`` (a
        pruned copy of it); its default data is ``"digits"``. Checkpoints load through
        :func:`tpunlearn.safeload.load_checkpoint`; ``trust_checkpoint`` loads one off its
        allow-list with full unpickling.
        """
        if zoo is not None:  # transitional: the old zoo-name path, until this adapter uses the template
            arch = zoo.name

        from tpunlearn import zoo

        if kwargs:
            raise UsageError(f"unknown option(s) for the yolov5 adapter: {', '.join(sorted(kwargs))}")
        arch = str(arch)
        zoo_entry = zoo.entry(arch) if arch in zoo.ZOO else None
        if zoo_entry is not None:
            if zoo_entry.family != self.name:
                raise UsageError(f"zoo model {arch!r} is a {zoo_entry.family} model, not a yolov5 one")
            if pretrained is False:
                raise UsageError(f"zoo model {arch!r} is a trained model; for a random one use --arch {zoo_entry.arch}")
            if weights is None:
                weights = zoo.weights_path(arch)
                if not weights.is_file():
                    raise WeightsError(f"weights for zoo model {arch!r} not found at {weights}; "
                                       f"run `python scripts/train_zoo.py {arch}`")
        meta: dict[str, Any] = {}
        source = self._source(arch, weights, pretrained)
        if source[0] == "yaml":
            if nc is None and names is not None:
                nc = len(names)
            model = _from_yaml(source[1], nc)
            if names is not None:
                model.names = _names_dict(names, _head(model).nc)
            weights_path = None
        else:
            model = _load_checkpoint(Path(source[1]), meta, trust_checkpoint)
            head = _head(model)
            if nc is not None and int(nc) != head.nc:
                raise WeightsError(f"{source[1]} holds a model with {head.nc} classes, not nc={nc}")
            if names is not None and _names_dict(names, head.nc) != _names_dict(model.names, head.nc):
                raise WeightsError(f"{source[1]} names its classes {_names_list(model.names, head.nc)[:5]}..., "
                                   "which contradicts names=")
            weights_path = str(source[1])
        head = _head(model)
        if getattr(head, "end2end", False):
            raise UsageError(f"{arch}: end-to-end (NMS-free) detection heads are not supported; use a YOLOv5 model")
        model.names = _names_dict(model.names, head.nc)
        for name, p in model.named_parameters():
            # ultralytics loads checkpoints frozen; the DFL conv is a fixed integral and stays frozen
            p.requires_grad_(".dfl." not in f".{name}")
        model.eval()
        size = int(imgsz or _ckpt_imgsz(model) or _DEFAULT_IMGSZ)
        if size % 32:
            raise UsageError(f"imgsz must be a multiple of 32 (the model's largest stride), got {size}")
        yaml_file = (getattr(model, "yaml", None) or {}).get("yaml_file")
        extra: dict[str, Any] = {"yaml": str(yaml_file) if yaml_file else None,
                                 "scale": (getattr(model, "yaml", None) or {}).get("scale"),
                                 "nc": int(head.nc)}
        if zoo_entry is not None:
            _check_zoo_model(model, zoo_entry, str(weights))
            extra.update(zoo=arch, data=zoo_entry.data, train=dict((meta.get("zoo") or {}).get("train") or {}))
        elif _ckpt_data(model) == DIGITS:  # a model trained (or pruned) from a DigitScenes checkpoint
            extra["data"] = DIGITS
        info = ModelInfo(arch=arch, family=self.name, task="detection",
                         class_names=_names_list(model.names, head.nc), input_size=(3, size, size),
                         weights=weights_path, extra=extra)
        return model, info

    def _source(self, arch: str, weights: str | Path | None, pretrained: bool | None) -> tuple[str, str]:
        """``("yaml", cfg)`` for a random model or ``("pt", path)`` for a checkpoint to load."""
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise WeightsError(f"weights file not found: {path}")
            return "pt", str(path)
        path = Path(arch)
        m = _NAME.match(path.name)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            if path.is_file():
                return "yaml", str(path)
            if m and path.name == arch:  # a bundled architecture name: yolov5s.yaml, yolov5su.yaml
                return "yaml", f"yolov5{m.group(1).lower()}.yaml"
            raise UsageError(f"no such model YAML: {arch}")
        if suffix == ".pt" and path.is_file():
            return "pt", str(path)
        if not m or path.name != arch:
            if suffix == ".pt":
                raise WeightsError(f"weights file not found: {arch}")
            raise UsageError(f"unknown arch {arch!r} for the yolov5 adapter (try yolov5n, yolov5s, yolov5m)")
        scale = m.group(1).lower()
        if pretrained is False:
            return "yaml", f"yolov5{scale}.yaml"
        return "pt", _hub_weights(arch, scale)

    # ---- the core's hooks ----------------------------------------------------------------
    def target(self, info: ModelInfo, index: int) -> Target:
        return DetectionScore(index)

    def ignored_layers(self, model: nn.Module, info: ModelInfo) -> list[nn.Module]:
        """The Detect head's output convs (boxes and classes, per level) and its DFL.

        Their output channels are ``nc`` and ``4 * reg_max``, which ultralytics fixes at
        construction, so no group may remove them. The head's inner 3x3 convs stay
        candidates: on the zoo detector a digit is only forgotten when they can be pruned
        (ignoring the whole head left every digit's AP50 unchanged at any sigma and delta).
        """
        head = _head(model)
        outputs = [branch[-1] for branch in (*head.cv2, *head.cv3)]
        dfl = [head.dfl] if isinstance(getattr(head, "dfl", None), nn.Module) else []
        return [*outputs, *dfl]

    def output_transform(self, output: Any) -> torch.Tensor:
        """The decoded ``(B, 4 + nc, A)`` tensor of an eval-mode output (``(y, raw)`` or ``y``)."""
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return output[0]
        if isinstance(output, dict):
            raise UsageError("the YOLO model returned raw training outputs; put it in eval mode (model.eval())")
        raise TypeError(f"cannot read a (B, 4 + nc, A) tensor from a YOLO output of type {type(output).__name__}")

    # ---- data ----------------------------------------------------------------------------
    def samples(self, model: nn.Module, info: ModelInfo, spec: str | None,
                batch_size: int = 32) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """``(images (B,3,H,W) in [0,1], multi_hot (B,nc))`` batches, letterboxed to ``imgsz``.

        ``spec``: None (the model's own data: ``"digits"`` for DigitScenes models, else
        ultralytics' bundled ``bus.jpg`` and ``zidane.jpg``), ``"digits"`` or ``"digits:N"``
        (DigitScenes' train split, see :func:`digits_yaml`), a dataset YAML (its ``train``
        split, else ``val``; targets from the YOLO txt labels), an image folder or one image
        (targets: the classes the model itself detects above conf 0.25 after NMS).
        """
        nc = len(info.class_names)
        size = int(info.input_size[-1])
        spec = _default_spec(model, info, spec)
        if spec is None:
            return _Batches(_bundled_images(), None, nc, size, batch_size, model)
        digits = _digits_count(spec, "train")
        if digits is not None:
            _check_digits_model(info)
            spec = str(digits_yaml(size, n_train=digits))
        path = Path(spec)
        if path.suffix.lower() in (".yaml", ".yml"):
            data = _dataset(path, split="")
            split = "train" if data.get("train") else "val"
            if int(data["nc"]) > nc:
                raise DataError(f"{spec} has {data['nc']} classes but the model has {nc}")
            images = _list_images(data[split])
            if not images:
                raise DataError(f"no images in the {split} split of {spec}")
            return _Batches(images, _label_paths(images), nc, size, batch_size, model)
        if path.is_dir():
            images = _list_images(str(path))
            if not images:
                raise DataError(f"no images in {spec}; pass a folder of images, a dataset YAML or digits[:N]")
            return _Batches(images, None, nc, size, batch_size, model)
        if path.is_file() and _is_image(path):
            return _Batches([str(path)], None, nc, size, batch_size, model)
        raise DataError(f"cannot read data {spec!r}: give an ultralytics dataset YAML, an image folder, an image "
                        "or digits[:N]")

    def evaluate(self, model: nn.Module, info: ModelInfo, spec: str | None) -> dict[str, float]:
        """Per-class AP50 (keyed by class name) from ultralytics' own validator, plus ``"mAP50"``.

        Runs ``DetectionValidator`` on the ``val`` split of a dataset YAML (``spec``, or the
        ``data`` the checkpoint was trained on) on a copy of the model (the validator fuses
        Conv+BN in place). ``"digits"`` / ``"digits:N"`` (the default for DigitScenes models)
        validates on DigitScenes' *test* split (1000 scenes, or N) at the model's input size.
        Per-class AP is read through ``metrics.box.ap_class_index``; classes with no labelled
        instance in the split are left out (not NaN, not mAP).
        """
        from ultralytics.models.yolo.detect import DetectionValidator

        data = _default_spec(model, info, spec) or _ckpt_data(model)
        digits = _digits_count(data, "test") if data else None
        if digits is not None:
            _check_digits_model(info)
            data = str(digits_yaml(int(info.input_size[-1]), n_test=digits))
        if not data:
            raise UsageError("evaluating a YOLO model needs --data (an ultralytics dataset YAML)")
        if Path(str(data)).suffix.lower() not in (".yaml", ".yml"):
            raise UsageError(f"evaluating a YOLO model needs a dataset YAML with labels, got {data!r}")
        _dataset(Path(str(data)), split="val")  # fail fast, never download
        device = next(model.parameters()).device
        with tempfile.TemporaryDirectory(prefix="tpunlearn-val-") as tmp:
            args = dict(task="detect", mode="val", data=str(data), imgsz=int(info.input_size[-1]), batch=16,
                        conf=0.001, iou=0.7, plots=False, save_json=False, save_txt=False,
                        verbose=False, workers=0, project=tmp, name="val", exist_ok=True, split="val",
                        device="cpu" if device.type == "cpu" else str(device.index or 0))
            validator = DetectionValidator(args=args)
            work = copy.deepcopy(model).float()
            try:
                validator(model=work)
            except (FileNotFoundError, SyntaxError) as exc:
                raise DataError(f"cannot validate on {data}: {_one_line(exc)}") from None
        metrics = validator.metrics
        box = metrics.box
        names = info.class_names
        per_class: dict[int, float] = {int(c): float(box.ap50[i]) for i, c in enumerate(box.ap_class_index)}
        labelled = getattr(metrics, "nt_per_class", None)
        if labelled is not None:  # labelled classes that ap_per_class left out (no stats at all): AP 0
            for c, n in enumerate(labelled):
                if n > 0 and c < len(names):
                    per_class.setdefault(c, 0.0)
        out = {names[c]: per_class[c] for c in sorted(per_class) if c < len(names)}
        out["mAP50"] = float(box.map50)
        return out

    # ---- saving --------------------------------------------------------------------------
    def save(self, model: nn.Module, info: ModelInfo, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Save as an ultralytics checkpoint (``YOLO(path)`` loads, predicts, validates it).

        ``meta`` (plain values only) is stored beside tpunlearn's own record in the
        checkpoint's ``"tpunlearn"`` entry (the zoo trainer keeps its training record there).
        """
        from datetime import datetime

        from ultralytics import __version__ as ul_version
        from ultralytics.cfg import DEFAULT_CFG_DICT

        from tpunlearn import __version__
        from tpunlearn.io import save_torch

        head = _head(model)
        work = copy.deepcopy(model).cpu().float().eval()  # device-neutral: loads on a machine without a GPU
        for m in work.modules():  # runtime hooks are not part of a checkpoint
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
            m._backward_hooks.clear()
        work.names = _names_dict(model.names, head.nc)
        args = getattr(model, "args", None)
        args = dict(args) if isinstance(args, dict) else {}
        train_args = {k: v for k, v in args.items() if k in DEFAULT_CFG_DICT and _plain(v)}
        train_args.update(task="detect", imgsz=int(info.input_size[-1]))
        train_args.setdefault("model", (getattr(model, "yaml", None) or {}).get("yaml_file") or info.arch)
        work.args = train_args
        for p in work.parameters():
            p.requires_grad_(False)
        ckpt = {
            "date": datetime.now().astimezone().isoformat(),
            "version": ul_version,
            "license": "AGPL-3.0 License (https://ultralytics.com/license)",
            "docs": "https://docs.ultralytics.com",
            "epoch": -1,
            "best_fitness": None,
            "model": work.half(),
            "ema": None,
            "updates": None,
            "optimizer": None,
            "train_args": train_args,
            "train_metrics": None,
            "train_results": None,
            "tpunlearn": {**(meta or {}), "version": __version__, "arch": info.arch,
                          "input_size": list(info.input_size), "class_names": list(info.class_names)},
        }
        save_torch(ckpt, path)


# ---------------------------------------------------------------------------------- helpers


def _head(model: nn.Module) -> nn.Module:
    """The Detect head (``model.model[-1]``); anything else is not a YOLO detection model."""
    from ultralytics.nn.modules.head import Detect

    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if head is None or type(head) is not Detect:
        kind = type(head).__name__ if head is not None else type(model).__name__
        raise WeightsError(f"not a YOLO detection model (its last layer is {kind}, not Detect)")
    return head


def _names_dict(names: Any, nc: int) -> dict[int, str]:
    if isinstance(names, dict):
        out = {int(k): str(v) for k, v in names.items()}
    elif isinstance(names, (list, tuple)):
        out = {i: str(n) for i, n in enumerate(names)}
    else:
        out = {}
    if sorted(out) != list(range(nc)):
        if out:
            raise UsageError(f"class names must cover classes 0..{nc - 1}, got {len(out)} name(s)")
        out = {i: str(i) for i in range(nc)}
    return out


def _names_list(names: Any, nc: int) -> list[str]:
    d = _names_dict(names, nc)
    return [d[i] for i in range(nc)]


def _plain(value: Any) -> bool:
    """A value made of builtins only (what a checkpoint's train_args may hold)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


def _ckpt_imgsz(model: nn.Module) -> int | None:
    args = getattr(model, "args", None)
    size = args.get("imgsz") if isinstance(args, dict) else None
    if isinstance(size, (list, tuple)) and size:
        size = max(size)
    return int(size) if isinstance(size, (int, float)) and size else None


def _ckpt_data(model: nn.Module) -> str | None:
    args = getattr(model, "args", None)
    data = args.get("data") if isinstance(args, dict) else None
    return str(data) if data else None


@contextlib.contextmanager
def _no_autoinstall() -> Iterator[None]:
    """Inside the block, ultralytics never pip-installs a module that a checkpoint names."""
    import ultralytics.utils.checks as checks

    saved = checks.AUTOINSTALL
    checks.AUTOINSTALL = False
    try:
        yield
    finally:
        checks.AUTOINSTALL = saved


def _offline() -> bool:
    from ultralytics.utils import ONLINE

    flag = os.environ.get("YOLO_OFFLINE", "").strip().lower()
    return flag in ("1", "true", "yes", "on") or not ONLINE


def _hub_weights(arch: str, scale: str) -> str:
    """Path of the pretrained ``yolov5{scale}u.pt``: local, or downloaded by ultralytics when online."""
    from ultralytics.utils import SETTINGS

    name = f"yolov5{scale}u.pt"
    for candidate in (Path(name), Path(SETTINGS.get("weights_dir", "weights")) / name):
        if candidate.is_file():
            return str(candidate)
    hint = (f"pass --weights PATH (an ultralytics {name}-style checkpoint), or --arch yolov5{scale}.yaml "
            "for a randomly initialised model")
    if _offline():
        raise WeightsError(f"no weights for {arch}: {name} is not on this machine and it is offline; {hint}")
    from ultralytics.utils.downloads import attempt_download_asset

    try:
        path = attempt_download_asset(name)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, FileNotFoundError, HTTP errors
        raise WeightsError(f"could not fetch {name} for {arch} ({_one_line(exc)}); {hint}") from None
    if not Path(path).is_file():
        raise WeightsError(f"could not fetch {name} for {arch}; {hint}")
    return str(path)


def _from_yaml(cfg: str, nc: int | None) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    try:
        d = yaml_model_load(cfg)
    except Exception as exc:  # noqa: BLE001 - missing or malformed YAML
        raise UsageError(f"cannot read model YAML {cfg}: {_one_line(exc)}") from None
    head = (d.get("head") or [[None, None, None]])[-1]
    if not isinstance(head, (list, tuple)) or len(head) < 3 or head[2] != "Detect":
        raise UsageError(f"{cfg} is not a detection model YAML (its head ends in {head[2] if len(head) > 2 else '?'})")
    try:
        with _silence():
            return DetectionModel(d, nc=int(nc) if nc is not None else None, verbose=False)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"cannot build {cfg}: {_one_line(exc)}") from None


@contextlib.contextmanager
def _silence() -> Iterator[None]:
    """Lower ultralytics' log level for a call (it logs 'Overriding model.yaml nc=...')."""
    import logging

    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def _load_checkpoint(path: Path, meta: dict[str, Any] | None = None, trust: bool = False) -> nn.Module:
    """An ultralytics checkpoint's model, FP32, eval mode, as ``ultralytics.nn.tasks.load_checkpoint`` gives it.

    The file loads through :func:`tpunlearn.safeload.load_checkpoint` (torch and ultralytics
    model classes only; a constructor is never called). ``trust`` loads a file off that
    allow-list the way ``YOLO(path)`` does (full unpickling, after a warning), but missing
    modules are never auto-installed. ``meta``, when given, is filled with the checkpoint's
    ``"tpunlearn"`` record (if any).
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import guess_model_task

    from tpunlearn.safeload import describe_checkpoint, load_checkpoint

    ckpt = load_checkpoint(path, trust=trust, unsafe_load=_ultralytics_unsafe_load)
    if isinstance(ckpt, nn.Module):  # torch.save(model), or of a YOLO object (as ultralytics reads it)
        from ultralytics.engine.model import Model

        ckpt = {"model": ckpt.model if isinstance(ckpt, Model) else ckpt}
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if meta is not None and isinstance(ckpt, dict) and isinstance(ckpt.get("tpunlearn"), dict):
        meta.update(ckpt["tpunlearn"])
    if not isinstance(model, nn.Module):
        raise WeightsError(f"{path} holds no ultralytics model (it is {describe_checkpoint(ckpt)}); "
                           "pass the --arch it was made for")
    model = model.float()
    _head(model)  # a detection model, or a one-line WeightsError
    train_args = ckpt.get("train_args") or {}
    if isinstance(train_args, SimpleNamespace):  # older checkpoints keep an IterableSimpleNamespace
        train_args = vars(train_args)
    model.args = {**DEFAULT_CFG_DICT, **(train_args if isinstance(train_args, dict) else {})}
    model.pt_path = str(path)
    model.task = getattr(model, "task", guess_model_task(model))
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = True
        elif isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
    return model.eval()


def _ultralytics_unsafe_load(path: Path) -> Any:
    """Full unpickling as ``YOLO(path)`` does it (only for a trusted checkpoint), never auto-installing."""
    from ultralytics.nn.tasks import torch_safe_load

    try:
        with _silence(), _no_autoinstall():
            ckpt, _ = torch_safe_load(str(path), safe_only=False)
    except Exception as exc:  # noqa: BLE001 - pickle errors of every kind
        raise WeightsError(f"cannot load {path} as an ultralytics checkpoint: {_one_line(exc)}") from None
    return ckpt


def _one_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message, without ultralytics' emoji prefixes."""
    text = str(exc).replace("ERROR ❌️", "").replace("❌", "").strip()
    line = next((l.strip() for l in text.splitlines() if l.strip()), type(exc).__name__)
    return line if len(line) <= 200 else line[:197] + "..."


def _is_ultralytics_detection_pt(path: Path) -> bool:
    """Does this file look like an ultralytics detection checkpoint? (reads the pickle bytes, runs nothing)."""
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if pkl is None:
                return False
            raw = zf.read(pkl)
    except (OSError, zipfile.BadZipFile):
        return False
    return b"ultralytics.nn" in raw and b"DetectionModel" in raw and b"SegmentationModel" not in raw \
        and b"PoseModel" not in raw and b"OBBModel" not in raw


def _is_detection_yaml(path: Path) -> bool:
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except Exception:  # noqa: BLE001 - not YAML
        return False
    if not isinstance(d, dict) or "backbone" not in d or not isinstance(d.get("head"), list) or not d["head"]:
        return False
    last = d["head"][-1]
    return isinstance(last, list) and len(last) >= 3 and last[2] == "Detect"


# ---- data ------------------------------------------------------------------------------------


def _default_spec(model: nn.Module, info: ModelInfo, spec: str | None) -> str | None:
    """``spec``, or the model's own data when it has one that needs no file (``"digits"``)."""
    if spec is not None:
        return str(spec)
    own = info.extra.get("data") or _ckpt_data(model)
    return own if _digits_count(own, "test") is not None else None


def _digits_count(spec: str | None, split: str) -> int | None:
    """Scene count of a ``"digits"`` / ``"digits:N"`` spec for ``split``; None for other specs."""
    from tpunlearn.data import digits_count

    return digits_count(spec, DIGITS_SCENES[split])


def _check_digits_model(info: ModelInfo) -> None:
    from tpunlearn.data import CLASS_NAMES

    if list(info.class_names) != CLASS_NAMES:
        raise UsageError(f"DigitScenes has the 10 classes '0'..'9'; this model has {len(info.class_names)} "
                         f"({', '.join(info.class_names[:4])}...): pass --data PATH to a dataset YAML")


def _check_zoo_model(model: nn.Module, e: Any, path: str) -> None:
    """A zoo checkpoint (or a pruned copy) must hold the zoo entry's architecture and classes."""
    head = _head(model)
    yaml_file = Path(str((getattr(model, "yaml", None) or {}).get("yaml_file") or "")).name
    want = Path(e.arch).name
    if head.nc != len(e.class_names) or _names_list(model.names, head.nc) != list(e.class_names) or \
            (yaml_file and _NAME.match(yaml_file) and _NAME.match(want)
             and _NAME.match(yaml_file).group(1).lower() != _NAME.match(want).group(1).lower()):
        raise WeightsError(f"{path} holds a {yaml_file or '?'} model with {head.nc} classes, not zoo model "
                           f"{e.name} ({e.arch}, classes {', '.join(e.class_names)}); "
                           f"rebuild it with `python scripts/train_zoo.py {e.name}`")


def _cache_root() -> Path:
    """Where generated datasets are kept: ``$TPUNLEARN_CACHE``, else ``$XDG_CACHE_HOME/tpunlearn``
    (``~/.cache/tpunlearn``), else a folder in the system temp dir when that is not writable."""
    env = os.environ.get("TPUNLEARN_CACHE")
    candidates = [Path(env)] if env else []
    candidates.append(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tpunlearn")
    candidates.append(Path(tempfile.gettempdir()) / f"tpunlearn-cache-{os.getuid() if hasattr(os, 'getuid') else 0}")
    for root in candidates:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if os.access(root, os.W_OK):
                return root
        except OSError:
            continue
    raise DataError("no writable cache folder for DigitScenes; set TPUNLEARN_CACHE to one")


def digits_yaml(size: int, n_train: int = 0, n_test: int = 0, seed: int = DIGITS_SEED) -> Path:
    """An ultralytics dataset YAML of DigitScenes at ``size`` pixels, written once and cached.

    The folder (under :func:`_cache_root`, keyed by size, seed and scene counts) holds
    ``images/{train,test}`` and their labels as :func:`tpunlearn.data.write_yolo` writes
    them; its ``data.yaml`` names the train split ``train`` and the *test* split both
    ``val`` and ``test``, so ultralytics' validator (which reads ``val``) scores the test
    scenes. Scene ``i`` of a split depends only on ``(seed, split, i)``, so these are the
    first scenes of the splits that the zoo model was trained and tested on. A split with
    0 scenes is written empty. Written to a temp folder and renamed into place: concurrent
    callers never see half a dataset.
    """
    import shutil

    import yaml

    from tpunlearn.data import CLASS_NAMES, write_yolo

    size, n_train, n_test = int(size), int(n_train), int(n_test)
    root = _cache_root() / f"digitscenes-yolo-{size}px-seed{int(seed)}-train{n_train}-test{n_test}"
    data_file = root / "data.yaml"
    if data_file.is_file():
        return data_file
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write_yolo(tmp, size=size, seed=seed, splits=("train", "test"), n_scenes={"train": n_train, "test": n_test})
        data = {"path": str(root), "train": "images/train", "val": "images/test", "test": "images/test",
                "names": {d: name for d, name in enumerate(CLASS_NAMES)}}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            os.rename(tmp, root)
        except OSError:  # another process wrote it first
            if not data_file.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return data_file


def _dataset(path: Path, split: str) -> dict[str, Any]:
    """ultralytics' own parse of a dataset YAML (paths resolved), never downloading."""
    from ultralytics.data.utils import check_det_dataset

    if not path.is_file():
        raise DataError(f"no such dataset YAML: {path}")
    try:
        with _silence():
            return check_det_dataset(str(path), autodownload=False, split=split)
    except Exception as exc:  # noqa: BLE001 - FileNotFoundError, SyntaxError, TypeError from its checks
        raise DataError(f"cannot read dataset {path}: {_one_line(exc)}") from None


def _is_image(path: Path) -> bool:
    from ultralytics.data.utils import IMG_FORMATS

    return path.suffix.lower().lstrip(".") in IMG_FORMATS


def _list_images(source: str | Sequence[str]) -> list[str]:
    """Image files of a split entry: folder(s), txt list(s) or image path(s), sorted like ultralytics."""
    out: list[str] = []
    for item in [source] if isinstance(source, (str, Path)) else source:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in p.rglob("*") if f.is_file() and _is_image(f))
        elif p.is_file() and p.suffix.lower() == ".txt":
            parent = p.parent
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    f = Path(line)
                    f = f if f.is_absolute() else (parent / line).resolve()
                    if _is_image(f):
                        out.append(str(f))
        elif p.is_file() and _is_image(p):
            out.append(str(p))
    return sorted(set(out))


def _label_paths(images: list[str]) -> list[str]:
    from ultralytics.data.utils import img2label_paths

    return img2label_paths(images)


def _bundled_images() -> list[str]:
    from ultralytics.utils import ASSETS

    files = [ASSETS / "bus.jpg", ASSETS / "zidane.jpg"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"ultralytics' bundled images are missing ({missing[0]}); pass --data")
    return [str(f) for f in files]


def _read_labels(path: str, nc: int) -> torch.Tensor:
    row = torch.zeros(nc)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return row  # an image without a label file holds no object
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            c = int(float(parts[0]))
        except ValueError:
            raise DataError(f"{path}: bad label line {line!r}") from None
        if not 0 <= c < nc:
            raise DataError(f"{path}: class {c} is outside the model's {nc} classes")
        row[c] = 1.0
    return row


def _load_image(path: str, size: int) -> torch.Tensor:
    """An image letterboxed to ``size`` (gray 114 padding), RGB, ``(3, size, size)`` in [0, 1]."""
    import numpy as np

    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.patches import imread

    img = imread(path)
    if img is None:
        raise DataError(f"cannot read image {path}")
    img = LetterBox(new_shape=(size, size), auto=False, stride=32)(image=img)
    img = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
    return torch.from_numpy(img).float() / 255.0


@torch.no_grad()
def _pseudo_labels(model: nn.Module, images: torch.Tensor, nc: int) -> torch.Tensor:
    """Classes the model itself detects in each image (a box above conf 0.25 after NMS)."""
    from ultralytics.utils.nms import non_max_suppression

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = model(images.to(device))
        pred = out[0] if isinstance(out, (tuple, list)) else out
        dets = non_max_suppression(pred, conf_thres=_PSEUDO_CONF, iou_thres=_PSEUDO_IOU, nc=nc)
    finally:
        model.train(was_training)
    multi_hot = torch.zeros(len(images), nc)
    for i, d in enumerate(dets):
        if len(d):
            multi_hot[i, d[:, 5].long().cpu().clamp(0, nc - 1)] = 1.0
    return multi_hot


class _Batches:
    """Re-iterable ``(images, multi_hot)`` batches, read lazily (the scorer stops early)."""

    def __init__(self, images: list[str], labels: list[str] | None, nc: int, size: int, batch_size: int,
                 model: nn.Module) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels, self.nc, self.size = images, labels, nc, size
        self.batch_size, self.model = int(batch_size), model

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.images), self.batch_size):
            files = self.images[start:start + self.batch_size]
            images = torch.stack([_load_image(f, self.size) for f in files])
            if self.labels is not None:
                multi_hot = torch.stack([_read_labels(l, self.nc) for l in self.labels[start:start + self.batch_size]])
            else:
                multi_hot = _pseudo_labels(self.model, images, self.nc)
            yield images, multi_hot
