"""Graph caches: every target scored once, so that a forget request needs no scoring.

A cache holds the channel scores (alpha per layer and target) from which every target's
essential graph follows for any ``delta``, plus what identifies the model they belong to:
its layer signature and the sha256 of its weights. Loading checks both.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from torch import nn

from tpunlearn.errors import DataError, PlanError
from tpunlearn.io import read_json, write_json
from tpunlearn.plan import check_signature, signature
from tpunlearn.scoring import ChannelScores

FORMAT = "tpunlearn-cache/1"


def save_cache(path: str | os.PathLike[str], scores: ChannelScores, model: nn.Module,
               meta: Mapping[str, Any] | None = None) -> None:
    """Write ``scores`` for ``model`` to ``path`` (JSON, atomically)."""
    write_json(path, {"format": FORMAT, "signature": signature(model), "meta": dict(meta or {}),
                      "scores": scores.to_dict()})


def load_cache(path: str | os.PathLike[str], model: nn.Module,
               weights_sha256: str | None = None) -> tuple[ChannelScores, dict[str, Any]]:
    """Scores and metadata from a cache, refused when it was made for another model."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        what = f" but a {data['format']} file" if isinstance(data, dict) and isinstance(data.get("format"), str) else ""
        raise PlanError(f"{path} is not a tpunlearn graph cache ({FORMAT}){what}; make one with `tpunlearn graph`")
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
        raise PlanError(f"{path}: {exc}; rebuild it with `tpunlearn graph` for this model") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PlanError(f"{path} is a damaged graph cache ({type(exc).__name__}: {exc}); rebuild it with "
                        "`tpunlearn graph`") from None
    meta = data.get("meta", {}) if isinstance(data.get("meta"), dict) else {}
    cached = meta.get("weights_sha256")
    if weights_sha256 and cached and cached != weights_sha256:
        raise PlanError(f"{path} was made from other weights (sha256 {cached[:12]}..., these are {weights_sha256[:12]}...)")
    return scores, meta
