"""ultralytics YOLOv5 family: ``yolov5{n,s,m,l,x}`` (the anchor-free ``yolov5*u`` models).

Architecture from ultralytics' bundled ``yolov5.yaml`` (scale letter from the name, as
``YOLO("yolov5s.yaml")`` does), weights from an ultralytics checkpoint (``yolov5su.pt``
style, or a pruned model this adapter saved). The returned module is the ultralytics
``DetectionModel`` itself.

* A user's own ``yolo train`` run: ``--arch yolov5 --weights runs/detect/train/weights/best.pt``
  takes the scale, class names and image size from the checkpoint; a scale that contradicts
  the checkpoint's (``--arch yolov5n`` with a yolov5s ``best.pt``) is a one-line error. Its
  dataset YAML must name the model's classes (count and names, in order).
* Names. ``yolov5s`` means the pretrained ``yolov5su.pt`` (as ``YOLO("yolov5s")``): a local
  file (cwd or ultralytics' ``weights_dir``) is used, a download is left to ultralytics only
  when it is online, and offline a one-line :class:`WeightsError` says to pass ``--weights``.
  ``yolov5s.yaml`` (or ``pretrained=False``) is the randomly initialised architecture.
* Detect head. Its output convs and DFL never lose output channels (:meth:`ignored_layers`),
  and its attributes (``nc``, ``no``, ``reg_max``) never change.
* Output. In eval mode ``Detect`` returns ``(y, raw)`` (``y`` alone in export mode) with
  ``y`` the decoded ``(B, 4 + nc, A)`` tensor; :meth:`output_transform` returns ``y``. The
  box half of ``y`` runs through the DFL (a view to ``(B, 4, reg_max, A)``, a softmax and a
  fixed 1x1 conv) and a concat over anchors: every node on that path lies inside the
  ignored head, so tracing it couples no channel of a prunable layer (the tests check the
  groups and the mask-mode parity).
* Saving writes ultralytics' own checkpoint layout (:mod:`.ultralytics_io`), so
  ``ultralytics.YOLO(path)`` predicts, validates and exports it. ``nc`` and ``names`` are
  kept: a forgotten class keeps its output, it just stops firing.
* Zoo and data. A zoo entry of family ``yolov5`` names its model YAML and classes; its
  checkpoint must hold them. ``--data digits`` (``digits:N`` for N scenes), the default for
  zoo models and for any checkpoint whose ``train_args`` say ``data: digits``, writes
  DigitScenes once as a YOLO dataset at the model's input size into a cache folder
  (:func:`tpunlearn.data.yolo.digits_yaml`): scoring reads its train split, evaluation its
  test split. Other data is read by :mod:`tpunlearn.data.yolo`.
* Checkpoints load through :mod:`tpunlearn.safeload`: ``weights_only`` first, then an
  allow-list of torch and ultralytics model classes that a checkpoint may fill but never
  call (``DetectionModel(cfg)`` evaluates strings from its ``cfg``). A file that names
  anything else is refused unless trusted (``--trust-checkpoint``); a trusted one is
  unpickled the way ``YOLO(path)`` does, but missing modules are never auto-installed.
"""
from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tpunlearn.calibrate import Calibration
from tpunlearn.data import digits_count
from tpunlearn.data import yolo as yolo_data
from tpunlearn.errors import PlanError, UsageError, WeightsError
from tpunlearn.evaluate import DEFAULT_CONF, Evaluation
from tpunlearn.targets import DetectionScore, Target
from tpunlearn.torchutils import forward, main_tensor

from . import ultralytics_io as uio
from .base import Adapter, BuildState, ModelInfo, ZooSpec, read_checkpoint
from .registry import register
from .ultralytics_repair import DEFAULT_OBJECTIVE, SILENCED_LOGIT

_NAME = re.compile(r"^yolov5([nsmlx])(u)?(\.pt|\.ya?ml)?$", re.IGNORECASE)
_DEFAULT_IMGSZ = 640
_PSEUDO_CONF = 0.25  # a class counts as present in an unlabelled image when a box passes this after NMS
_PSEUDO_IOU = 0.7
_OPTIONS = ("nc", "names", "imgsz", "pretrained")
_ALIASES = {"num_classes": "nc", "class_names": "names"}  # the other families' names for the same options
FAMILY = "yolov5"  # --arch yolov5 --weights best.pt: the checkpoint says its scale
DIGITS = "digits"  # the data spec of DigitScenes (``"digits:N"``: N scenes)
# default scene counts: scoring reads train, evaluation test, --auto val, repair train (a third of the
# zoo model's 6000 training scenes: one repair epoch costs about a third of one training epoch)
DIGITS_SCENES = {"train": 512, "test": 1000, "val": 500, "repair": 2000}
GLYPHS_VAL_SCENES = 500  # GlyphScenes val scenes --auto judges a glyphs model on (its test split is --eval's)
GLYPHS_REPAIR_SCENES = 2000  # GlyphScenes training scenes a repair of a glyphs model reads by default
ERASE_SCENES = 1000  # DigitScenes / GlyphScenes training scenes of the erase stage's one distil epoch
ERASE_METHODS = ("distill", "project")  # salun relabels per-sample class logits, which a detector has not


@register
class YOLOv5Adapter(Adapter):
    name = "yolov5"
    library = "ultralytics"
    metric_name = "recall"
    # On digitscenes-yolov5 the library defaults (sigma 4, delta 0.05, tolerance 0) change nothing:
    # a detector's neck channels serve every class. These settings take the forgotten digit's recall
    # at conf 0.25 to 0 but, without repair, most other digits' recall with it (worst retained digit
    # ~0; AP50 at conf 0.001 hides it: benchmarks/bench_forget_yolov5.py, results/forget_yolov5.md).
    # No setting swept meets both; they stay the defaults until repair/calibration lands. Width
    # alignment is off: topping the head's narrow convs up to multiples of 8 cost other digits more.
    # The tolerance is a fraction of the retained targets (0.3: 3 of DigitScenes' 9, 7 of GlyphScenes'
    # 23): the count 5, tuned on 10 classes, left glyphs unforgotten (recall 0.24-0.30 for 3 of 4) and on
    # digits let retained recall collapse (mean 0.19 vs 0.92 at 3); results/defaults.md.
    defaults = {"sigma": 12, "delta": 0.2, "retain_tolerance": 0.3, "align": 1}
    # --auto around those defaults: the head's class branch sits in the last ~12 prunable convs
    auto_space = {"sigmas": (8, 12, 16), "deltas": (0.1, 0.2, 0.3)}

    def handles(self, arch: str) -> bool:
        if str(arch).lower() == FAMILY:
            return True
        path = Path(str(arch))
        if _NAME.match(path.name) and (path.name == str(arch) or path.exists()):
            return True
        if path.suffix.lower() == ".pt" and path.is_file():
            return uio.is_detection_pt(path)
        if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
            return uio.is_detection_yaml(path)
        return False

    # ---- building (the template's steps) -------------------------------------------------------
    def resolve(self, state: BuildState) -> None:
        """The model YAML of a random model (``state.builder``), or the checkpoint to read (``state.weights``).

        Options: ``nc`` / ``num_classes``, ``names`` / ``class_names``, ``imgsz`` (the square input
        side) and ``pretrained`` (False: ``yolov5s`` is the random architecture, not ``yolov5su.pt``).
        """
        _merge_aliases(state.options)
        unknown = sorted(set(state.options) - set(_OPTIONS))
        if unknown:
            raise UsageError(f"unknown option(s) for the yolov5 adapter: {', '.join(unknown)}")
        pretrained = state.options.get("pretrained")
        if state.zoo is not None and pretrained is False and state.weights is not None:
            raise UsageError(f"zoo model {state.zoo.name!r} is a trained model; for a random one use "
                             f"--arch {state.zoo.arch}")
        if state.weights is not None:
            if not state.weights.is_file():
                raise WeightsError(f"weights file not found: {state.weights}")
            return
        if state.arch.lower() == FAMILY and state.zoo is None:
            raise UsageError("--arch yolov5 reads its scale from a checkpoint: pass --weights (a `yolo train` "
                             "best.pt), or name a scale (yolov5n, yolov5s, ... or yolov5n.yaml for a random model)")
        arch = state.zoo.arch if state.zoo is not None else state.arch
        path, m = Path(arch), _NAME.match(Path(arch).name)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml") and path.is_file():
            state.builder = str(path)
        elif suffix in (".yaml", ".yml"):
            if not (m and path.name == arch):
                raise UsageError(f"no such model YAML: {arch}")
            state.builder = f"yolov5{m.group(1).lower()}.yaml"  # a bundled architecture name
        elif suffix == ".pt" and path.is_file():
            state.weights = path
        elif not m or path.name != arch:
            if suffix == ".pt":
                raise WeightsError(f"weights file not found: {arch}")
            raise UsageError(f"unknown arch {arch!r} for the yolov5 adapter (try yolov5n, yolov5s, yolov5m)")
        elif pretrained is False:
            state.builder = f"yolov5{m.group(1).lower()}.yaml"
        else:
            state.weights = uio.hub_weights(arch, m.group(1).lower())

    def read(self, path: Path, trust: bool) -> Any:
        """The checkpoint dict (a pickled module becomes ``{"model": module}``), read through safeload."""
        return uio.as_checkpoint(read_checkpoint(path, trust, unsafe_load=uio.unsafe_load))

    def reconcile(self, state: BuildState) -> None:
        """``nc`` and ``names`` of a random model (the options, else the zoo entry's); a checkpoint's
        must agree with the options and hold the zoo entry's model."""
        nc, names = state.options.get("nc"), state.options.get("names")
        zoo = state.zoo
        if state.checkpoint is None:
            if zoo is not None:
                names = names if names is not None else list(zoo.class_names)
                nc = nc if nc is not None else zoo.kwargs.get("nc")
            state.kwargs = {"cfg": state.builder, "nc": len(names) if nc is None and names is not None else nc,
                            "names": names}
            return
        model = uio.checkpoint_model(state.checkpoint, state.weights)
        head = uio.detect_head(model)
        _check_scale(state.arch if zoo is None else "", model, state.weights)
        if nc is not None and int(nc) != head.nc:
            raise WeightsError(f"{state.weights} holds a model with {head.nc} classes, not nc={nc}")
        if names is not None and uio.names_dict(names, head.nc) != uio.names_dict(model.names, head.nc):
            raise WeightsError(f"{state.weights} names its classes {uio.names_list(model.names, head.nc)[:5]}..., "
                               "which contradicts names=")
        record = state.checkpoint.get("tpunlearn") if isinstance(state.checkpoint, dict) else None
        if zoo is not None:
            _check_zoo_model(model, zoo, state.weights)
            train = ((record.get("zoo") or {}).get("train") if isinstance(record, dict) else None) or {}
            state.extra["train"] = dict(train)
        elif isinstance(record, dict) and isinstance(record.get("arch"), str):
            state.extra["saved_as"] = record["arch"]  # a zoo model's pruned copy names its zoo entry (tu.load)

    def construct(self, state: BuildState) -> nn.Module:
        """The checkpoint's own (pickled) model, prepared as ultralytics loads it, or a random one of the YAML."""
        model: Any  # a DetectionModel; ultralytics sets attributes (names) that nn.Module's types lack
        if state.checkpoint is None:
            model = uio.from_yaml(state.kwargs["cfg"], state.kwargs["nc"])
            nc = uio.detect_head(model).nc
            names = state.kwargs["names"]
            model.names = uio.names_dict(names, nc) if names is not None else uio.default_names(nc)
        else:
            model = uio.prepare(uio.checkpoint_model(state.checkpoint, state.weights), state.checkpoint,
                                state.weights)
        head = uio.detect_head(model)
        if getattr(head, "end2end", False):
            raise UsageError(f"{_label(state)}: end-to-end (NMS-free) detection heads are not supported; "
                             "use a YOLOv5 model")
        model.names = uio.names_dict(model.names, head.nc)
        for name, p in model.named_parameters():
            # ultralytics loads checkpoints frozen; the DFL conv is a fixed integral and stays frozen
            p.requires_grad_(".dfl." not in f".{name}")
        size = int(state.options.get("imgsz") or _train_imgsz(model)
                   or (state.zoo.input_size[-1] if state.zoo is not None else 0) or _DEFAULT_IMGSZ)
        if size % 32:
            raise UsageError(f"imgsz must be a multiple of 32 (the model's largest stride), got {size}")
        state.input_size = (3, size, size)
        return model

    def describe(self, model: nn.Module, state: BuildState) -> ModelInfo:
        """ModelInfo with extra ``yaml``, ``scale``, ``nc``, ``data``, and ``zoo`` / ``train`` for zoo models."""
        head = uio.detect_head(model)
        cfg = getattr(model, "yaml", None) or {}
        extra: dict[str, Any] = {"yaml": str(cfg["yaml_file"]) if cfg.get("yaml_file") else None,
                                 "scale": cfg.get("scale"), "nc": int(head.nc)}
        if state.zoo is not None:
            extra.update(zoo=state.zoo.name, data=state.zoo.data, train={})
        elif uio.train_arg(model, "data") == DIGITS:  # a model trained (or pruned) from a DigitScenes checkpoint
            extra["data"] = DIGITS
        extra.update(state.extra)
        return ModelInfo(arch=_label(state, model), family=self.name, task="detection",
                         class_names=uio.names_list(model.names, head.nc), input_size=state.size(),
                         weights=str(state.weights) if state.weights is not None else None, extra=extra)

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
        head = uio.detect_head(model)
        outputs = [branch[-1] for branch in (*head.cv2, *head.cv3)]
        dfl = [head.dfl] if isinstance(getattr(head, "dfl", None), nn.Module) else []
        return [*outputs, *dfl]

    # On by default: pruning the class branch damps every class at conf 0.25, and refitting the
    # last 1x1 conv's retained rows brings them back (benchmarks/results/calibrate.md)
    calibrates = True

    # The forget classes' rows of those convs are silenced too (weight 0, bias -20): pruning and the refit
    # take digit 3's recall at conf 0.25 to 0 but leave its AP50 at 0.92-1.00 of before (its boxes still
    # rank; benchmarks/results/calibrate.md); silenced, its AP50 is 0 with no training
    # (benchmarks/results/repair_yolov5.md, the no-training rows). An output-level edit, named in the report.
    calibration_silences = True

    def calibration(self, model: nn.Module, info: ModelInfo) -> Calibration:
        """The class branch's last 1x1 conv at every scale (``cv3[i][-1]``: channel ``c`` is class ``c``'s
        logit), weighted by sigmoid score as ultralytics reads it at a confidence threshold."""
        head = uio.detect_head(model)
        names = dict((id(m), n) for n, m in model.named_modules())
        return Calibration(layers=tuple(names[id(cast(nn.Sequential, branch)[-1])] for branch in head.cv3),
                           weighting="sigmoid", silence=SILENCED_LOGIT if self.calibration_silences else None)

    def onnx_metadata(self, model: nn.Module, info: ModelInfo) -> dict[str, Any]:
        """ultralytics' own export metadata (names, imgsz, stride, task, ...) so that
        ``YOLO("model.onnx")`` names the classes and letterboxes to the right size."""
        from ultralytics import __version__

        from tpunlearn import __version__ as ours

        stride = getattr(model, "stride", None)
        return {"description": f"{info.arch} pruned by tpunlearn {ours}", "author": "tpunlearn",
                "version": __version__, "stride": int(max(stride)) if stride is not None else 32, "task": "detect",
                "head": "Detect", "batch": 1, "imgsz": [int(v) for v in info.input_size[-2:]],
                "names": dict(enumerate(info.class_names)), "channels": int(info.input_size[0]),
                "args": {"batch": 1, "half": False, "dynamic": False, "nms": False}, "end2end": False}

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
        (DigitScenes' train split), a dataset YAML (its ``train`` split, else ``val``; targets
        from the YOLO txt labels), an image folder or one image (targets: the classes the
        model itself detects above conf 0.25 after NMS).
        """
        nc, size = len(info.class_names), int(info.input_size[-1])
        labeller = functools.partial(_pseudo_labels, model, nc=nc)
        spec = _default_spec(model, info, spec)
        _check_labels(info, spec)
        if spec is None:
            return yolo_data.Batches(yolo_data.bundled_images(), None, nc, size, batch_size, labeller)
        digits = digits_count(spec, DIGITS_SCENES["train"])
        if digits is not None:
            _check_digits_model(info)
            spec = str(yolo_data.digits_yaml(size, n_train=digits))
        return yolo_data.batches(spec, nc, size, batch_size, labeller, names=info.class_names)

    def evaluate(self, model: nn.Module, info: ModelInfo, spec: str | None, conf: float = DEFAULT_CONF,
                 **kw: Any) -> Evaluation:
        """Per-class recall and precision at confidence ``conf`` (box IoU 0.5), AP50 and AP50-95, by
        class name, from ultralytics' own validator (:func:`ultralytics_io.evaluate_detection`).

        Runs ``DetectionValidator`` on the ``val`` split of a dataset YAML (``spec``, or the
        ``data`` the checkpoint was trained on) on a copy of the model (the validator fuses
        Conv+BN in place). ``"digits"`` / ``"digits:N"`` (the default for DigitScenes models)
        validates on DigitScenes' *test* split (1000 scenes, or N) at the model's input size.
        Classes with no labelled instance in the split are left out.
        """
        data = _default_spec(model, info, spec) or uio.train_arg(model, "data")
        digits = digits_count(data, DIGITS_SCENES["test"]) if data else None
        if digits is not None:
            _check_digits_model(info)
            data = str(yolo_data.digits_yaml(int(info.input_size[-1]), n_test=digits))
        if not data:
            raise UsageError("evaluating a YOLO model needs --data (an ultralytics dataset YAML)")
        if Path(str(data)).suffix.lower() not in (".yaml", ".yml"):
            raise UsageError(f"evaluating a YOLO model needs a dataset YAML with labels, got {data!r}")
        path = Path(str(data))
        parsed = yolo_data.read_dataset(path, split="val")  # fail fast, never download
        yolo_data.check_names(parsed, info.class_names)
        yolo_data.split_images(parsed, "val")
        with yolo_data.resolved_yaml(path) as readable:
            return uio.evaluate_detection(model, str(readable), int(info.input_size[-1]), info.class_names,
                                          float(conf))

    def validate(self, model: nn.Module, info: ModelInfo, spec: str | None, conf: float = DEFAULT_CONF,
                 **kw: Any) -> Evaluation:
        """:meth:`evaluate` on the data that chooses settings (``--auto``): DigitScenes' own *val*
        split for ``"digits"`` / ``"digits:N"`` and GlyphScenes' (500 scenes) for ``"glyphs"`` /
        ``"glyphs:N"`` (never the test scenes that evaluate reports on), else the dataset YAML's
        ``val`` split. The split is recorded in ``extra["split"]``."""
        from tpunlearn.data.specs import glyphs_count

        chosen = _chosen_spec(model, info, spec)
        if chosen is not None and glyphs_count(chosen) is not None:  # GlyphScenes' own val scenes, not its test
            size = int(info.input_size[-1])
            val = str(yolo_data.glyphs_yaml(size, n_test=GLYPHS_VAL_SCENES, val_from="val"))
            result = uio.evaluate_detection(model, val, size, info.class_names, float(conf))
            result.extra["split"] = f"GlyphScenes val ({GLYPHS_VAL_SCENES} scenes)"
            return result
        data = _default_spec(model, info, spec)
        digits = digits_count(data, DIGITS_SCENES["val"]) if data else None
        if digits is None:
            result = self.evaluate(model, info, spec, conf=conf, **kw)
            result.extra["split"] = f"val of {data or uio.train_arg(model, 'data')}"
            return result
        _check_digits_model(info)
        val = str(yolo_data.digits_yaml(int(info.input_size[-1]), n_val=digits))
        result = uio.evaluate_detection(model, val, int(info.input_size[-1]), info.class_names, float(conf))
        result.extra["split"] = f"DigitScenes val ({digits} scenes)"
        return result

    # ---- region probes -------------------------------------------------------------------
    def probe_layer(self, model: nn.Module, info: ModelInfo) -> str | None:
        """The finest neck output the Detect head reads (P3, stride 8: the level where small
        objects' boxes still cover several feature cells)."""
        layers = getattr(model, "model", None)
        head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
        sources = getattr(head, "f", None)
        return f"model.{int(sources[0])}" if isinstance(sources, (list, tuple)) and sources else None

    def region_batches(self, model: nn.Module, info: ModelInfo, spec: str | None) -> Iterable[Any] | None:
        """Training images letterboxed to the model's size, one box region per labelled object
        (a dataset YAML's ``train`` split, else ``val``; ``digits[:N]``: DigitScenes' training scenes)."""
        from tpunlearn.data.regions import BoxRegions
        from tpunlearn.errors import DataError

        size = int(info.input_size[-1])
        data = _default_spec(model, info, spec)
        digits = digits_count(data, DIGITS_SCENES["train"]) if data else None
        if digits is not None:
            _check_digits_model(info)
            data = str(yolo_data.digits_yaml(size, n_train=digits))
        if not data or Path(str(data)).suffix.lower() not in (".yaml", ".yml"):
            raise DataError("the region probes need labelled boxes: pass --data with a dataset YAML (or digits)")
        parsed = yolo_data.read_dataset(Path(str(data)))
        yolo_data.check_names(parsed, info.class_names)
        images = yolo_data.split_images(parsed, "train" if parsed.get("train") else "val")
        return BoxRegions(images, yolo_data.label_files(images), len(info.class_names), size)

    # ---- repair ----------------------------------------------------------------------------
    # What the repair optimises (ultralytics_repair.OBJECTIVES). At lr 1e-4 the objectives measured within
    # one or two instances of each other (glyph circle: worst retained drop 13.9-19.4 points); at 1e-3 the
    # distillation kept digit 3's retained recall (worst drop 0.9 vs 6.0 without), so it stays on
    # (benchmarks/results/repair_yolov5_compare.md).
    repair_objective = DEFAULT_OBJECTIVE
    # After training the forget classes' output rows are silenced (weight 0, bias -20): training alone left
    # their AP50 at 0.77-0.99 of before for 5 of 8 classes (their boxes still rank); silenced, every class
    # measured has AP50 0 (benchmarks/results/repair_yolov5.md).
    repair_silences = True

    def repair(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int], *,
               original: nn.Module | None = None, epochs: int = 1, lr: float = 1e-4, plan: Any = None,
               seed: int = 0, progress: bool = True) -> dict[str, Any]:
        """Fine-tune the pruned ``model`` in place with ultralytics' own ``DetectionTrainer`` handed the
        pruned module (never rebuilt from its YAML), on the ``train`` split of ``spec``'s dataset YAML
        (``digits`` / ``digits:N``: DigitScenes' train scenes, 2000 by default; ``glyphs`` / ``glyphs:N``
        likewise; None: the model's own data), retained targets only
        (:mod:`.ultralytics_repair`). The FP32 trained weights go back into ``model``; its parameter
        count is asserted and mask-mode channels (``plan``) stay zero. Without ``original`` there is
        nothing to distil from, and the objective drops its distillation term. Then, when
        :attr:`repair_silences`, the forget classes' output rows are silenced
        (:func:`~.ultralytics_repair.silence_forget`; the summary's ``silenced`` names the convs).
        """
        from . import ultralytics_repair as ur

        objective = self.repair_objective if original is not None else self.repair_objective.split("+")[0]
        data = self._repair_yaml(model, info, spec)
        zero_ops = plan.zero_ops() if plan is not None else {}
        forget = [int(t) for t in forget]
        summary = ur.train_pruned(model, data, int(info.input_size[-1]), forget, original=original, epochs=epochs,
                                  lr=lr, zero_ops=zero_ops, seed=seed, objective=objective, progress=progress)
        summary["silenced"] = ur.silence_forget(model, forget) if self.repair_silences and forget else []
        return summary

    def _repair_yaml(self, model: nn.Module, info: ModelInfo, spec: str | None, scenes: int | None = None) -> str:
        """The dataset YAML a repair trains on (its classes checked against the model's); ``scenes``: the
        DigitScenes / GlyphScenes count of a plain ``digits`` / ``glyphs`` (None: the repair's)."""
        from tpunlearn.data.specs import glyphs_count

        size = int(info.input_size[-1])
        chosen = str(spec) if spec is not None else (info.extra.get("data") or uio.train_arg(model, "data"))
        digits = digits_count(str(chosen), scenes or DIGITS_SCENES["repair"]) if chosen else None
        if digits is not None:
            _check_digits_model(info)
            return str(yolo_data.digits_yaml(size, n_train=digits))
        glyphs = glyphs_count(str(chosen)) if chosen else None
        if glyphs is not None:
            return str(yolo_data.glyphs_yaml(size, n_train=glyphs or scenes or GLYPHS_REPAIR_SCENES))
        if not chosen or Path(str(chosen)).suffix.lower() not in (".yaml", ".yml"):
            raise UsageError("a yolov5 repair trains on labelled data: pass --data PATH to an ultralytics dataset "
                             f"YAML{f' (got {chosen!r})' if chosen else ''}")
        parsed = yolo_data.read_dataset(Path(str(chosen)), split="train")
        yolo_data.check_names(parsed, info.class_names)
        return str(chosen)

    # ---- erase stage ---------------------------------------------------------------------
    # A detector's output is no logit tensor tpunlearn.erase can read: ``project`` needs only forward passes
    # (presence labels from the boxes), and ``distill`` is masked self-distillation in the family's trainer.
    erases = True
    # project: 2 directions out of the class branch's last two convs per scale. Measured on digitscenes-yolov5,
    # forget 3, after the calibrated library-defaults request (retained mean recall 98.7 %, worst drop 0.4):
    # 2 directions there left 98.0 % (worst drop 1.6); all three convs per scale 93.7 % (drop 10.9), at 1
    # direction 96.3 % (8.9); 8 directions 81.9 % (42.6); "the image holds digit 3" instead of box cells 0.0 %.
    # (Cells labelled at their top-left pixel; at their centre, the code now: 98.3 %, drop 1.2, compare_tasks.md)
    erase_rank = 2
    erase_depth = 2  # of each scale's class-branch convs, the last ones projected

    def erase_methods(self) -> tuple[str, ...]:
        return ERASE_METHODS

    def erase_layers(self, model: nn.Module) -> list[str]:
        """The class branch's last :attr:`erase_depth` convolutions at every scale (``cv3[i]``: the 1x1
        class-logit conv and the 3x3 before it), the box branch left as it is."""
        names = {id(m): n for n, m in model.named_modules()}
        layers = []
        for branch in uio.detect_head(model).cv3:
            convs = [names[id(m)] for m in branch.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
            layers += convs[-self.erase_depth:]
        return layers

    def erase(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int], *,
              original: nn.Module, method: str | None = None, plan: Any = None, seed: int = 0,
              progress: bool = True) -> dict[str, Any]:
        """The erase stage for a detector, in place, the pruned module kept (its parameter count asserted,
        mask-mode channels zero):

        * ``project``: :func:`tpunlearn.erase.erase`'s activation projection on the class branch's
          convolutions (:meth:`erase_layers`), per feature cell, each cell labelled by the box it lies in
          (:class:`BoxMasks`; cells in no box left out), forward passes only;
        * ``distill``: masked self-distillation, i.e. the family's repair with the ``negatives+distil``
          objective (the retained classes' scores toward the original's, the forget class's boxes as
          background) for one epoch of :data:`ERASE_SCENES` scenes, then the forget rows silenced.
        """
        method = method or self.erase_default
        if method not in ERASE_METHODS:
            raise UsageError(f"the yolov5 erase stage runs {' or '.join(ERASE_METHODS)}, not {method!r} (it "
                             "relabels per-sample class logits, which a detector does not give)")
        forget = [int(t) for t in forget]
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        n_before, t0 = sum(p.numel() for p in model.parameters()), time.perf_counter()
        done = (self._erase_project if method == "project" else self._erase_distill)(
            model, info, spec, forget, original, plan, seed, progress)
        if sum(p.numel() for p in model.parameters()) != n_before:
            raise PlanError(f"the yolov5 erase stage changed the pruned model's parameter count ({n_before})")
        after = model.state_dict()
        touched = sum(int((after[k] != v).sum()) for k, v in before.items() if v.is_floating_point())
        return {**done, "method": method, "task": "detection", "forget": forget, "weights_touched": touched,
                "weights_total": n_before, "seconds": round(time.perf_counter() - t0, 3)}

    def _erase_project(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: list[int],
                       original: nn.Module, plan: Any, seed: int, progress: bool) -> dict[str, Any]:
        from tpunlearn.erase import EraseSpec, erase

        regions = self.region_batches(original, info, spec)
        assert regions is not None
        spec_ = EraseSpec("project", rank=self.erase_rank, project_layers=tuple(self.erase_layers(model)))
        done = erase(model, original, BoxMasks(regions), forget, spec=spec_,
                     task="segmentation", plan=plan, seed=seed, progress=progress)
        return {**{k: v for k, v in done.items() if k not in ("method", "task", "seconds")},
                "labels": "per feature cell, the class of the labelled box it lies in (no box: left out)"}

    def _erase_distill(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: list[int],
                       original: nn.Module, plan: Any, seed: int, progress: bool) -> dict[str, Any]:
        from . import ultralytics_repair as ur

        data = self._repair_yaml(model, info, spec, scenes=ERASE_SCENES)
        summary = ur.train_pruned(model, data, int(info.input_size[-1]), forget, original=original, epochs=1,
                                  lr=self.repair_lr, zero_ops=plan.zero_ops() if plan is not None else {},
                                  seed=seed, objective="negatives+distil", progress=progress)
        summary["silenced"] = ur.silence_forget(model, forget) if forget else []
        return {k: v for k, v in summary.items() if k != "seconds"}

    # ---- saving --------------------------------------------------------------------------
    def save(self, model: nn.Module, info: ModelInfo, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Save as an ultralytics checkpoint (``YOLO(path)`` loads, predicts, validates it).

        ``meta`` (plain values only) is stored beside tpunlearn's own record in the
        checkpoint's ``"tpunlearn"`` entry (the zoo trainer keeps its training record there).
        """
        from tpunlearn import __version__
        from tpunlearn.io import save_torch

        record = {**(meta or {}), "version": __version__, "arch": info.arch, "input_size": list(info.input_size),
                  "class_names": list(info.class_names)}
        save_torch(uio.checkpoint_payload(model, int(info.input_size[-1]), info.arch, record), path)


# ---------------------------------------------------------------------------------- helpers
class BoxMasks:
    """Re-iterable ``(images, masks)`` from ``(images, regions)`` box batches (:class:`~tpunlearn.data.regions.
    BoxRegions`): each pixel the class of the box it lies in (a smaller box over a larger one), 255 outside
    every box, so :mod:`tpunlearn.erase` reads per-pixel labels of a detector's data."""

    def __init__(self, regions: Iterable[Any]) -> None:
        self.regions = regions

    def __iter__(self) -> Any:
        for images, regions in self.regions:
            h, w = images.shape[-2:]
            masks = torch.full((len(images), h, w), 255, dtype=torch.uint8)
            for mask, boxes in zip(masks, regions, strict=True):
                for c, box in sorted(boxes, key=lambda cb: -float((cb[1][2] - cb[1][0]) * (cb[1][3] - cb[1][1]))):
                    x0, y0, x1, y1 = (float(v) for v in box)
                    mask[int(y0 * h):max(int(y0 * h) + 1, round(y1 * h)),
                         int(x0 * w):max(int(x0 * w) + 1, round(x1 * w))] = int(c)
            yield images, masks


def _merge_aliases(options: dict[str, Any]) -> None:
    """``num_classes`` / ``class_names`` become ``nc`` / ``names`` (both given: they must agree)."""
    for alias, name in _ALIASES.items():
        if alias in options:
            value = options.pop(alias)
            if name in options and options[name] != value:
                raise UsageError(f"{alias}={value!r} contradicts {name}={options[name]!r}")
            options[name] = value


def _label(state: BuildState, model: nn.Module | None = None) -> str:
    """The name a built model goes by: its zoo name, else the arch as given (``yolov5``: the checkpoint's scale)."""
    if state.zoo is not None:
        return state.zoo.name
    scale = _scale(model) if model is not None and state.arch.lower() == FAMILY else None
    return f"yolov5{scale}" if scale else state.arch


def _check_scale(arch: str, model: nn.Module, path: Path | None) -> None:
    """``--arch yolov5n`` with a checkpoint of another scale is refused (``--arch yolov5`` takes the checkpoint's)."""
    want = _NAME.match(Path(arch).name) if arch and not Path(arch).is_file() else None
    have = _scale(model)
    if want and have and want.group(1).lower() != have:
        raise WeightsError(f"{path} holds a yolov5{have} model, not {arch}; pass --arch yolov5{have} "
                           "(or --arch yolov5: the checkpoint says its scale)")


def _scale(model: nn.Module) -> str | None:
    """The scale letter of a YOLOv5 model (its YAML's ``scale``, else its YAML file's name)."""
    cfg = getattr(model, "yaml", None) or {}
    scale = cfg.get("scale") if isinstance(cfg, dict) else None
    if isinstance(scale, str) and scale:
        return scale.lower()
    m = _NAME.match(Path(str(cfg.get("yaml_file") or "")).name) if isinstance(cfg, dict) else None
    return m.group(1).lower() if m else None


def _train_imgsz(model: nn.Module) -> int | None:
    """The input side a checkpoint was trained at (the largest of an ``(H, W)`` pair)."""
    size = uio.train_arg(model, "imgsz")
    if isinstance(size, (list, tuple)) and size:
        size = max(size)
    return int(size) if isinstance(size, (int, float)) and size else None


def _check_zoo_model(model: nn.Module, e: ZooSpec, path: Path | None) -> None:
    """A zoo checkpoint (or a pruned copy) must hold the zoo entry's architecture and classes."""
    head = uio.detect_head(model)
    yaml_file = Path(str((getattr(model, "yaml", None) or {}).get("yaml_file") or "")).name
    have, want = _NAME.match(yaml_file), _NAME.match(Path(e.arch).name)
    if head.nc != len(e.class_names) or uio.names_list(model.names, head.nc) != list(e.class_names) or \
            (yaml_file and have and want and have.group(1).lower() != want.group(1).lower()):
        raise WeightsError(f"{path} holds a {yaml_file or '?'} model with {head.nc} classes, not zoo model "
                           f"{e.name} ({e.arch}, classes {', '.join(e.class_names)}); "
                           f"rebuild it with `python scripts/train_zoo.py {e.name}`")


def _chosen_spec(model: nn.Module, info: ModelInfo, spec: str | None) -> str | None:
    """``spec``, else the model's own data as it names it (``digits``, ``glyphs``, a YAML path)."""
    own = info.extra.get("data") or uio.train_arg(model, "data")
    return str(spec) if spec is not None else (str(own) if own is not None else None)


def _default_spec(model: nn.Module, info: ModelInfo, spec: str | None) -> str | None:
    """``spec``, or the model's own data when it has one that needs no file (``"digits"``,
    ``"glyphs"``); a ``glyphs`` / ``glyphs:N`` spec becomes a cached GlyphScenes dataset YAML."""
    from tpunlearn.data.specs import glyphs_count

    own = info.extra.get("data") or uio.train_arg(model, "data")
    chosen = _chosen_spec(model, info, spec)
    glyphs = glyphs_count(chosen) if chosen is not None else None
    if glyphs is not None:
        return str(yolo_data.glyphs_yaml(int(info.input_size[-1]), n_train=glyphs or 512))
    if spec is not None:
        return str(spec)
    return str(own) if digits_count(own, DIGITS_SCENES["test"]) is not None else None


def _check_labels(info: ModelInfo, spec: str | None) -> None:
    """A randomly initialised detector finds nothing, so its own detections cannot label unlabelled
    data: refuse at once (before any forward) instead of failing after the scoring pass."""
    if info.weights is not None or info.extra.get("zoo"):
        return
    labelled = spec is not None and (digits_count(spec, 1) is not None
                                     or Path(str(spec)).suffix.lower() in (".yaml", ".yml"))
    if not labelled:
        raise UsageError(f"{info.arch} has random weights (no --weights): its own detections cannot label "
                         f"{'the bundled images' if spec is None else spec}; pass --weights, or --data with labels "
                         "(an ultralytics dataset YAML)")


def _check_digits_model(info: ModelInfo) -> None:
    from tpunlearn.data import CLASS_NAMES

    if list(info.class_names) != CLASS_NAMES:
        raise UsageError(f"DigitScenes has the 10 classes '0'..'9'; this model has {len(info.class_names)} "
                         f"({', '.join(info.class_names[:4])}...): pass --data PATH to a dataset YAML")


def _pseudo_labels(model: nn.Module, images: torch.Tensor, nc: int) -> torch.Tensor:
    """Classes the model itself detects in each image (a box above conf 0.25 after NMS)."""
    from ultralytics.utils.nms import non_max_suppression

    pred = main_tensor(forward(model, images))
    dets = non_max_suppression(pred, conf_thres=_PSEUDO_CONF, iou_thres=_PSEUDO_IOU, nc=nc)
    multi_hot = torch.zeros(len(images), nc)
    for i, d in enumerate(dets):
        if len(d):
            multi_hot[i, d[:, 5].long().cpu().clamp(0, nc - 1)] = 1.0
    return multi_hot
