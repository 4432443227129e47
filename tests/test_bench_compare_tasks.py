"""The rendering of benchmarks/bench_compare_tasks.py: which rows the page says still carry the
forgotten digit, which layers it calls saturated or untouched, and the "not available" rows."""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import bench_module


@pytest.fixture(scope="module")
def bench() -> Iterator[Any]:
    yield from bench_module("bench_compare_tasks")


def _row(forget: float, neck: tuple[float, float], head: tuple[float, float]) -> dict[str, Any]:
    return {"forget": forget, "forget_before": 0.9, "retained_mean": 0.9, "retained_mean_before": 0.9,
            "worst_retained_digit": "5", "worst_retained_drop_points": 1.0, "seconds": 1.0, "params": 10, "macs": 20,
            "probes": {"neck": {"layer": "n", "linear_auc": neck[0], "knn_auc": neck[1]},
                       "head_input": {"layer": "h", "linear_auc": head[0], "knn_auc": head[1]}}}


def _result() -> dict[str, Any]:
    rows = {"Original": _row(0.9, (0.95, 0.93), (1.0, 1.0)),
            "forgets, features kept": _row(0.0, (0.95, 0.93), (0.99, 0.995)),
            "forgets, features gone": _row(0.01, (0.6, 0.55), (0.6, 0.5)),
            "does not forget": _row(0.8, (0.95, 0.93), (1.0, 1.0)),
            "repair": {"not_available": "no repair here", "seconds": 0.5}}
    return {"task": "t", "metric": "IoU", "forget": "3", "probe_layers": {"neck": "n", "head_input": "h"},
            "regions": "boxes", "scale": {"score": "a", "evaluate": "b", "probe": "c", "repair": "d"}, "rows": rows}


def test_carried_names_only_rows_that_forget_at_the_output_but_keep_the_probe(bench: Any) -> None:
    still = bench.carried(_result())
    assert len(still) == 1 and still[0].startswith("forgets, features kept")


def test_unchanged_needs_unsaturated_identical_values(bench: Any) -> None:
    same = bench.unchanged(_result())
    assert len(same) == 1 and same[0].startswith("`n`")  # the head input's 1.000 is saturation, not identity
    assert "forgets, features kept" in same[0] and "features gone" not in same[0]


def test_markdown_has_every_row_and_says_what_is_missing(bench: Any) -> None:
    text = bench.markdown([_result()], "python benchmarks/bench_compare_tasks.py", 60.0)
    assert "not available: no repair here" in text and "No retrained reference" in text
    assert "neck `n` linear / k-NN AUC" in text
    assert text.count("\n| ") == 6  # header and five rows
    assert bench.saturated(_result()) == []  # "features gone" reads 0.6 at both layers


def test_a_probe_that_did_not_fit_is_na_on_the_page_and_the_progress_line(bench: Any) -> None:
    res = _result()
    del res["rows"]["forgets, features gone"]["probes"]["neck"]["knn_auc"]
    res["rows"]["does not forget"]["probes"].pop("head_input")
    text = bench.markdown([res], "python benchmarks/bench_compare_tasks.py", 60.0)
    assert not re.search(r"\bnan", text, re.IGNORECASE) and "0.600 / n/a" in text and "n/a / n/a" in text
    line = bench.probe_line(res["rows"]["forgets, features gone"]["probes"])
    assert line == "neck lin/knn 0.600/n/a head_input lin/knn 0.600/0.500"
