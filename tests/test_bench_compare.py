"""benchmarks/bench_compare.py: the rendering of its cost line (what the run measured, never NaN); the
glyphscenes-resnet path end to end on a tiny budget (a cached stand-in reference for one setting, none for
the other), and its forget-setting parsing."""
from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import bench_module

from tpunlearn.errors import UsageError


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


GLYPHS = ["circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring", "heart",
          "arrow", "crescent", "A", "B", "E", "F", "G", "H", "K", "M", "R", "S", "W", "Z"]


def test_settings_take_names_or_indices_and_plus_for_several(bench: Any) -> None:
    plan = bench.setting_plan("star,0,W+circle", "3+22", [0, 1], GLYPHS)
    assert plan == [([6], 0), ([6], 1), ([0], 0), ([0], 1), ([22, 0], 0), ([3, 22], 0)]
    with pytest.raises(UsageError, match="unknown forget class 'w'"):
        bench.parse_targets("w", GLYPHS)  # names as the zoo spells them
    with pytest.raises(UsageError, match="0..23"):
        bench.parse_targets("24", GLYPHS)


def test_digits_alias_and_model_defaults(bench: Any) -> None:
    digits = bench.parse_args(["--digits", "1,3", "--seeds", "0"])
    assert digits.model == "digitscenes-resnet" and digits.plan == [([1], 0), ([3], 0), ([3, 8], 0)]
    assert (digits.reference_epochs, digits.reference_scenes) == (10, 24000) and not digits.no_train_reference
    glyphs = bench.parse_args(["--model", "glyphscenes-resnet", "--seeds", "0", "--reference-wait", "5"])
    assert glyphs.plan == [([6], 0), ([0], 0), ([22], 0)]  # star, circle, W; no pairs by default
    assert (glyphs.reference_epochs, glyphs.reference_scenes) == (12, 24000) and glyphs.no_train_reference
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "glyphscenes-resnet", "--forget", "hexagram"])


def test_family_rows_carry_prunes_timm_defaults(bench: Any) -> None:
    rows = bench.family_methods("glyphscenes-resnet")
    assert [r.name for r in rows] == ["Graph(beta), physical, prune's timm defaults (retain tolerance 0.1, calibrated)",
                                      *(f"Graph(beta), prune's timm defaults + erase({m})" for m in bench.ERASE_ROWS)]
    assert all(r.settings["retain_tolerance"] == 0.1 and r.settings["calibrate"].layers == ("fc",) for r in rows)
    assert [r.erase for r in rows] == [None, *bench.ERASE_ROWS.values()]


def test_minutes_until_is_the_next_such_clock_time(bench: Any) -> None:
    now = datetime.datetime(2026, 1, 1, 19, 30, 30, tzinfo=datetime.timezone.utc)
    assert bench.minutes_until("20:00", now) == pytest.approx(29.5)
    assert bench.minutes_until("19:30", now) == 0.0
    assert bench.minutes_until("19:00", now) == pytest.approx(23 * 60 + 29.5)


def _stand_in_reference(path: Path, target: int) -> None:
    """A cached "reference" for ``target`` at the path train_reference gives it: the zoo model with that output
    row zeroed (training a real one, even for one epoch, costs most of a minute), 123 s of recorded training."""
    import torch
    from train_reference import write

    from tpunlearn import zoo

    model, meta = zoo.load("glyphscenes-resnet")
    with torch.no_grad():
        model.fc.weight[target] = 0.0
        model.fc.bias[target] = -10.0
    record = {**meta["train"], "reference": {"forget": [target], "seconds": 123.0}}
    write(zoo.checkpoint("glyphscenes-resnet", model, record), path)


def test_glyph_table_end_to_end(bench: Any, module_cache: None, tmp_path: Path) -> None:
    from train_reference import default_path

    star = default_path("glyphscenes-resnet", [6], 0, 1, 128)
    _stand_in_reference(star, 6)
    circle = default_path("glyphscenes-resnet", [0], 0, 1, 128)
    argv = ["--model", "glyphscenes-resnet", "--forget", "star,circle", "--seeds", "0", "--members", "200",
            "--test-scenes", "150", "--methods", "Original,physical (ours),target-level", "--no-train-reference",
            "--reference-epochs", "1", "--reference-scenes", "128", "--out", str(tmp_path), "--stem", "g",
            "--threads", "1"]
    bench.main(argv)
    assert not circle.exists()  # never trained here
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["model"] == "glyphscenes-resnet" and len(result["class_names"]) == 24
    assert result["setting_labels"] == ["forget star, seed 0", "forget circle, seed 0"]
    star_rows, circle_rows = (s["rows"] for s in result["settings"])
    original, graph = star_rows["Original"], star_rows["Graph(beta), physical (ours)"]
    reference = star_rows["Retrain, target-level (forget labels masked; reference)"]
    assert graph["params"] < original["params"] and graph["forget_recall"] <= original["forget_recall"]
    assert 0 <= original["worst_retained_digit"] < 24 and original["worst_retained_digit"] != 6
    assert set(graph["goals"]) == {"forget", "retained", "probe", "mia", "svm_mia", "cost"}
    assert reference["mia_gap_to_reference_points"] == 0.0 and reference["forget_recall"] == 0.0
    assert reference["seconds"] == 123.0 and result["cost"]["reference_s"] == 123.0  # the cached record, not retrained
    assert not any(n.startswith("Retrain") for n in circle_rows) and "goals" not in circle_rows["Original"]
    assert str(circle) in result["settings"][1]["notes"][0]
    page = (tmp_path / "g.md").read_text()
    assert "GlyphScenes test split" in page and "graph build for all 24 classes" in page
    assert not re.search("digit", page, re.IGNORECASE)
    assert "1 epochs on 128 scenes (the zoo: 12 on 24000)" in page and "full zoo budget" not in page
    assert f"forget circle, seed 0: Retrain, target-level (forget labels masked; reference): skipped, " \
           f"no cached reference {circle}" in page
    worst = GLYPHS[original["worst_retained_digit"]]
    assert f"| forget star, seed 0 | Original | {100 * original['forget_recall']:.1f} | 0.0 ({worst}) |" in page

    # the circle reference lands later: --resume measures only its row and keeps every other one
    _stand_in_reference(circle, 0)
    bench.main([*argv, "--resume"])
    again = json.loads((tmp_path / "g.json").read_text())
    assert again["settings"][0]["rows"] == result["settings"][0]["rows"]  # star: kept, judged the same
    rows = again["settings"][1]["rows"]
    assert list(rows) == [*circle_rows, "Retrain, target-level (forget labels masked; reference)"]
    assert rows["Original"]["probe_auc_refit"] == circle_rows["Original"]["probe_auc_refit"]  # not measured again
    assert "goals" in rows["Original"] and "notes" not in again["settings"][1]
    assert again["cost"]["graph_build_s"] == result["cost"]["graph_build_s"] and len(again["runs"]) == 2
    assert "--resume`" in (tmp_path / "g.md").read_text()


def test_reference_wait_finds_a_checkpoint_that_lands_and_never_trains(bench: Any, module_cache: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from train_reference import default_path

    path = default_path("glyphscenes-resnet", [22], 0, 1, 64)
    with pytest.raises(bench.MissingReference, match="not training one here"):
        bench.reference_model([22], 0, 1, 64, "glyphscenes-resnet", train=False, wait_s=0.2)
    assert not path.exists()
    monkeypatch.setattr(bench, "POLL_S", 0.2)
    landing = threading.Timer(0.5, _stand_in_reference, (path, 22))  # another job writes it while we wait
    landing.start()
    try:
        model, seconds = bench.reference_model([22], 0, 1, 64, "glyphscenes-resnet", train=False, wait_s=60)
    finally:
        landing.join()
    assert seconds == 123.0 and model.fc.bias[22].item() == -10.0


def test_resume_keeps_rows_but_those_asked_to_be_remeasured(bench: Any, tmp_path: Path) -> None:
    import argparse

    prior = {"model": "glyphscenes-resnet", "reference_note": "... 12 epochs on 24000 scenes (the zoo ...)",
             "settings": [{"label": "forget star, seed 0", "rows": {"Original": {}, "Graph + erase(features)": {},
                                                                    "Graph + erase(salun)": {}}}]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(prior))
    args = argparse.Namespace(resume=True, remeasure="erase(features)", model="glyphscenes-resnet",
                              reference_epochs=12, reference_scenes=24000)
    assert list(bench.resumed(args, path)["settings"][0]["rows"]) == ["Original", "Graph + erase(salun)"]
    assert bench.resumed(argparse.Namespace(**{**vars(args), "resume": False}), path) is None
    with pytest.raises(SystemExit, match="another reference budget"):
        bench.resumed(argparse.Namespace(**{**vars(args), "reference_epochs": 3}), path)
