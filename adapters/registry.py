"""Registry of adapters: one name per model family, duplicates refused."""
from __future__ import annotations

from typing import TypeVar

from tpunlearn.errors import UsageError

from .base import Adapter

_REGISTRY: dict[str, Adapter] = {}
A = TypeVar("A", bound=type[Adapter])


def register(cls: A) -> A:
    """Class decorator: register one instance of an Adapter subclass under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"adapter {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Adapter:
    """The adapter registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown adapter {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def for_arch(arch: str) -> Adapter:
    """The adapter that builds ``arch`` (first registered family that handles it)."""
    for adapter in _REGISTRY.values():
        if adapter.handles(arch):
            return adapter
    raise UsageError(f"unknown arch {arch!r}: no adapter ({', '.join(names())}) builds it; "
                     "see `tpunlearn zoo` for bundled models")
