"""ultralytics plumbing for the yolov5 family: its checkpoints (find, read, prepare, write) and its validator.

* Reading goes through :mod:`tpunlearn.safeload` (the adapter's ``read`` step); a trusted
  file off its allow-list is unpickled by :func:`unsafe_load` the way ``YOLO(path)`` does,
  but a module it names is never pip-installed (ultralytics' AUTOINSTALL).
* :func:`prepare` makes a loaded ``DetectionModel`` what ``ultralytics.nn.tasks.load_checkpoint``
  returns (FP32, eval mode, ``args`` from the checkpoint's ``train_args``).
* :func:`checkpoint_payload` is ultralytics' own checkpoint layout (``{"model": half module,
  "train_args", "date", "version", ...}``), holding only torch and ultralytics classes, so
  ``ultralytics.YOLO(path)`` predicts, validates and exports what the adapter saves.
* :func:`hub_weights` finds ``yolov5{scale}u.pt`` locally, or lets ultralytics fetch it only
  when online; offline it is a one-line :class:`WeightsError`.
* :func:`validate_ap50` runs ultralytics' own ``DetectionValidator`` on a copy of a model.
* :func:`labels_cache_in_ours`: inside it, ultralytics keeps a dataset's ``labels/<split>.cache``
  under tpunlearn's cache folder instead of beside the user's labels, and re-saves no image in
  place (the user's data is never written).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tpunlearn.data.yolo import cache_root, error_line, quiet
from tpunlearn.errors import DataError, UsageError, WeightsError
from tpunlearn.torchutils import model_device

if TYPE_CHECKING:
    from ultralytics.nn.modules.head import Detect

    from tpunlearn.evaluate import Evaluation

__all__ = ["as_checkpoint", "checkpoint_model", "checkpoint_payload", "coco_names", "default_names", "detect_head",
           "from_yaml", "hub_weights",
           "is_detection_pt", "is_detection_yaml", "labels_cache_in_ours", "names_dict", "names_list", "no_autoinstall",
           "prepare",
           "train_arg", "unsafe_load", "device_arg", "validate_ap50", "evaluate_detection"]


def detect_head(model: nn.Module) -> Detect:
    """The Detect head (``model.model[-1]``); anything else is not a YOLO detection model."""
    from ultralytics.nn.modules.head import Detect

    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if head is None or type(head) is not Detect:
        kind = type(head).__name__ if head is not None else type(model).__name__
        raise WeightsError(f"not a YOLO detection model (its last layer is {kind}, not Detect)")
    return head


def names_dict(names: Any, nc: int) -> dict[int, str]:
    """Class names as ultralytics keeps them (``{index: name}`` for 0..nc-1); none given: the indices."""
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


def names_list(names: Any, nc: int) -> list[str]:
    """Class names in index order (see :func:`names_dict`)."""
    d = names_dict(names, nc)
    return [d[i] for i in range(nc)]


COCO_NC = 80  # the class count of ultralytics' bundled model YAMLs (trained on COCO)


def coco_names() -> dict[int, str]:
    """The 80 COCO class names from ultralytics' bundled ``cfg/datasets/coco.yaml`` (read offline)."""
    from ultralytics.utils import ROOT, YAML

    return {int(k): str(v) for k, v in YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"].items()}


def default_names(nc: int) -> dict[int, str]:
    """Names of a YAML-built model given none: COCO's for 80 classes (the bundled YAMLs' default), else indices."""
    return coco_names() if nc == COCO_NC else names_dict(None, nc)


def train_arg(model: nn.Module, key: str) -> Any:
    """One of a loaded model's training arguments (``model.args``), None when it has none."""
    args = getattr(model, "args", None)
    return args.get(key) if isinstance(args, dict) else None


# ---- reading ---------------------------------------------------------------------------------
@contextlib.contextmanager
def no_autoinstall() -> Iterator[None]:
    """Inside the block, ultralytics never pip-installs a module that a checkpoint names."""
    import ultralytics.utils.checks as checks

    saved = checks.AUTOINSTALL
    checks.AUTOINSTALL = False
    try:
        yield
    finally:
        checks.AUTOINSTALL = saved


def unsafe_load(path: Path) -> Any:
    """Full unpickling as ``YOLO(path)`` does it (only for a trusted checkpoint), never auto-installing."""
    from ultralytics.nn.tasks import torch_safe_load

    try:
        with quiet(), no_autoinstall():
            ckpt, _ = torch_safe_load(str(path), safe_only=False)
    except Exception as exc:  # noqa: BLE001 - pickle errors of every kind
        raise WeightsError(f"cannot load {path} as an ultralytics checkpoint: {error_line(exc)}") from None
    return ckpt


def as_checkpoint(ckpt: Any) -> Any:
    """A pickled module (``torch.save(model)``, or of a YOLO object) as the checkpoint dict that holds it."""
    if isinstance(ckpt, nn.Module):
        from ultralytics.engine.model import Model

        return {"model": ckpt.model if isinstance(ckpt, Model) else ckpt}
    return ckpt


def checkpoint_model(ckpt: Any, path: Path | None) -> nn.Module:
    """The model a checkpoint holds (its EMA when it has one), as pickled; else a WeightsError."""
    from tpunlearn.safeload import describe_checkpoint

    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, nn.Module):
        raise WeightsError(f"{path} holds no ultralytics model (it is {describe_checkpoint(ckpt)}); "
                           "pass the --arch it was made for")
    return model


def prepare(model: nn.Module, ckpt: dict[str, Any], path: Path | None) -> nn.Module:
    """A checkpoint's model as ``ultralytics.nn.tasks.load_checkpoint`` gives it: FP32, eval mode,
    ``args`` (ultralytics' defaults updated with the checkpoint's ``train_args``), task and stride."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import guess_model_task

    model = model.float()
    detect_head(model)
    m: Any = model  # ultralytics gives its models attributes (args, pt_path, task) that nn.Module's types lack
    train_args = ckpt.get("train_args") or {}
    if isinstance(train_args, SimpleNamespace):  # older checkpoints keep an IterableSimpleNamespace
        train_args = vars(train_args)
    m.args = {**DEFAULT_CFG_DICT, **(train_args if isinstance(train_args, dict) else {})}
    m.pt_path = str(path)
    m.task = getattr(model, "task", guess_model_task(model))
    if not hasattr(model, "stride"):
        m.stride = torch.tensor([32.0])
    for layer in m.modules():
        if hasattr(layer, "inplace"):
            layer.inplace = True
        elif isinstance(layer, nn.Upsample) and not hasattr(layer, "recompute_scale_factor"):
            layer.recompute_scale_factor = None
    return model.eval()


def from_yaml(cfg: str, nc: int | None) -> nn.Module:
    """A randomly initialised ``DetectionModel`` of a model YAML (bundled name or path)."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    try:
        d = yaml_model_load(cfg)
    except Exception as exc:  # noqa: BLE001 - missing or malformed YAML
        raise UsageError(f"cannot read model YAML {cfg}: {error_line(exc)}") from None
    head = (d.get("head") or [[None, None, None]])[-1]
    if not isinstance(head, (list, tuple)) or len(head) < 3 or head[2] != "Detect":
        raise UsageError(f"{cfg} is not a detection model YAML (its head ends in {head[2] if len(head) > 2 else '?'})")
    try:
        with quiet():
            return DetectionModel(d, nc=int(nc) if nc is not None else None, verbose=False)
    except Exception as exc:  # noqa: BLE001 - ultralytics' parser raises anything on a bad YAML
        raise UsageError(f"cannot build {cfg}: {error_line(exc)}") from None


# ---- recognising files (reads bytes or YAML, runs nothing) -----------------------------------
def is_detection_pt(path: Path) -> bool:
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


def is_detection_yaml(path: Path) -> bool:
    """Is this a model YAML whose head ends in ``Detect``?"""
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except Exception:  # noqa: BLE001 - not YAML
        return False
    if not isinstance(d, dict) or "backbone" not in d or not isinstance(d.get("head"), list) or not d["head"]:
        return False
    last = d["head"][-1]
    return isinstance(last, list) and len(last) >= 3 and last[2] == "Detect"


# ---- pretrained weights ----------------------------------------------------------------------
def _offline() -> bool:
    from ultralytics.utils import ONLINE

    flag = os.environ.get("YOLO_OFFLINE", "").strip().lower()
    return flag in ("1", "true", "yes", "on") or not ONLINE


def hub_weights(arch: str, scale: str) -> Path:
    """Path of the pretrained ``yolov5{scale}u.pt``: local, or downloaded by ultralytics when online."""
    from ultralytics.utils import SETTINGS

    name = f"yolov5{scale}u.pt"
    for candidate in (Path(name), Path(SETTINGS.get("weights_dir", "weights")) / name):
        if candidate.is_file():
            return candidate
    hint = (f"pass --weights PATH (an ultralytics {name}-style checkpoint), or --arch yolov5{scale}.yaml "
            "for a randomly initialised model")
    if _offline():
        raise WeightsError(f"no weights for {arch}: {name} is not on this machine and it is offline; {hint}")
    from ultralytics.utils.downloads import attempt_download_asset

    try:
        path = attempt_download_asset(name)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, FileNotFoundError, HTTP errors
        raise WeightsError(f"could not fetch {name} for {arch} ({error_line(exc)}); {hint}") from None
    if not Path(path).is_file():
        raise WeightsError(f"could not fetch {name} for {arch}; {hint}")
    return Path(path)


# ---- writing ---------------------------------------------------------------------------------
def _plain(value: Any) -> bool:
    """A value made of builtins only (what a checkpoint's train_args may hold)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


def checkpoint_payload(model: nn.Module, imgsz: int, model_name: str, record: dict[str, Any]) -> dict[str, Any]:
    """ultralytics' checkpoint layout for ``model`` (a half-precision CPU copy without hooks); ``record``
    is tpunlearn's own entry, and ``model_name`` the ``train_args["model"]`` of a model without a YAML."""
    from datetime import datetime

    from ultralytics import __version__ as ul_version
    from ultralytics.cfg import DEFAULT_CFG_DICT

    head = detect_head(model)
    work: Any = copy.deepcopy(model).cpu().float().eval()  # device-neutral: loads on a machine without a GPU
    for m in work.modules():  # runtime hooks are not part of a checkpoint
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        m._backward_hooks.clear()
    work.names = names_dict(getattr(model, "names", None), head.nc)
    args = getattr(model, "args", None)
    args = dict(args) if isinstance(args, dict) else {}
    train_args = {k: v for k, v in args.items() if k in DEFAULT_CFG_DICT and _plain(v)}
    train_args.update(task="detect", imgsz=int(imgsz))
    train_args.setdefault("model", (getattr(model, "yaml", None) or {}).get("yaml_file") or model_name)
    work.args = train_args
    for p in work.parameters():
        p.requires_grad_(False)
    return {
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
        "tpunlearn": record,
    }


# ---- validating ------------------------------------------------------------------------------
def validate_ap50(model: nn.Module, data: str, imgsz: int, names: list[str]) -> dict[str, float]:
    """Per-class AP50 by class name from ultralytics' ``DetectionValidator`` on the ``val`` split of
    the dataset YAML ``data``, plus ``"mAP50"``. It runs on a copy (the validator fuses Conv+BN in place)."""
    return _ap50_table(_run_validator(model, data, imgsz, VALIDATOR_CONF).metrics, names)


VALIDATOR_CONF = 0.001  # ultralytics' own validation confidence: AP ranks every detection above it


def evaluate_detection(model: nn.Module, data: str, imgsz: int, names: list[str],
                       conf: float) -> Evaluation:
    """Per-class recall and precision at confidence ``conf`` and box IoU 0.5, and AP50 / AP50-95.

    ultralytics' validator runs twice on the ``val`` split of ``data``: once at its own
    confidence (0.001) for AP, whose ranking hides a model whose every score fell under a
    usable threshold, and once at ``conf`` for the operating point, whose per-prediction
    matches (``tp`` at IoU 0.5, each labelled box matched once, class-aware) and labelled
    classes it keeps are counted per class.
    """
    from tpunlearn.evaluate import detection_evaluation

    ranked = _run_validator(model, data, imgsz, VALIDATOR_CONF).metrics
    box = ranked.box
    ap = {int(c): (float(box.ap50[i]), float(box.ap[i])) for i, c in enumerate(box.ap_class_index)}
    summary = {"mAP50": float(box.map50), "mAP50-95": float(box.map)}
    kept = _run_validator(model, data, imgsz, conf).kept
    matched = {"tp50": kept["tp"][:, 0] if kept["tp"].ndim == 2 else kept["tp"],
               "pred_cls": kept["pred_cls"], "target_cls": kept["target_cls"]}
    return detection_evaluation(names, matched, ap, summary, conf)


def _run_validator(model: nn.Module, data: str, imgsz: int, conf: float) -> Any:
    """ultralytics' ``DetectionValidator`` run on a copy of ``model`` at confidence ``conf``; its
    ``kept`` attribute holds the per-prediction stats (numpy) it clears after computing metrics."""
    with tempfile.TemporaryDirectory(prefix="tpunlearn-val-") as tmp:
        args = dict(task="detect", mode="val", data=data, imgsz=int(imgsz), batch=16, conf=float(conf), iou=0.7,
                    plots=False, save_json=False, save_txt=False, verbose=False, workers=0, project=tmp, name="val",
                    exist_ok=True, split="val", device=device_arg(model))
        validator = _keeping_validator()(args=args)
        try:
            with quiet(), labels_cache_in_ours():
                validator(model=copy.deepcopy(model).float())
        except (FileNotFoundError, SyntaxError) as exc:
            raise DataError(f"cannot validate on {data}: {error_line(exc)}") from None
    return validator


def device_arg(model: nn.Module) -> str:
    """ultralytics' ``device`` argument for the device a model lives on (``cpu``, ``0``, ...)."""
    device = model_device(model)
    return "cpu" if device.type == "cpu" else str(device.index or 0)


def _keeping_validator() -> type:
    """A ``DetectionValidator`` that keeps a copy of its per-prediction stats before clearing them."""
    import numpy as np
    from ultralytics.models.yolo.detect import DetectionValidator

    class KeepingValidator(DetectionValidator):
        kept: dict[str, Any] = {}

        def get_stats(self) -> dict[str, Any]:
            stats = self.metrics.stats
            self.kept = {k: np.concatenate(v, 0) if len(v) else np.zeros(0) for k, v in stats.items()}
            return super().get_stats()

    return KeepingValidator


@contextlib.contextmanager
def labels_cache_in_ours() -> Iterator[None]:
    """Inside the block, the YOLO datasets ultralytics builds leave the user's dataset folder as it was:
    their label cache lives under tpunlearn's cache folder (:func:`label_cache_path`; ultralytics saves
    ``<labels dir>.cache`` beside the labels), and a JPEG that does not end in its end marker is read
    as it is (ultralytics' scan re-saves it in place, "corrupt JPEG restored and saved")."""
    import ultralytics.data.build
    import ultralytics.data.utils

    build: Any = ultralytics.data.build  # the module whose YOLODataset build_yolo_dataset instantiates
    utils: Any = ultralytics.data.utils  # check_image's module, whose _replace_image re-saves the JPEG
    saved = build.YOLODataset, getattr(utils, "_replace_image", None)
    build.YOLODataset = _own_cache_dataset()
    if saved[1] is not None:
        utils._replace_image = _leave_image
    try:
        yield
    finally:
        build.YOLODataset = saved[0]
        if saved[1] is not None:
            utils._replace_image = saved[1]


def _leave_image(im_file: Any, write: Any) -> None:
    """ultralytics' ``_replace_image`` (re-save an image in place) as a no-op: the image is the user's."""


def label_cache_path(beside: Path) -> Path:
    """Where tpunlearn keeps the label cache ultralytics would write at ``beside`` (one file per labels
    folder, keyed by its absolute path; ultralytics' own hash of the files still decides if it is stale)."""
    key = hashlib.sha256(str(Path(beside).resolve()).encode()).hexdigest()[:16]
    folder = cache_root() / "ultralytics-labels"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{Path(beside).stem}-{key}.cache"


@functools.cache
def _own_cache_dataset() -> type:
    """ultralytics' ``YOLODataset`` reading and saving its label cache at :func:`label_cache_path`."""
    from ultralytics.data.dataset import YOLODataset

    class OwnCacheDataset(YOLODataset):
        def _load_or_scan_cache(self, cache_path: Path, cache_hash: str) -> tuple[dict, bool]:
            return super()._load_or_scan_cache(label_cache_path(cache_path), cache_hash)

    return OwnCacheDataset


def _ap50_table(metrics: Any, names: list[str]) -> dict[str, float]:
    """Per-class AP50 read through ``metrics.box.ap_class_index`` (not the class id), plus ``"mAP50"``.

    Labelled classes that ultralytics left out (no detection at all) get AP 0; classes with no
    labelled instance in the split are left out (not NaN, not mAP).
    """
    box = metrics.box
    per_class: dict[int, float] = {int(c): float(box.ap50[i]) for i, c in enumerate(box.ap_class_index)}
    labelled = getattr(metrics, "nt_per_class", None)
    if labelled is not None:
        for c, n in enumerate(labelled):
            if n > 0 and c < len(names):
                per_class.setdefault(c, 0.0)
    out = {names[c]: per_class[c] for c in sorted(per_class) if c < len(names)}
    out["mAP50"] = float(box.map50)
    return out
