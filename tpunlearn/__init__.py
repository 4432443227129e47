"""tpunlearn: target-level machine unlearning by structural pruning.

Find the channels that carry one target (a class, an attribute, an object type) and no
other, and remove them for real with torch-pruning. Submodules load lazily so that
``import tpunlearn`` and ``tpunlearn --help`` stay fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"adapters", "api", "audit", "auto", "cache", "data", "distributed", "erase", "errors", "evaluate",
               "export", "graph", "io", "layers", "models", "plan", "privacy", "repair", "report", "safeload",
               "scoring", "settings", "targets", "torchutils", "zoo"}
# name -> the submodule holding it
_NAMES = {"unlearn": "api", "load": "api", "UnlearnResult": "api", "UnlearnSettings": "settings", "EraseSpec": "erase"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"tpunlearn.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"tpunlearn.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'tpunlearn' has no attribute {name!r}")


__all__ = [*_NAMES, "__version__", *sorted(_SUBMODULES)]
