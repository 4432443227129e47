"""Determinism: the same inputs and seed give the same plan and bit-identical weights.

The CLI test also proves that the report records every setting: the second run is the
report's own ``reproduce`` command line, and it must give the same files.
"""
from __future__ import annotations

import json

import torch

import tpunlearn as tu
from tpunlearn import cli

from helpers import assert_same_state


def test_api_runs_are_bit_identical(make_tiny_resnet, make_samples):
    runs = []
    for _ in range(2):
        model = make_tiny_resnet(seed=3)
        res = tu.unlearn(model, make_samples(seed=5), forget=[1], retain=[2, 4, 6], sigma=4, delta=0.3,
                         retain_delta=0.1, n_per_target=6, ignored_layers=["head"], align=None, progress=False)
        runs.append(res)
    a, b = runs
    assert a.plan.removed_channels > 0
    assert json.dumps(a.plan.to_dict()) == json.dumps(b.plan.to_dict())
    assert json.dumps(a.graph.to_dict()) == json.dumps(b.graph.to_dict())
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    for t in a.scores.targets:
        for layer in a.scores.layers:
            assert torch.equal(a.scores.alpha(t, layer), b.scores.alpha(t, layer))


def test_cli_rerun_from_the_reports_command_is_bit_identical(tmp_path, capsys):
    first = tmp_path / "first"
    argv = ["prune", "--arch", "digitscenes-resnet", "--forget", "3", "--retain", "1", "5", "7", "--data", "digits:40",
            "--samples", "4", "--sigma", "2", "--delta", "0.1", "--coupled", "prune", "--seed", "3", "--out", str(first)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    report = json.loads((first / "report.json").read_text())
    cmd = report["reproduce"]
    assert cmd[:2] == ["tpunlearn", "prune"]
    for flag in ("--sigma", "--delta", "--retain-delta", "--retain-tolerance", "--samples", "--mode", "--coupled",
                 "--align", "--seed", "--data", "--forget", "--retain"):
        assert flag in cmd, flag  # every setting explicit, defaults resolved
    assert report["settings"]["seed"] == 3 and report["settings"]["data"] == "digits:40"
    assert report["command"] == ["tpunlearn", *argv]

    second = tmp_path / "second"
    assert cli.main([*cmd[1:], "--out", str(second)]) == 0, capsys.readouterr().err
    for name in ("plan.json", "graph.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    a = torch.load(first / "model.pt", weights_only=True)
    b = torch.load(second / "model.pt", weights_only=True)
    assert a["history"] == b["history"] and a["history"]
    assert_same_state(a["state_dict"], b["state_dict"])
    again = json.loads((second / "report.json").read_text())
    assert again["sha256"]["output_weights"] == report["sha256"]["output_weights"]
    assert again["settings"] == report["settings"] and again["removed"] == report["removed"]
