"""Build any model tpunlearn knows by name: a zoo model, or an architecture of a registered family.

This is the one place where a name (``--arch``) becomes an adapter, a model and its
:class:`~tpunlearn.adapters.base.ModelInfo`: zoo names go to the zoo (which hands its entry
to the family's adapter), every other name to the first registered family that builds it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["adapter_for", "load_model"]


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
