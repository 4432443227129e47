"""Build any model tpunlearn knows by name: a zoo model, or an architecture of a registered family.

This is the one place where a name (``--arch``) becomes an adapter, a model and its
:class:`~tpunlearn.adapters.base.ModelInfo`: zoo names go to the zoo (which hands its entry
to the family's adapter), every other name to the first registered family that builds it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["adapter_for", "load", "load_model", "repair"]


def adapter_for(arch: str) -> Any:
    """The adapter that builds ``arch`` (a zoo name or an architecture); unknown names are a UsageError."""
    from tpunlearn import adapters, zoo

    if arch in zoo.ZOO:
        return zoo.adapter_of(arch)
    return adapters.for_arch(arch)


def load_model(arch: str, weights: str | Path | None = None, trust_checkpoint: bool = False,
               **options: Any) -> tuple[Any, Any, Any]:
    """``(adapter, model, info)`` for ``arch`` with ``weights`` (a random model when None, except
    for zoo names, which load their bundled weights); ``options`` go to the family's build."""
    from tpunlearn import zoo

    if arch in zoo.ZOO:
        return zoo.build_model(arch, weights, trust_checkpoint=trust_checkpoint, **options)
    adapter = adapter_for(arch)
    model, info = adapter.build(arch, weights, trust_checkpoint=trust_checkpoint, **options)
    return adapter, model, info


def load(path: str | Path, trust_checkpoint: bool = False) -> tuple[Any, Any]:
    """``(model, info)`` rebuilt from any checkpoint tpunlearn saved, of every family, in eval mode.

    The file names its own architecture: an ultralytics checkpoint its model (``yolov5*``, a
    ``yolo train`` run's ``best.pt``), a ``tpunlearn-*`` checkpoint (``prune``'s ``model.pt``, a
    zoo file) its ``timm_name`` or ``arch``, and a zoo model or a pruned copy of one its zoo name (built
    as that zoo model, with its data and record); the family's adapter then replays the pruning history
    and loads the weights. A file that names no architecture (a plain state dict) is a
    :class:`~tpunlearn.errors.WeightsError` that says to build it with :func:`load_model`.
    """
    from tpunlearn import adapters, zoo
    from tpunlearn.errors import WeightsError
    from tpunlearn.safeload import describe_checkpoint, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such checkpoint: {path}")
    detector = adapters.get("yolov5")
    if detector.handles(str(path)):  # an ultralytics checkpoint: its pickled model is the architecture
        model, info = detector.build(str(path), trust_checkpoint=trust_checkpoint)
        name = info.extra.get("saved_as")
        if name in zoo.ZOO and zoo.entry(name).family == detector.name:  # a zoo detector or its pruned copy
            return zoo.build_model(name, path, trust_checkpoint=trust_checkpoint)[1:]
        return model, info
    ckpt = load_checkpoint(path, trust=trust_checkpoint)
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    arch = (ckpt.get("timm_name") or ckpt.get("arch")) if isinstance(fmt, str) and fmt.startswith("tpunlearn-") \
        else None
    record = ckpt.get("zoo") if isinstance(fmt, str) and fmt.startswith("tpunlearn-") else None
    name = record.get("name") if isinstance(record, dict) else ckpt.get("name") if fmt == zoo.FORMAT else None
    if isinstance(name, str) and name in zoo.ZOO:
        return zoo.build_model(name, path, trust_checkpoint=trust_checkpoint)[1:]  # a zoo model or its pruned copy
    if not isinstance(arch, str):
        raise WeightsError(f"{path} is {describe_checkpoint(ckpt)}, which names no architecture; build it with "
                           "tpunlearn.models.load_model(ARCH, weights=path) (or `--arch ARCH --weights PATH`)")
    return adapter_for(arch).build(arch, path, trust_checkpoint=trust_checkpoint)


def repair(model: Any, info: Any, data: str | None = None, forget: Any = (), *, original: Any = None,
           epochs: int = 1, lr: float | None = None, plan: Any = None, seed: int = 0,
           progress: bool = True) -> dict[str, Any]:
    """Fine-tune a pruned ``model`` in place on the retained targets of ``data`` (a data spec as for
    ``--data``; None: the model's own data), through its family's repair (the adapter's
    :meth:`~tpunlearn.adapters.base.Adapter.repair`); ``original`` is the unpruned model to distil
    from, ``lr`` the learning rate (None: the family's measured ``repair_lr``), ``plan`` the
    request's :class:`~tpunlearn.plan.PrunePlan` (mask-mode channels stay zero). Returns the repair
    summary that ``prune --repair-epochs`` writes to report.json.
    """
    from tpunlearn import adapters

    forget = [int(forget)] if isinstance(forget, int) else [int(t) for t in forget]
    adapter = adapters.get(info.family)
    return adapter.repair(model, info, data, forget, original=original, epochs=epochs,
                          lr=float(adapter.repair_lr if lr is None else lr), plan=plan, seed=seed, progress=progress)
