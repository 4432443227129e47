"""Graph caches: every target scored once, so that a forget request needs no scoring.

A cache holds the channel scores (alpha per layer and target) from which every target's
essential graph follows for any ``delta``, plus what identifies the model they belong to:
its layer signature and the sha256 of its weights. Loading checks both.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from tpunlearn.errors import DataError, PlanError
from tpunlearn.io import JsonFormat
from tpunlearn.plan import check_signature, signature
from tpunlearn.scoring import ChannelScores

CACHE_FORMAT = JsonFormat("tpunlearn-cache/1", "tpunlearn graph cache", PlanError,
                          hint="; make one with `tpunlearn graph`")
FORMAT = CACHE_FORMAT.tag


def save_cache(path: str | os.PathLike[str], scores: ChannelScores, model: nn.Module,
               meta: Mapping[str, Any] | None = None) -> None:
    """Write ``scores`` for ``model`` to ``path`` (JSON, atomically)."""
    CACHE_FORMAT.write(path, {"signature": signature(model), "meta": dict(meta or {}), "scores": scores.to_dict()})


def load_cache(path: str | os.PathLike[str], model: nn.Module,
               weights_sha256: str | None = None) -> tuple[ChannelScores, dict[str, Any]]:
    """Scores and metadata from a cache, refused when it was made for another model."""
    scores, meta = CACHE_FORMAT.read(path, lambda data: _parse(data, model))
    cached = meta.get("weights_sha256")
    if weights_sha256 and cached and cached != weights_sha256:
        raise PlanError(f"{path} was made from other weights (sha256 {cached[:12]}..., "
                        f"these are {weights_sha256[:12]}...)")
    return scores, meta


def _parse(data: Mapping[str, Any], model: nn.Module) -> tuple[ChannelScores, dict[str, Any]]:
    """A cache's scores, checked against ``model``, and its metadata."""
    try:
        expected = data["signature"]
        if not isinstance(expected, dict):
            raise PlanError("its model signature is not a mapping")
        check_signature(model, expected, what="the cache")
        scores = ChannelScores.from_dict(data["scores"])
        for layer in scores.layers:
            if layer not in expected:
                raise PlanError(f"its scores name layer {layer!r}, which the model does not have")
            if expected[layer][0] != scores.channels[layer]:
                raise PlanError(f"its scores give {layer} {scores.channels[layer]} channels, the model has "
                                f"{expected[layer][0]}")
    except (PlanError, DataError) as exc:
        raise PlanError(f"{exc}; rebuild it with `tpunlearn graph` for this model") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PlanError(f"a damaged graph cache ({type(exc).__name__}: {exc}); rebuild it with "
                        "`tpunlearn graph`") from None
    meta = data.get("meta")
    return scores, dict(meta) if isinstance(meta, dict) else {}
