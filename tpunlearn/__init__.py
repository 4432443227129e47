"""tpunlearn: target-level machine unlearning by structural pruning.

Find the channels that carry one target (a class, an attribute, an object type) and no
other, and remove them for real with torch-pruning. Submodules load lazily so that
``import tpunlearn`` and ``tpunlearn --help`` stay fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"targets", "scoring", "graph", "plan", "api", "export", "report", "evaluate", "zoo", "data", "errors", "layers", "safeload", "io", "cache", "models"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"tpunlearn.{name}")
    if name in {"unlearn", "UnlearnResult"}:
        return getattr(importlib.import_module("tpunlearn.api"), name)
    raise AttributeError(f"module 'tpunlearn' has no attribute {name!r}")


__all__ = ["unlearn", "UnlearnResult", "__version__", *sorted(_SUBMODULES)]
