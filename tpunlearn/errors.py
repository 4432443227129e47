"""Exceptions raised by tpunlearn.

Every user mistake the library can detect raises a subclass of :class:`TpunlearnError`
with a one-line message that says what is wrong and how to fix it. The CLI prints that
line and exits non-zero instead of showing a traceback.
"""
from __future__ import annotations


class TpunlearnError(Exception):
    """Base class of every error tpunlearn raises on purpose."""

    exit_code: int = 1


class UsageError(TpunlearnError, ValueError):
    """An argument is invalid (bad delta, unknown target, ...)."""

    exit_code = 2


class DataError(TpunlearnError):
    """The data cannot be read, or lacks what the request needs."""


class WeightsError(TpunlearnError):
    """Weights are missing, corrupt, or belong to another architecture."""


class PlanError(TpunlearnError):
    """A plan or graph does not fit the model it is applied to."""


class DistributedError(TpunlearnError):
    """The ranks of a torch.distributed run cannot work together (no process group, or ranks that disagree)."""
