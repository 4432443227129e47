"""The rendering of benchmarks/bench_compare.py's cost line: what the run measured, never NaN."""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import bench_module


@pytest.fixture(scope="module")
def bench() -> Iterator[Any]:
    yield from bench_module("bench_compare")


def _result(retrain_s: Any, reference_s: Any) -> dict[str, Any]:
    return {"cost": {"graph_build_s": 9.0, "request_s": 1.0, "retrain_s": retrain_s, "reference_s": reference_s},
            "reference_note": "the reference recipe"}


@pytest.mark.parametrize("missing", [None, float("nan")])  # None: this run's JSON; NaN: an older run's
def test_cost_line_says_not_run_for_a_missing_retrain_and_never_prints_nan(bench: Any, missing: Any) -> None:
    text = bench.cost_sentence(_result(missing, 1500.0))
    assert not re.search(r"\bnan", text, re.IGNORECASE), text
    assert "retraining without the forget scenes: not run" in text
    assert "one target-level reference 1500 s on average = **150x** the graph build plus request" in text
    assert "(the reference recipe)" in text
    neither = bench.cost_sentence(_result(missing, missing))
    assert not re.search(r"\bnan", neither, re.IGNORECASE) and neither.count("not run") == 2
    assert "reference recipe" not in neither  # the note describes a row that did not run


def test_cost_line_gives_both_ratios_when_both_ran(bench: Any) -> None:
    text = bench.cost_sentence(_result(500.0, 1500.0))
    assert "retraining without the forget scenes 500 s on average = **50x**" in text and "not run" not in text


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_page_of_a_run_without_a_retrain_row_has_no_nan(bench: Any, missing: Any) -> None:
    result = {**_result(missing, 1500.0), "setting_labels": ["forget 3, seed 0"], "retrain_note": "r", "summary": {},
              "settings": [], "argv": ["--stem", "x"]}
    page = bench.markdown(result)
    assert not re.search(r"\bnan", page, re.IGNORECASE) and "not run" in page
