"""torchvision DeepLabv3 family: semantic segmentation with a dict output.

Architectures: torchvision's ``deeplabv3_resnet50``, ``deeplabv3_resnet101`` and
``deeplabv3_mobilenet_v3_large`` (built with ``weights=None, weights_backbone=None``; weights
come from a local file) and the zoo's ``deeplabv3_resnet_tiny`` (:mod:`tpunlearn.zoo_models`).

* **Output** ``{"out", "aux"?}``; :meth:`DeepLabV3Adapter.output_transform` explains the trace.
* **Never pruned**, as in the paper ("the last two convolutional layers"): the DeepLabHead's
  ``classifier.1`` and ``classifier.4``, and the whole ``aux_classifier`` (``aux_loss=None``
  builds it only when the checkpoint has it). ASPP and the backbone are candidates.
* **Classes**: 21 get VOC's names (``person`` is 15); 11 the DigitScenes layout (``background``,
  then digit ``d`` at index ``d + 1``); others ``"0"``..``"n-1"`` unless ``class_names`` is given.
* **Normalisation** (stored in the checkpoint; the data apply it, the model never does):
  ``"imagenet"`` (default for 21 classes and for a plain state dict that is not the 11-class
  DigitScenes layout: torchvision's training references normalise so), ``"none"`` (default
  otherwise) or ``{"mean", "std"}``.
* **Data**: ``digits[:N]`` (256 train scenes to score, 200 test scenes to evaluate), ``glyphs[:N]``
  (GlyphScenes, 25 classes: 512 train scenes to score, 1000 test scenes to evaluate, 500 val scenes to
  validate; :class:`tpunlearn.data.glyphscenes.GlyphScenesMasks`) or a VOC-style folder, read by
  :func:`tpunlearn.data.voc.mask_batches`; IoU by :mod:`tpunlearn.evaluate`. A zoo model reads its own data.
* **Checkpoints**: its own ``tpunlearn-deeplabv3/1`` (:meth:`DeepLabV3Adapter.checkpoint`; the zoo's
  are fp16 with a training record), plain state dicts (also under ``model`` / ``state_dict``, a
  ``module.`` prefix dropped) and pickled torchvision models, whose ``num_classes`` and aux head
  follow the file. ``--arch deeplabv3`` reads the backbone from the keys (:func:`infer_builder`);
  a named arch whose keys show another backbone is one line.
* **Repair that forgets** (``prune --repair-epochs N``, :meth:`DeepLabV3Adapter.repair`): pruning alone
  cannot take a digit out (the digits share their last-layer channels), so the repair fine-tune
  trains the pruned model on training scenes *with* the forget class, its pixels relabelled
  background (:class:`ForgetLoss`), distilled toward the original on the retained pixels. One epoch
  is :data:`REPAIR_SCENES` scenes of plain ``digits`` (``digits:N``: N; a folder: its train list),
  measured at ``--repair-lr 1e-3`` (:data:`REPAIR_LR`; benchmarks/bench_forget_deeplabv3.py --repair).
* **Erase stage** (``prune --erase [METHOD]``, :meth:`DeepLabV3Adapter.erase`): :mod:`tpunlearn.erase`'s
  methods on the per-pixel logits (``task="segmentation"``), over training scenes with the forget class.
* **A user's VOC folder** names the classes through its ``labelmap.txt`` (:meth:`DeepLabV3Adapter.bind_data`)
  unless ``class_names`` (``--names``) or the checkpoint does; a count that differs from the head is one line.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tpunlearn.calibrate import Calibration
from tpunlearn.data.glyphscenes import GLYPH_CLASSES, GLYPH_MASK_CLASSES, GlyphScenesMasks
from tpunlearn.data.specs import glyphs_count
from tpunlearn.data.voc import IGNORE_INDEX, VOC_CLASSES, MaskBatches, mask_batches, redirect_masks, voc_class_names
from tpunlearn.errors import DataError, UsageError, WeightsError, listed
from tpunlearn.evaluate import Evaluation
from tpunlearn.targets import SegmentationLogit, Target
from tpunlearn.torchutils import eval_mode, main_tensor, model_device

from .base import Adapter, BuildState, ModelInfo, as_size, check_stored, pruning_history, read_checkpoint
from .registry import register

SAVE_FORMAT = "tpunlearn-deeplabv3/1"
ARCHS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet_tiny")
GENERIC = "deeplabv3"  # --arch deeplabv3: the backbone read from the state dict's keys
OPTIONS = ("num_classes", "aux_loss", "class_names", "imgsz", "normalize")
DIGIT_CLASSES = ["background"] + [str(d) for d in range(10)]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DEFAULT_SIZE = 512
DIGITS_SCENES = {"train": 256, "val": 200, "test": 200}  # default DigitScenes counts for "digits"
GLYPH_MASK_NAMES = ("background", *GLYPH_CLASSES)  # a saved glyph segmenter: its default data is "glyphs"
GLYPHS_SCENES = {"train": 512, "val": 500, "test": 1000}  # "glyphs": 24 classes need more scenes to score
REPAIR_SCENES = 1000  # training scenes of one repair epoch on plain "digits" (the zoo's epoch: 24000)
REPAIR_LR = 1e-3  # the repair's measured learning rate (--repair-lr 1e-3; the CLI's generic default is 1e-4)
ERASE_SCENES = 1000  # training scenes the erase stage reads on plain "digits" (its steps cycle over them)
REDIRECTS = ("background", "next", "ignore")  # what ForgetLoss trains a forget pixel toward
_TRACE_SIZE = 64  # spatial size used to trace the graph when replaying a pruning history


@register
class DeepLabV3Adapter(Adapter):
    name = "deeplabv3"
    library = "torchvision"
    metric_name = "iou"
    repair_lr = REPAIR_LR  # at 1e-4 one epoch left digit 3 at 2.8-12.1 % IoU (results/forget_deeplabv3_repair*)
    load_hint = (" (another class count, or a pruned model saved as a bare state dict: save it with the adapter, "
                 "which records the pruning history)")

    def handles(self, arch: str) -> bool:
        return str(arch) in ARCHS or str(arch) == GENERIC

    # ---- building (the template's steps) -------------------------------------------------------
    def resolve(self, state: BuildState) -> None:
        """The torchvision builder's name (a zoo entry's arch); unknown archs and options raise."""
        state.builder = state.zoo.arch if state.zoo is not None else state.arch
        if state.builder == GENERIC:
            if state.weights is None:
                raise UsageError(f"--arch {GENERIC} reads the backbone from --weights; without weights name it: "
                                 f"{', '.join(ARCHS)}")
        elif state.builder not in ARCHS:
            raise UsageError(f"unknown DeepLabv3 arch {state.builder!r}; choose one of {', '.join(ARCHS)} "
                             f"(or {GENERIC} with --weights)")
        unknown = sorted(set(state.options) - set(OPTIONS))
        if unknown:
            raise UsageError(f"unknown option(s) for {state.arch}: {', '.join(unknown)} (known: {', '.join(OPTIONS)})")

    def read(self, path: Path, trust: bool) -> Any:
        return read_checkpoint(path, trust, missing_hint="pretrained torchvision weights need the internet; "
                                                         "pass a local checkpoint")

    def reconcile(self, state: BuildState) -> None:
        """Builder kwargs from the options, the zoo entry and the checkpoint; names, size, normalisation."""
        opts, zoo, ckpt = state.options, state.zoo, state.checkpoint
        state.kwargs = {k: opts[k] for k in ("num_classes", "aux_loss") if k in opts}
        if zoo is not None:
            state.kwargs.setdefault("num_classes", zoo.kwargs.get("num_classes"))
        state.class_names = opts.get("class_names") or (list(zoo.class_names) if zoo is not None else None)
        normalize = opts.get("normalize")
        if isinstance(ckpt, dict) and "format" in ckpt:
            normalize = self._reconcile_saved(state, ckpt, normalize)
        elif ckpt is not None:
            _reconcile_plain(state, ckpt)
            if normalize is None and state.kwargs.get("num_classes") != len(DIGIT_CLASSES):
                normalize = "imagenet"  # a torchvision-trained model: its references normalise so
        elif zoo is not None:  # a random model of the zoo's configuration
            state.kwargs.setdefault("aux_loss", zoo.kwargs.get("aux_loss"))
        num = state.kwargs.get("num_classes")
        num = 21 if num is None else int(num)
        if num < 1:
            raise UsageError(f"num_classes must be >= 1, got {num}")
        state.kwargs = {"num_classes": num, "aux_loss": bool(state.kwargs.get("aux_loss"))}
        state.class_names = _class_names(num, state.class_names)
        imgsz = opts.get("imgsz")
        if imgsz is None and state.input_size is None and zoo is not None:
            imgsz = tuple(zoo.input_size[1:])
        if imgsz is not None or state.input_size is None:
            state.input_size = _input_size(imgsz)
        state.extra["normalize"] = _normalization(normalize, num)

    def _reconcile_saved(self, state: BuildState, saved: dict[str, Any], normalize: Any) -> Any:
        """A ``tpunlearn-deeplabv3/1`` file describes itself; it must be the named arch (and zoo entry)."""
        path, builder, zoo = state.weights, state.builder, state.zoo
        name = zoo.name if zoo is not None else state.arch
        if saved.get("format") != SAVE_FORMAT:
            what = saved.get("arch") or saved.get("timm_name") or "model"
            raise WeightsError(f"{path} is a {saved.get('format')} checkpoint ({what}), not a DeepLabv3 one; "
                               "pass the --arch it was made for")
        if builder == GENERIC and saved.get("arch") in ARCHS:
            builder = state.builder = str(saved["arch"])
        if saved.get("arch") != builder:
            raise WeightsError(f"{path} holds a {saved.get('arch')}, not a {name}"
                               + (f" ({builder})" if builder != name else ""))
        stored = dict(saved.get("kwargs") or {})
        if zoo is not None and any(stored.get(k) != v for k, v in zoo.kwargs.items()):
            raise WeightsError(f"{path} holds a {builder} built with {stored}, not zoo model {zoo.name} "
                               f"({dict(zoo.kwargs)})")
        if "num_classes" not in stored:
            raise WeightsError(f"{path} records no num_classes for its {builder}")
        check_stored(stored, {k: v for k, v in state.kwargs.items() if v is not None}, path, name)
        state.kwargs = {"num_classes": int(stored["num_classes"]), "aux_loss": bool(stored.get("aux_loss"))}
        state.class_names = state.class_names or saved.get("class_names")
        state.input_size = as_size(saved.get("input_size"))
        state.history = pruning_history(saved.get("history"))
        state.state = saved.get("state_dict")
        if isinstance(saved.get("zoo"), dict):
            state.extra["zoo"] = saved["zoo"]
        return normalize if normalize is not None else (saved.get("normalize") or "none")

    def construct(self, state: BuildState) -> nn.Module:
        return _builder(state.builder)(weights=None, weights_backbone=None, **state.kwargs)

    def trace_inputs(self, state: BuildState) -> torch.Tensor:
        return torch.rand(1, 3, _TRACE_SIZE, _TRACE_SIZE)

    def describe(self, model: nn.Module, state: BuildState) -> ModelInfo:
        """``extra``: builder kwargs, normalisation, history, default data, the zoo record and its ``train``."""
        zoo, names = state.zoo, list(state.class_names or [])
        data = zoo.data if zoo is not None else {tuple(DIGIT_CLASSES): "digits", GLYPH_MASK_NAMES: "glyphs"}.get(
            tuple(names))
        extra: dict[str, Any] = {"builder_kwargs": dict(state.kwargs), "normalize": state.extra["normalize"],
                                 "history": state.history, "data": data}
        record = state.extra.get("zoo")  # the checkpoint's, else the entry's name
        if record is None and zoo is not None:
            record = {"name": zoo.name}
        if record is not None:
            extra["zoo"] = dict(record)
            if isinstance(record.get("train"), dict):
                extra["train"] = dict(record["train"])
        extra["builder"] = state.builder
        saved = state.checkpoint.get("class_names") if isinstance(state.checkpoint, dict) else None
        extra["names_from"] = ("--names" if state.options.get("class_names") else "the zoo entry" if zoo is not None
                               else "the checkpoint" if isinstance(saved, list)
                               and list(saved) != _class_names(len(names), None) else None)
        arch = zoo.name if zoo is not None else (state.builder if state.arch == GENERIC else state.arch)
        return ModelInfo(arch=arch, family="deeplabv3", task="segmentation",
                         class_names=names, input_size=state.size(),
                         weights=str(state.weights) if state.weights is not None else None, extra=extra)

    # ---- what the core needs -------------------------------------------------------------------
    def target(self, info: ModelInfo, index: int) -> Target:
        """Class ``index`` logits summed over the pixels the model assigns to it."""
        return SegmentationLogit(index)

    def ignored_layers(self, model: nn.Module, info: ModelInfo) -> list[nn.Module]:
        """The DeepLabHead's last two convolutions, plus the whole auxiliary head if any."""
        head = getattr(model, "classifier", None)
        if head is None:
            return []
        convs = [m for m in head.children() if isinstance(m, nn.Conv2d)]
        aux = getattr(model, "aux_classifier", None)
        return [*convs[-2:], *([aux] if isinstance(aux, nn.Module) else [])]

    def calibration(self, model: nn.Module, info: ModelInfo) -> Calibration | None:
        """The DeepLabHead's final 1x1 conv (channel ``c`` is class ``c``'s pixel logit), every pixel
        weighted alike (the prediction is an argmax over classes)."""
        convs = [n for n, m in model.named_modules() if n.startswith("classifier.") and isinstance(m, nn.Conv2d)]
        return Calibration(layers=(convs[-1],), weighting="uniform") if convs else None

    def output_transform(self, output: Any) -> torch.Tensor:
        """``output["out"]``; with an ``aux`` output, ``out + 0 * aux`` outside exports.

        The sum is numerically ``out`` but keeps the aux head in torch-pruning's trace, so a pruned
        backbone channel that feeds it also leaves its input (a trace of ``out`` alone leaves the aux
        head out of every group and breaks the forward). ONNX and JIT exports get ``out`` only.
        """
        if not isinstance(output, dict):
            return output
        out, aux = output["out"], output.get("aux")
        if aux is None or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return out
        return out + 0.0 * aux

    # ---- region probes ---------------------------------------------------------------------------
    def probe_layer(self, model: nn.Module, info: ModelInfo) -> str | None:
        """The ASPP module's output (``classifier.0``): the neck's feature map that the last two head
        convolutions read, so what it still carries of a target the segmentation can recover."""
        return "classifier.0" if "classifier.0" in dict(model.named_modules()) else None

    def region_batches(self, model: nn.Module, info: ModelInfo, spec: str | None) -> Iterable[Any] | None:
        """Training images with one mask region per class they hold (the background left out)."""
        from tpunlearn.data.regions import MaskRegions

        skip = [0] if info.class_names and info.class_names[0] == "background" else []
        return MaskRegions(self.mask_batches(info, spec, "train"), skip=skip)

    # ---- data and metrics ----------------------------------------------------------------------
    def bind_data(self, model: nn.Module, info: ModelInfo, spec: str | None) -> ModelInfo:
        """Class names from the ``labelmap.txt`` of a VOC-style ``--data`` folder when the model has none
        of its own (``--names``, a saved checkpoint's, a zoo entry's); a count that differs from the head,
        or names that differ from the model's, is one line."""
        names = voc_class_names(spec) if spec is not None else None
        if names is None:
            return info
        k, n = len(names), len(info.class_names)
        shown = listed(names)
        if k != n:
            raise DataError(f"{spec}/labelmap.txt names {k} classes ({shown}), but the model's head has {n} "
                            "outputs: pass the data the model was trained on, or weights with that many classes")
        source = info.extra.get("names_from")
        if source is None:
            info.class_names = list(names)
        elif list(names) != list(info.class_names):
            raise DataError(f"{spec}/labelmap.txt names classes {shown}; {source} names them "
                            f"{', '.join(info.class_names[:12])}: use one set of names")
        return info

    def mask_batches(self, info: ModelInfo, spec: str | None, split: str = "train", batch_size: int = 16,
                     with_masks: bool = True, n_scenes: int | None = None) -> MaskBatches:
        """``(images, masks)`` batches (``with_masks=False``: multi-hot) of ``spec`` at the model's size and
        normalisation; ``split`` is ``"train"``, ``"val"`` or anything else for the held-out data;
        ``n_scenes`` the DigitScenes count of plain ``digits`` (default :data:`DIGITS_SCENES`)."""
        spec = spec if spec is not None else info.extra.get("data")
        if spec is None:
            raise UsageError(f"{info.arch} with {len(info.class_names)} classes has no default data; "
                             "pass --data PATH to a VOC-style folder (or --data digits for an 11-class model, "
                             "glyphs for a 25-class one)")
        norm = info.extra.get("normalize") or {}
        split = split if split in ("train", "val") else "test"
        options: dict[str, Any] = {"batch_size": batch_size, "with_masks": with_masks, "mean": norm.get("mean"),
                                   "std": norm.get("std")}
        glyphs = glyphs_count(str(spec))
        if glyphs is not None:
            if len(info.class_names) != GLYPH_MASK_CLASSES:
                raise UsageError(f"GlyphScenes has {GLYPH_MASK_CLASSES} segmentation classes (background + 24 "
                                 f"glyphs); this model has {len(info.class_names)}: pass --data PATH to a VOC-style "
                                 "folder")
            n = GLYPHS_SCENES[split] if n_scenes is None else int(n_scenes)
            return GlyphScenesMasks(split, glyphs or n, info.input_size[1:], **options)
        n = DIGITS_SCENES[split] if n_scenes is None else int(n_scenes)
        return mask_batches(str(spec), split, info.input_size[1:], len(info.class_names), n, **options)

    def samples(self, model: nn.Module, info: ModelInfo, spec: str | None,
                batch_size: int = 32) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """``(images (B, 3, H, W), multi_hot (B, C))`` batches of the training data; multi_hot from the masks."""
        return self.mask_batches(info, spec, "train", batch_size, with_masks=False)

    def evaluate(self, model: nn.Module, info: ModelInfo, spec: str | None, **kw: Any) -> Evaluation:
        """Per-class IoU (mIoU, pixel accuracy, the confusion matrix) on DigitScenes ``test`` or the
        folder's ``val`` list, by class name."""
        return self._evaluation(model, info, spec, "eval")

    def validate(self, model: nn.Module, info: ModelInfo, spec: str | None, **kw: Any) -> Evaluation:
        """The same on DigitScenes' ``val`` split or the folder's ``val`` list."""
        return self._evaluation(model, info, spec, "val")

    def _evaluation(self, model: nn.Module, info: ModelInfo, spec: str | None, split: str,
                    batch_size: int = 16) -> Evaluation:
        from tpunlearn import evaluate

        cm = evaluate.confusion_matrix(model, self.mask_batches(info, spec, split, batch_size),
                                       len(info.class_names), IGNORE_INDEX)
        result = evaluate.segmentation_evaluation(cm, list(info.class_names))
        result.extra["split"] = f"{split} split of {spec or info.extra.get('data') or 'digits'}"
        return result

    def segmentation_metrics(self, model: nn.Module, info: ModelInfo, spec: str | None,
                             batch_size: int = 16, split: str = "eval") -> dict[str, Any]:
        """:func:`tpunlearn.evaluate.segmentation_metrics` (IoU, mIoU, pixel accuracy, confusion) on the
        held-out data (``split="val"``: the validation split instead)."""
        from tpunlearn import evaluate

        return evaluate.segmentation_metrics(model, self.mask_batches(info, spec, split, batch_size),
                                             list(info.class_names), IGNORE_INDEX)

    def miou(self, model: nn.Module, info: ModelInfo, spec: str | None) -> float:
        """Mean IoU over the classes that occur (in ground truth or prediction)."""
        return self.segmentation_metrics(model, info, spec)["mIoU"]

    # ---- repair fine-tune ----------------------------------------------------------------------
    def repair_data(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int],
                    batch_size: int = 16) -> MaskBatches:
        """Training ``(images, masks)`` batches, the scenes that hold ``forget`` included (the loss
        relabels their pixels): ``digits`` gives :data:`REPAIR_SCENES` scenes, ``digits:N`` N scenes, a
        VOC-style folder its ``train`` list. One repair epoch is one pass over them."""
        return self.mask_batches(info, spec, "train", batch_size, n_scenes=REPAIR_SCENES)

    def repair_loss(self, info: ModelInfo, forget: Sequence[int] = (),
                    original: nn.Module | None = None) -> ForgetLoss:
        """:class:`ForgetLoss` with the family's defaults: ``forget`` pixels relabelled background, and
        (with ``original``) distillation toward the original's outputs on the retained pixels. With no
        ``forget``, plain per-pixel cross-entropy (255 ignored), as the zoo model was trained."""
        return ForgetLoss(tuple(int(t) for t in forget), original)

    def repair(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int], *,
               original: nn.Module | None = None, epochs: int = 1, lr: float = 1e-4, plan: Any = None,
               seed: int = 0, progress: bool = True) -> dict[str, Any]:
        """The generic repair loop over :meth:`repair_data` with :meth:`repair_loss`; the summary adds
        ``objective`` (what was optimised), ``scenes`` (per epoch) and ``scene_passes``."""
        from tpunlearn.repair import repair

        data, loss = self.repair_data(model, info, spec, forget), self.repair_loss(info, forget, original)
        summary = repair(model, data, loss, epochs=epochs, lr=lr, plan=plan, seed=seed, progress=progress)
        return {**summary, "objective": loss.describe(), "scenes": data.n_images,
                "scene_passes": epochs * data.n_images}

    # ---- erase stage ---------------------------------------------------------------------------
    erases = True

    def erase_methods(self) -> tuple[str, ...]:
        """Every erase method but those that read a classifier's Linear head (``features``)."""
        from tpunlearn.erase import HEAD_METHODS, METHODS

        return tuple(m for m in METHODS if m not in HEAD_METHODS)
    # project: 1 direction out of the last 2 convs (classifier.1, classifier.4). Measured on digitscenes-deeplabv3,
    # forget 3, after the library-defaults request (retained mean IoU 89.3 %), cells labelled at their top-left
    # pixel: it left 85.3 % (worst drop 6.9 points; 0.0 % forget IoU in every setting); the last 3 convs at 1
    # direction 84.5 % (13.5), at 2 79.8 % (13.5), at 8 73.5 % (24.2); only classifier.4 at 2: 85.3 % (6.1), but
    # the features it reads unchanged. Cells labelled at their centre (the code now): 85.4 %, worst drop 8.1
    # (benchmarks/results/compare_tasks.md)
    erase_rank = 1
    erase_depth = 2

    def erase_data(self, model: nn.Module, info: ModelInfo, spec: str | None, batch_size: int = 16) -> MaskBatches:
        """Training ``(images, masks)`` batches, forget scenes included: :data:`ERASE_SCENES` scenes of plain
        ``digits`` (``digits:N``: N; a folder: its train list)."""
        return self.mask_batches(info, spec, "train", batch_size, n_scenes=ERASE_SCENES)

    def erase(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int], *,
              original: nn.Module, method: str | None = None, plan: Any = None, seed: int = 0,
              progress: bool = True) -> dict[str, Any]:
        """:func:`tpunlearn.erase.erase` with ``task="segmentation"`` (per-pixel multi-class on the ``out``
        logits) on :meth:`erase_data`; the summary adds ``scenes``."""
        from tpunlearn.erase import EraseSpec, erase

        data = self.erase_data(model, info, spec)
        spec_ = EraseSpec(method=method or self.erase_default, rank=self.erase_rank, layers=self.erase_depth)
        done = erase(model, original, data, forget, spec=spec_, task="segmentation", plan=plan, seed=seed,
                     progress=progress)
        return {**done, "scenes": data.n_images}

    # ---- saving --------------------------------------------------------------------------------
    def checkpoint(self, model: nn.Module, info: ModelInfo) -> dict[str, Any]:
        """The ``tpunlearn-deeplabv3/1`` dict that :meth:`save` writes: builder arch and kwargs, class names,
        input size, normalisation, pruning history and float32 state dict, plain values (it loads with
        ``torch.load(weights_only=True)``); a zoo model's ``"zoo": {"name", "train"}``, a pruned copy's
        ``{"name", "pruned"}``."""
        arch = info.arch if info.arch in ARCHS else info.extra.get("builder")
        if arch not in ARCHS:
            raise UsageError(f"{info.arch} is no DeepLabv3 arch, and info.extra['builder'] names none")
        kwargs = {"num_classes": len(info.class_names), "aux_loss": getattr(model, "aux_classifier", None) is not None,
                  **(info.extra.get("builder_kwargs") or {})}
        payload = {
            "format": SAVE_FORMAT,
            "arch": arch,
            "kwargs": {"num_classes": int(kwargs["num_classes"]), "aux_loss": bool(kwargs["aux_loss"])},
            "class_names": list(info.class_names),
            "input_size": [int(v) for v in info.input_size],
            "normalize": info.extra.get("normalize"),
            "history": pruning_history(info.extra.get("history")),
            "task": info.task,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }
        record = info.extra.get("zoo")
        if isinstance(record, dict) and record.get("name"):
            # a pruned copy names its zoo origin but not the original's training record and test IoU
            payload["zoo"] = dict(record) if not payload["history"] else {"name": record["name"], "pruned": True}
        return payload

    def save(self, model: nn.Module, info: ModelInfo, path: str | Path, half: bool = False) -> None:
        """:meth:`checkpoint`, atomically; ``half=True`` stores floating-point tensors in fp16 (the zoo's
        checkpoints; they load back as float32)."""
        from tpunlearn.io import save_torch

        payload = self.checkpoint(model, info)
        if half:
            payload["state_dict"] = {k: (v.half() if torch.is_floating_point(v) else v).contiguous()
                                     for k, v in payload["state_dict"].items()}
        save_torch(payload, path)


# ---- the repair objective ------------------------------------------------------------------------
@dataclass(eq=False)
class ForgetLoss:
    """``loss(output, batch)`` of a repair that forgets ``forget`` in segmentation (batch = images, masks).

    Cross-entropy toward the masks with each ``forget`` pixel relabelled by ``redirect``:
    ``"background"`` (class 0: what a model never taught the class says of it), ``"next"`` (the
    original's best class other than ``forget``; needs ``original``) or ``"ignore"`` (left out of
    the loss), each forget pixel weighing ``forget_weight`` retained ones in the mean (they are few:
    a digit covers ~1 % of a DigitScenes scene). Plus ``distill`` x T^2 x the KL divergence, at
    temperature T, from the original's to the model's class distribution over the retained classes,
    on the retained pixels (``original`` in eval mode, no gradient; none without it). Forgetting
    background (0) redirects to ``"next"``.
    """

    forget: tuple[int, ...] = ()
    original: nn.Module | None = None
    redirect: str = "background"
    distill: float = 1.0
    temperature: float = 2.0
    forget_weight: float = 10.0

    def __post_init__(self) -> None:
        if self.redirect not in REDIRECTS:
            raise UsageError(f"unknown redirect {self.redirect!r}; choose one of {', '.join(REDIRECTS)}")
        if self.redirect == "background" and 0 in self.forget:
            self.redirect = "next"
        if self.redirect == "next" and self.forget and self.original is None:
            raise UsageError("redirect='next' needs the original model (what it says of the forget pixels)")
        if self.distill < 0 or self.temperature <= 0 or self.forget_weight <= 0:
            raise UsageError(f"ForgetLoss needs distill >= 0, temperature > 0 and forget_weight > 0, got "
                             f"{self.distill}, {self.temperature}, {self.forget_weight}")

    def __call__(self, output: Any, batch: Any) -> torch.Tensor:
        return self.terms(output, batch)["loss"]

    def terms(self, output: Any, batch: Any) -> dict[str, torch.Tensor]:
        """``{"loss", "ce", "distill", "target"}``: the total, its two terms and the CE target masks."""
        logits = main_tensor(output)
        masks = torch.stack([m.long() for m in batch[1]]).to(logits.device)
        if masks.shape[-2:] != logits.shape[-2:]:
            logits = F.interpolate(logits, size=tuple(masks.shape[-2:]), mode="bilinear", align_corners=False)
        wants_teacher = self.forget and self.original is not None and (self.distill > 0 or self.redirect == "next")
        teacher = self.teacher(batch[0], tuple(masks.shape[-2:])) if wants_teacher else None
        target = self.targets(masks, teacher, logits.shape[1])
        ce = self.cross_entropy(logits, target, masks)
        kd = logits.new_zeros(())
        if teacher is not None and self.distill > 0:
            kd = self.distillation(logits, teacher, masks)
        return {"loss": ce + self.distill * kd, "ce": ce, "distill": kd, "target": target}

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Per-pixel CE toward ``target`` (255 ignored), forget pixels weighted ``forget_weight``."""
        if self.forget_weight == 1.0 or not self.forget:
            return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
        weight = (target != IGNORE_INDEX).float()
        weight[redirect_masks(masks, self.forget, IGNORE_INDEX) == IGNORE_INDEX] *= self.forget_weight
        return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)

    def teacher(self, images: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """The original's logits at ``size`` (its eval mode, no gradient; its own mode flags restored)."""
        assert self.original is not None
        with torch.no_grad(), eval_mode(self.original):
            out = main_tensor(self.original(images.to(model_device(self.original))))
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out.float()

    def retained(self, num_classes: int) -> list[int]:
        return [c for c in range(num_classes) if c not in self.forget]

    def targets(self, masks: torch.Tensor, teacher: torch.Tensor | None, num_classes: int) -> torch.Tensor:
        """The CE targets: ``masks`` with the forget pixels relabelled by :attr:`redirect`."""
        if not self.forget:
            return masks
        if self.redirect == "ignore":
            return redirect_masks(masks, self.forget, IGNORE_INDEX)
        if self.redirect == "background":
            return redirect_masks(masks, self.forget, 0)
        assert teacher is not None
        keep = torch.tensor(self.retained(num_classes), device=teacher.device)
        best = keep[teacher[:, keep].argmax(1)]
        return redirect_masks(masks, self.forget, best.to(masks.device))

    def distillation(self, logits: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """T^2 x mean over retained pixels of KL(teacher || model), both over the retained classes only
        (so it is zero when the model's outputs equal the original's)."""
        keep = self.retained(logits.shape[1])
        t = self.temperature
        log_p = F.log_softmax(logits[:, keep] / t, dim=1)
        log_q = F.log_softmax(teacher.to(logits.device)[:, keep] / t, dim=1)
        kl = (log_q.exp() * (log_q - log_p)).sum(1)
        pixels = redirect_masks(masks, self.forget, IGNORE_INDEX) != IGNORE_INDEX
        if not bool(pixels.any()):
            return logits.new_zeros(())
        return (t * t) * kl[pixels].mean()

    def describe(self) -> dict[str, Any]:
        """What the repair optimises, for report.json["repair"]["objective"]."""
        distil = self.original is not None and self.distill > 0 and bool(self.forget)
        return {"loss": "per-pixel cross-entropy (255 ignored)", "forget": list(self.forget),
                "forget_pixels": self.redirect if self.forget else None,
                "forget_pixel_weight": self.forget_weight if self.forget and self.redirect != "ignore" else None,
                "distillation": ({"weight": self.distill, "temperature": self.temperature,
                                  "on": "retained pixels, retained classes", "teacher": "the original model"}
                                 if distil else None)}


# ---- building helpers ----------------------------------------------------------------------------
def _reconcile_plain(state: BuildState, ckpt: Any) -> None:
    """A plain state dict: the backbone, ``num_classes`` from its head and the aux head from its keys,
    unless given."""
    from tpunlearn.safeload import describe_checkpoint

    sd = _state_dict_of(ckpt)
    if sd is None:
        raise WeightsError(f"{state.weights} is {describe_checkpoint(ckpt)}, not DeepLabv3 weights; "
                           "pass the --arch it was made for")
    _check_backbone(state, sd)
    head = sd.get("classifier.4.weight")
    if state.kwargs.get("num_classes") is None and isinstance(head, torch.Tensor) and head.ndim == 4:
        state.kwargs["num_classes"] = int(head.shape[0])
    has_aux = any(k.startswith("aux_classifier.") for k in sd)
    aux = state.kwargs.get("aux_loss")
    if aux is None:
        state.kwargs["aux_loss"] = has_aux
    elif aux and not has_aux:
        raise WeightsError(f"{state.weights} has no auxiliary head weights; build with aux_loss=False")
    elif not aux:
        sd = {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}
    state.state = sd


def _check_backbone(state: BuildState, sd: dict[str, torch.Tensor]) -> None:
    """``--arch deeplabv3`` takes the builder the keys show; a named one must be what they show."""
    found = infer_builder(sd)
    if state.builder == GENERIC:
        if found is None:
            raise WeightsError(f"cannot tell the DeepLabv3 backbone of {state.weights} from its keys; name it: "
                               f"--arch {' | '.join(ARCHS[:3])}")
        state.builder = found
    elif found is not None and found != state.builder:
        raise WeightsError(f"{state.weights} holds a {found} (by its keys), not a {state.builder}; "
                           f"pass --arch {found}")


def infer_builder(sd: dict[str, torch.Tensor]) -> str | None:
    """The torchvision builder whose keys ``sd`` has (None when they show none of :data:`ARCHS`).

    MobileNetV3's backbone is an indexed ``features`` list (``backbone.0.0.weight``); ResNet-50 and
    -101 have bottleneck blocks (``conv3``) and 6 or 23 blocks in ``layer3``; the zoo's tiny ResNet
    basic blocks (no ``conv3``).
    """
    if "backbone.0.0.weight" in sd:
        return "deeplabv3_mobilenet_v3_large"
    if "backbone.layer1.0.conv3.weight" in sd:
        blocks = {k.split(".")[2] for k in sd if k.startswith("backbone.layer3.")}
        return "deeplabv3_resnet101" if len(blocks) > 6 else "deeplabv3_resnet50"
    if "backbone.layer1.0.conv2.weight" in sd:
        return "deeplabv3_resnet_tiny"
    return None


def _state_dict_of(ckpt: Any) -> dict[str, torch.Tensor] | None:
    """A plain state dict, or the one under ``model`` / ``state_dict`` (torchvision references,
    Lightning), with DataParallel's ``module.`` prefix dropped."""
    if isinstance(ckpt, nn.Module) and type(ckpt).__module__.startswith("torchvision."):
        return ckpt.state_dict()  # torch.save(model) of a torchvision model
    if not isinstance(ckpt, dict):
        return None
    sd = next((ckpt[key] for key in ("model", "state_dict") if isinstance(ckpt.get(key), dict)), ckpt)
    if not (sd and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())):
        return None
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _builder(arch: str) -> Callable[..., nn.Module]:
    """torchvision's builder of ``arch`` (the zoo's own for ``deeplabv3_resnet_tiny``)."""
    if arch == "deeplabv3_resnet_tiny":
        from tpunlearn.zoo_models import deeplabv3_resnet_tiny

        return deeplabv3_resnet_tiny
    from torchvision.models import segmentation

    return getattr(segmentation, arch)


def _class_names(num_classes: int, given: Sequence[str] | None) -> list[str]:
    if given is None:
        given = {len(VOC_CLASSES): VOC_CLASSES, len(DIGIT_CLASSES): DIGIT_CLASSES}.get(num_classes)
    names = [str(n) for n in given] if given is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise UsageError(f"{len(names)} class names given for a model with {num_classes} classes")
    return names


def _input_size(imgsz: int | Sequence[int] | None) -> tuple[int, int, int]:
    if imgsz is None:
        return (3, DEFAULT_SIZE, DEFAULT_SIZE)
    dims = [int(imgsz)] * 2 if isinstance(imgsz, int) else [int(v) for v in imgsz]
    if len(dims) == 3 and dims[0] == 3:
        dims = dims[1:]
    if len(dims) != 2:
        raise UsageError(f"imgsz must be an int or (H, W), got {imgsz!r}")
    if min(dims) < 16:
        raise UsageError(f"imgsz must be at least 16 pixels, got {dims[0]}x{dims[1]}")
    return (3, dims[0], dims[1])


def _normalization(normalize: str | dict[str, Any] | None, num_classes: int) -> dict[str, list[float]] | None:
    """The mean and std the data are normalised with (None: images stay in [0, 1])."""
    if normalize is None:
        normalize = "imagenet" if num_classes == len(VOC_CLASSES) else "none"
    if normalize == "none":
        return None
    spec = IMAGENET if normalize == "imagenet" else normalize
    if not isinstance(spec, dict):
        raise UsageError(f"unknown normalize {normalize!r}; use 'imagenet', 'none' or {{'mean': ..., 'std': ...}}")
    mean, std = spec.get("mean"), spec.get("std")
    if not (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3):
        raise UsageError("normalize needs {'mean': [r, g, b], 'std': [r, g, b]}")
    if any(float(v) <= 0 for v in std):
        raise UsageError("normalize std values must be > 0")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
