"""Exceptions raised by tpunlearn.

Every user mistake the library can detect raises a subclass of :class:`TpunlearnError`
with a one-line message that says what is wrong and how to fix it. The CLI prints that
line and exits non-zero instead of showing a traceback.
"""
from __future__ import annotations

from collections.abc import Sequence


class TpunlearnError(Exception):
    """Base class of every error tpunlearn raises on purpose."""

    exit_code: int = 1


class UsageError(TpunlearnError, ValueError):
    """An argument is invalid (bad delta, unknown target, ...)."""

    exit_code = 2


class DataError(TpunlearnError):
    """The data cannot be read, or lacks what the request needs."""


class TargetNotInDataError(DataError):
    """No sample holds some requested targets; ``targets`` lists their indices, ``found`` those of the
    requested targets that some sample holds."""

    def __init__(self, message: str, targets: list[int], found: list[int] | None = None) -> None:
        super().__init__(message)
        self.targets = list(targets)
        self.found = list(found or [])


class WeightsError(TpunlearnError):
    """Weights are missing, corrupt, or belong to another architecture."""


class PlanError(TpunlearnError):
    """A plan or graph does not fit the model it is applied to."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint names code outside the allow-list (see :mod:`tpunlearn.safeload`).

    ``names`` holds what it names (``posix.system``, ``builtins.exec``, ...).
    """

    def __init__(self, path: object, names: list[str], why: str = "") -> None:
        self.path, self.names = path, list(names)
        shown = ", ".join(self.names[:3]) + (f" (and {len(self.names) - 3} more)" if len(self.names) > 3 else "")
        self.names_text = shown
        why = why or "which tpunlearn does not load (it loads torch, torchvision, timm and ultralytics model " \
                     "classes and plain data only)"
        super().__init__(f"checkpoint {path} refers to {shown}, {why}; pass --trust-checkpoint only if you "
                         "trust this file")


class TrustedCheckpointWarning(UserWarning):
    """A checkpoint off the allow-list was loaded with full unpickling because it was trusted."""


class DistributedError(TpunlearnError):
    """The ranks of a torch.distributed run cannot work together (no process group, or ranks that disagree)."""


class TracerError(PlanError):
    """torch-pruning cannot trace the architecture, or an operation in it (the message names both)."""


def listed(names: Sequence[str], most: int = 12) -> str:
    """``a, b, c`` for a one-line message: the first ``most`` names, then how many there are in all."""
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")
