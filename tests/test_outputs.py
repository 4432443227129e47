"""Nothing a user owns is lost: inputs are never modified, outputs appear whole or not at all.

``prune`` writes into a staging folder beside ``--out`` and moves the files in at the end,
``report.json`` last. These tests make runs fail midway (an exception, an interrupt) and
check that ``--out`` is byte for byte what it was, and that the input checkpoint keeps its
hash even when it sits inside ``--out`` (in a subfolder, or hard-linked as ``model.pt``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tpunlearn import cli, zoo
from tpunlearn.io import sha256, staged_folder

from helpers import listing

ZOO = "digitscenes-resnet"
FAST = ["--samples", "2", "--sigma", "1", "--data", "digits:40"]


def leftovers(parent: Path) -> list[str]:
    """Staging folders left beside an output folder."""
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


@pytest.fixture
def previous_run(tmp_path) -> Path:
    """An output folder holding a user's file and the outputs of an earlier run."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model.pt").write_bytes(b"earlier model")
    (out / "report.json").write_text(json.dumps({"earlier": True}))
    return out


# ---- staged_folder -------------------------------------------------------------------------------------------


def test_staged_folder_moves_files_in_with_the_report_last(previous_run, monkeypatch):
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b)))
    with staged_folder(previous_run) as stage:
        (stage / "report.json").write_text("{}")
        (stage / "model.pt").write_bytes(b"new model")
        (stage / "z.json").write_text("{}")
        assert listing(previous_run)["model.pt"] == sha256_bytes(b"earlier model")  # nothing moved yet
    assert moved == ["model.pt", "z.json", "report.json"]
    assert (previous_run / "model.pt").read_bytes() == b"new model"
    assert (previous_run / "notes.txt").read_text() == "mine"
    assert leftovers(previous_run.parent) == []


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_staged_folder_leaves_out_as_it_was_on_failure(previous_run, error):
    before = listing(previous_run)
    with pytest.raises(error):
        with staged_folder(previous_run) as stage:
            (stage / "model.pt").write_bytes(b"half a mod")
            raise error()
    assert listing(previous_run) == before
    assert leftovers(previous_run.parent) == []


def test_staged_folder_creates_nothing_on_failure(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with staged_folder(out) as stage:
            (stage / "model.pt").write_bytes(b"x")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []  # not even the parents it made for the staging folder


# ---- prune through the CLI -------------------------------------------------------------------------------------


def _boom(*_args, **_kwargs):
    raise RuntimeError("disk on fire")


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where, error, code, message", [
    ("onnx", _boom, 1, "unexpected RuntimeError: disk on fire"),
    ("save", _interrupt, 130, "interrupted; no output was written"),
    ("report", _boom, 1, "unexpected RuntimeError: disk on fire"),
])
def test_failed_prune_leaves_out_as_it_was(previous_run, monkeypatch, capsys, where, error, code, message):
    from tpunlearn import adapters, export, io

    if where == "onnx":
        monkeypatch.setattr(export, "to_onnx", error)  # fails after model.pt, plan and graph are written
    elif where == "save":
        monkeypatch.setattr(adapters.get("timm"), "save", error)
    else:
        monkeypatch.setattr(io, "write_json", error)  # plan.json and the report cannot be written
    before = listing(previous_run)
    got = cli.main(["prune", "--arch", ZOO, "--forget", "3", *FAST, "--onnx", "--out", str(previous_run), "--force"])
    err = capsys.readouterr().err.strip()
    assert got == code
    assert err == f"tpunlearn: error: {message}" or err.startswith(f"tpunlearn: error: {message}")
    assert listing(previous_run) == before  # no half-written model.pt, no report claiming success
    assert leftovers(previous_run.parent) == []


def test_failed_prune_creates_no_output_folder(tmp_path, monkeypatch, capsys):
    from tpunlearn import export

    monkeypatch.setattr(export, "to_onnx", _boom)
    out = tmp_path / "new" / "out"
    assert cli.main(["prune", "--arch", ZOO, "--forget", "3", *FAST, "--onnx", "--out", str(out)]) == 1
    assert list(tmp_path.iterdir()) == []


def test_successful_prune_replaces_earlier_outputs_and_keeps_the_rest(previous_run, capsys):
    assert cli.main(["prune", "--arch", ZOO, "--forget", "3", *FAST, "--out", str(previous_run), "--force"]) == 0
    names = sorted(p.name for p in previous_run.iterdir())
    assert names == ["graph.json", "graph.png", "model.pt", "notes.txt", "plan.json", "report.html", "report.json"]
    assert (previous_run / "notes.txt").read_text() == "mine"
    report = json.loads((previous_run / "report.json").read_text())
    assert report["sha256"]["output_weights"] == sha256(previous_run / "model.pt")
    assert leftovers(previous_run.parent) == []


@pytest.mark.parametrize("placement", ["subfolder", "hardlink"])
def test_input_checkpoint_inside_out_is_never_modified(tmp_path, capsys, placement):
    """The input may sit inside --out: in a subfolder (allowed), or hard-linked as the very
    model.pt the run replaces (written in place, it would be destroyed)."""
    out = tmp_path / "out"
    (out / "inputs").mkdir(parents=True)
    weights = out / "inputs" / "model.pt"
    weights.write_bytes(zoo.weights_path(ZOO).read_bytes())
    if placement == "hardlink":
        os.link(weights, out / "model.pt")
    before = sha256(weights)
    code = cli.main(["prune", "--arch", ZOO, "--weights", str(weights), "--forget", "3", *FAST, "--out", str(out),
                     "--force"])
    assert code == 0, capsys.readouterr().err
    assert sha256(weights) == before
    assert sha256(out / "model.pt") != before
    assert json.loads((out / "report.json").read_text())["sha256"]["input_weights"] == before


@pytest.mark.parametrize("link", ["symlink", "direct"])
def test_input_checkpoint_named_inside_out_is_refused(tmp_path, capsys, link):
    """--weights OUT/model.pt (a file or a link to one elsewhere) would be replaced by the output."""
    elsewhere = tmp_path / "w.pt"
    elsewhere.write_bytes(zoo.weights_path(ZOO).read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    given = out / "model.pt"
    if link == "symlink":
        given.symlink_to(elsewhere)
    else:
        given.write_bytes(elsewhere.read_bytes())
    before = listing(tmp_path)
    code = cli.main(["prune", "--arch", ZOO, "--weights", str(given), "--forget", "3", "--out", str(out), "--force"])
    assert code == 2
    assert "holds the input checkpoint" in capsys.readouterr().err
    assert listing(tmp_path) == before


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """mkstemp makes 0600 files; an output must get 0666 minus the umask like any other file."""
    from tpunlearn.io import atomic_path, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
        with atomic_path(tmp_path / "m.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "m.bin").stat().st_mode & 0o777 == 0o644
