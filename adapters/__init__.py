"""Model families for tpunlearn, installed as ``tpunlearn.adapters``.

Importing this package registers every family. Adding a family is one new module here and
one import line below.
"""
from . import deeplabv3 as _deeplabv3  # noqa: F401  (registers "deeplabv3")
from . import timm as _timm  # noqa: F401  (registers "timm")
from . import yolov5 as _yolov5  # noqa: F401  (registers "yolov5")
from .base import Adapter, ModelInfo
from .registry import for_arch, get, names, register

__all__ = ["Adapter", "ModelInfo", "for_arch", "get", "names", "register"]
