"""``prune --eval``'s verdict on the command line: ``--strict`` exits 3 when it is not met, a run that
removes no channel says so even without --eval, and the verdict flags refuse what they cannot judge."""
from __future__ import annotations

import json

import pytest
from helpers import assert_error, run

ZOO = "digitscenes-resnet"
FAST = ["--arch", ZOO, "--forget", "3", "--samples", "8", "--data", "digits:100"]
NO_CHANNEL = ["--retain-delta", "1.0"]  # every retained target protects every channel: nothing left to remove


def test_strict_needs_eval(tmp_path, capsys):
    assert_error(run(capsys, "prune", *FAST, "--strict", "--out", tmp_path / "o"), 2, "add --eval")


def test_conf_is_for_detectors(tmp_path, capsys):
    assert_error(run(capsys, "prune", *FAST, "--conf", "0.3", "--out", tmp_path / "o"), 2, "--conf", "detector")
    assert not (tmp_path / "o").exists()


def test_goals_must_lie_in_0_1(tmp_path, capsys):
    assert_error(run(capsys, "prune", *FAST, "--goal-drop", "1.5", "--out", tmp_path / "o"), 2, "--goal-drop")


def test_strict_exits_3_on_a_run_that_removes_no_channel(tmp_path, capsys):
    code, _, err = run(capsys, "prune", *FAST, *NO_CHANNEL, "--eval", "--strict", "--out", tmp_path / "o")
    assert code == 3, err
    assert json.loads((tmp_path / "o" / "report.json").read_text())["verdict"]["status"] == "not met"


def test_a_run_that_removes_no_channel_warns_without_eval(tmp_path, capsys):
    code, out, err = run(capsys, "prune", *FAST, *NO_CHANNEL, "--out", tmp_path / "o")
    assert code == 0, err
    assert "removed 0 channels" in out
    assert "tpunlearn: warning: the run removed no channel" in err
    assert "verdict" not in json.loads((tmp_path / "o" / "report.json").read_text())


@pytest.mark.slow  # two prunes with --eval (~40 s on one core)
def test_strict_exits_3_when_not_met(tmp_path, capsys):
    code, out, err = run(capsys, "prune", *FAST, *NO_CHANNEL, "--eval", "--strict", "--out", tmp_path / "o")
    assert code == 3, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())  # the outputs are written all the same
    verdict = report["verdict"]
    assert verdict["status"] == "not met" and verdict["removed_channels"] == 0
    assert any("removed no channel" in w for w in verdict["warnings"])
    assert "tpunlearn: warning: the run removed no channel" in err
    assert out.strip().splitlines()[-1] == verdict["line"] and verdict["line"].startswith("verdict: not met")
    # a run that removes channels but not the forgotten digit: not met by the forget metric, exit 3
    code, out, err = run(capsys, "prune", *FAST, "--delta", "0.001", "--align", "1", "--eval", "--strict",
                         "--out", tmp_path / "o2")
    assert code == 3, err
    verdict = json.loads((tmp_path / "o2" / "report.json").read_text())["verdict"]
    assert verdict["removed_channels"] > 0 and not verdict["forget"]["met"]
    assert "tpunlearn: warning: forget target 3: recall" in err
