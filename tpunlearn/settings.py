"""The settings of an unlearning request, as data: one frozen dataclass, validated once.

:class:`UnlearnSettings` is the one source of the algorithm's defaults and choices: ``unlearn``
and ``score_targets`` read it, the CLI takes its flags' defaults and ``choices`` from it, and
``report.json`` records it. This module imports no torch, so the CLI can build its parser
from it and still answer ``--help`` at once.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Final, Literal, get_args

from tpunlearn.errors import UsageError

Mode = Literal["physical", "mask"]  # physical: remove the channels; mask: zero them, shapes kept
Coupled = Literal["protect", "prune", "zero"]  # groups that reach unscored layers: leave, remove, or zero
Method = Literal["gradcam", "abs", "taylor"]  # channel score: signed Grad-CAM alpha, |alpha|, first-order Taylor
MODES: Final[tuple[str, ...]] = get_args(Mode)
COUPLED: Final[tuple[str, ...]] = get_args(Coupled)
METHODS: Final[tuple[str, ...]] = get_args(Method)

DEVICE_FORMS: Final = "cpu, cuda or cuda:N"
DEVICE_PATTERN: Final = re.compile(r"cpu|cuda(:\d+)?")

# The `tpunlearn prune` flag of each setting the CLI exposes, in the order a command line lists them.
CLI_FLAGS: Final = {"sigma": "--sigma", "delta": "--delta", "retain_delta": "--retain-delta",
                    "retain_tolerance": "--retain-tolerance", "n_per_target": "--samples", "mode": "--mode",
                    "coupled": "--coupled", "align": "--align"}


class Unset(enum.Enum):
    """The type of :data:`UNSET`, the default of ``unlearn``'s setting keywords."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "<from settings>"


UNSET: Final = Unset.UNSET  # a keyword left out: the value in ``settings`` (or its default) applies


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a one-line UsageError unless ``value`` is one of ``choices`` (``what``: "mode", ...)."""
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def check_device(text: str) -> str:
    """``text`` when it names a device form tpunlearn knows (``cpu``, ``cuda``, ``cuda:N``)."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise UsageError(f"unknown device {text!r}; use {DEVICE_FORMS}")
    return text


@dataclass(frozen=True)
class UnlearnSettings:
    """How one request scores, balances and prunes (the paper's sigma and delta, and ours).

    Attributes:
        sigma: how many of the last prunable convolutions (in execution order) are scored.
        delta: top fraction of each scored layer's channels that a forget target selects, in (0, 1].
        retain_delta: top fraction each retained target protects; None means ``delta``.
        retain_tolerance: how many retained targets may also select a channel that is removed: a
            count (0, 1, 2, ...) or a fraction in (0, 1) of the retained targets, rounded (so that
            one value suits 10 classes and 80).
        n_per_target: instances scored per target (the paper used one).
        mode: ``physical`` removes the channels; ``mask`` zeroes filter and norm affine, shapes kept.
        coupled: groups reaching unscored layers: ``protect`` (leave them), ``prune`` (remove the
            whole coupled channel) or ``zero`` (zero only the scored layers' filters).
        method: channel score: ``gradcam`` (signed alpha, the paper's), ``abs`` or ``taylor``.
        group_closure: also score every prunable layer coupled to the scored ones in a
            torch-pruning group, so each group is decided on all its members' scores.
        balanced: False is the paper's "without balance" ablation: every channel a forget
            target selects is flagged, whatever the retained targets need.
        align: keep pruned widths at multiples of ``align`` where they were (ONNX Runtime's CPU
            convolutions slow down at odd widths); None or 1 turns it off.
    """

    sigma: int = 4
    delta: float = 0.05
    retain_delta: float | None = None
    retain_tolerance: float = 0  # a count, or a fraction in (0, 1) of the retained targets
    n_per_target: int = 32
    mode: Mode = "physical"
    coupled: Coupled = "protect"
    method: Method = "gradcam"
    group_closure: bool = True
    balanced: bool = True
    align: int | None = 8

    def __post_init__(self) -> None:
        for name, value in (("delta", self.delta), ("retain_delta", self.retain_delta)):
            if value is not None and not 0.0 < float(value) <= 1.0:
                raise UsageError(f"{name} must lie in (0, 1], got {value}")
        if int(self.sigma) < 1:
            raise UsageError(f"sigma must be >= 1, got {self.sigma}")
        check_choice("mode", self.mode, MODES)
        check_choice("coupled policy", self.coupled, COUPLED)
        tolerance = float(self.retain_tolerance)
        if tolerance < 0 or (tolerance >= 1 and tolerance != int(tolerance)):
            raise UsageError(f"retain_tolerance must be a count >= 0 or a fraction in (0, 1) of the retained "
                             f"targets, got {self.retain_tolerance}")
        if int(self.n_per_target) < 1:
            raise UsageError(f"n_per_target must be >= 1, got {self.n_per_target}")
        check_choice("scoring method", self.method, METHODS)
        if self.align is not None and int(self.align) < 1:
            raise UsageError(f"align must be >= 1 (1 or None turns it off), got {self.align}")

    @property
    def resolved_retain_delta(self) -> float:
        """The fraction each retained target protects: ``retain_delta``, or ``delta`` when None."""
        return self.retain_delta if self.retain_delta is not None else self.delta

    def resolved_retain_tolerance(self, n_retained: int) -> int:
        """The count of retained targets that may share a removed channel: ``retain_tolerance``, or
        that fraction of ``n_retained`` rounded."""
        tolerance = float(self.retain_tolerance)
        return int(round(tolerance * n_retained)) if 0 < tolerance < 1 else int(tolerance)

    def override(self, **changes: Any) -> UnlearnSettings:
        """A copy with ``changes`` applied, validated; a change whose value is :data:`UNSET` is ignored."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise UsageError(f"unknown setting {unknown[0]!r}; the settings are {', '.join(sorted(names))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not UNSET})

    def command_line(self) -> list[str]:
        """The ``tpunlearn prune`` flags that give these settings (``retain_delta`` resolved; an
        ``align`` of None left out). ``method``, ``group_closure`` and ``balanced`` have no flag."""
        values = {**{f.name: getattr(self, f.name) for f in fields(self)}, "retain_delta": self.resolved_retain_delta}
        out: list[str] = []
        for name, flag in CLI_FLAGS.items():
            if values[name] is not None:
                out += [flag, str(values[name])]
        return out


DEFAULTS: Final = UnlearnSettings()


# The goals a run is judged against (`prune --eval`'s verdict) and `--auto` searches for: the
# forget targets' primary metric at most GOAL_FORGET after, no retained target losing more than
# GOAL_DROP of it.
GOAL_FORGET: Final = 0.02
GOAL_DROP: Final = 0.02
DEFAULT_CONF: Final = 0.25  # detection: ultralytics' own predict confidence, the threshold a deployment uses
