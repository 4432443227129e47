"""tpunlearn.io.JsonFormat: the one read/check/write path of plans, graphs, scores and caches."""
from __future__ import annotations

import json

import pytest

from tpunlearn.cache import CACHE_FORMAT
from tpunlearn.errors import DataError, PlanError, UsageError
from tpunlearn.graph import GRAPH_FORMAT
from tpunlearn.io import JsonFormat
from tpunlearn.plan import PLAN_FORMAT
from tpunlearn.scoring import SCORES_FORMAT

KIND = JsonFormat("tpunlearn-test/1", "tpunlearn test file", DataError, hint="; make one with `make`")


def test_write_tags_and_read_parses(tmp_path):
    path = tmp_path / "x.json"
    KIND.write(path, {"a": 1, "format": "ignored"})
    assert json.loads(path.read_text()) == {"format": "tpunlearn-test/1", "a": 1}
    assert list(json.loads(path.read_text())) == ["format", "a"]
    assert KIND.read(path, lambda data: data["a"] + 1) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # written atomically: no temp file left


def test_another_format_is_one_line_that_names_the_file_and_what_it_is(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "tpunlearn-plan/1"}))
    with pytest.raises(DataError) as err:
        KIND.read(path, dict)
    assert str(err.value) == (f"{path}: not a tpunlearn test file (format tpunlearn-test/1 expected, got "
                              "tpunlearn-plan/1); make one with `make`")
    with pytest.raises(DataError, match=r"expected\); make one"):
        KIND.check([1, 2])


def test_errors_of_the_parser_name_the_file_others_pass_through(tmp_path):
    path = tmp_path / "x.json"
    KIND.write(path, {})

    def bad(_data):
        raise DataError("layer 3 is too wide")

    with pytest.raises(DataError, match=f"^{path}: layer 3 is too wide$"):
        KIND.read(path, bad)
    with pytest.raises(UsageError, match="no such file"):
        KIND.read(tmp_path / "absent.json", dict)
    path.write_text("{not json")
    with pytest.raises(PlanError, match="is not valid JSON"):
        KIND.read(path, dict)


def test_every_versioned_file_uses_it():
    tags = {f.tag for f in (PLAN_FORMAT, GRAPH_FORMAT, SCORES_FORMAT, CACHE_FORMAT)}
    assert tags == {"tpunlearn-plan/1", "tpunlearn-graph/1", "tpunlearn-scores/1", "tpunlearn-cache/1"}
    with pytest.raises(PlanError, match="not a tpunlearn graph cache .* got tpunlearn-graph/1"):
        CACHE_FORMAT.check(GRAPH_FORMAT.stamp({}))
