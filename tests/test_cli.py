"""The ``tpunlearn`` command line, run in-process through ``tpunlearn.cli.main``.

One real prune of the zoo model (forget digit 3, with --eval and --onnx) is shared by the
module; the error cases fail before any scoring, so they stay cheap. Two subprocesses check
that ``tpunlearn --help`` works and that importing the CLI loads neither torch nor timm.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import tpunlearn as tu

from tpunlearn import adapters, cli, zoo
from tpunlearn.io import sha256

from helpers import assert_error, listing, n_params, run, run_captured

ZOO = "digitscenes-resnet"
DIGITS = [str(d) for d in range(10)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """``tpunlearn prune --arch digitscenes-resnet --forget 3 --out DIR --eval --onnx``."""
    out = tmp_path_factory.mktemp("prune") / "out"
    zoo_sha = sha256(zoo.weights_path(ZOO))
    code, stdout, stderr = run_captured("prune", "--arch", ZOO, "--forget", "3", "--out", out, "--eval", "--onnx")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    return SimpleNamespace(out=out, stdout=stdout, report=report, zoo_sha=zoo_sha)


# ---- help, import cost, zoo ----------------------------------------------------------------
def test_help_subprocess_lists_commands():
    script = Path(sys.executable).with_name("tpunlearn")
    cmd = [str(script), "--help"] if script.is_file() else [sys.executable, "-m", "tpunlearn.cli", "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("prune", "eval", "zoo"):
        assert command in proc.stdout


def test_cli_import_loads_neither_torch_nor_timm():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tpunlearn.cli"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "tpunlearn.cli" in modules
    heavy = [m for m in modules if m.split(".")[0] in {"torch", "timm", "torch_pruning", "torchvision", "onnx",
                                                       "onnxruntime", "matplotlib", "ultralytics"}]
    assert not heavy, heavy


def test_help_in_process_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["prune", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--forget" in out and "--dry-run" in out


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "prune" in out


def test_zoo_lists_the_bundled_model_as_ready(capsys):
    code, out, _ = run(capsys, "zoo")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith(ZOO))
    assert " ready " in line


# ---- prune -----------------------------------------------------------------------------------
def test_prune_writes_every_output(pruned):
    names = sorted(p.name for p in pruned.out.iterdir())
    assert names == ["graph.json", "graph.png", "metrics.png", "model.onnx", "model.pt", "plan.json", "report.html",
                     "report.json"]
    assert (pruned.out / "graph.png").read_bytes()[:8] == PNG_MAGIC
    plan = json.loads((pruned.out / "plan.json").read_text())
    assert plan["history"]
    assert json.loads((pruned.out / "graph.json").read_text())
    assert "removed" in pruned.stdout and "  forgotten" in pruned.stdout


def test_report_settings_name_the_targets_and_label_indices(pruned):
    settings = pruned.report["settings"]
    assert settings["forget"] == pruned.report["forget"] == ["3"] and settings["forget_index"] == [3]
    assert "3" not in settings["retain"] and len(settings["retain_index"]) == 9


def test_prune_pictures_and_page_match_the_plan(pruned):
    report = pruned.report
    assert (pruned.out / "metrics.png").read_bytes()[:8] == PNG_MAGIC
    assert report["pictures"]["graph.png"]["removed"] == report["removed_channels"] > 0
    assert report["removal"]["total"]["removed"] == report["removed_channels"]
    assert report["removal"]["total"]["align_added"] > 0  # the zoo resnet's width alignment adds channels
    assert report["pictures"]["metrics.png"]["worst"] != "3"  # the forgotten digit is never the worst retained
    page = (pruned.out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "digitscenes-resnet" in page
    assert "+align" in pruned.stdout and "metrics.png, report.html" in pruned.stdout


def test_prune_report(pruned):
    r = pruned.report
    assert r["arch"] == ZOO
    assert r["forget"] == ["3"]
    assert r["retain"] == [d for d in DIGITS if d != "3"]
    assert r["seed"] == 0
    assert r["params"]["after"] < r["params"]["before"]
    assert 0 < r["macs"]["after"] <= r["macs"]["before"]
    assert r["removed_channels"] > 0
    assert sum(len(v) for v in r["removed"].values()) == r["removed_channels"]
    assert all(isinstance(i, int) for v in r["removed"].values() for i in v)
    assert {"scoring", "planning", "pruning"} <= set(r["timings_s"])
    versions = r["versions"]
    assert {"torch", "torch-pruning", "timm"} <= set(versions)
    assert "not installed" not in {versions[k] for k in ("torch", "torch-pruning", "timm")}


def test_prune_metrics_forget_only_the_target(pruned):
    m = pruned.report["metrics"]
    assert m["name"] == m["primary"] == "recall" and m["task"] == "multilabel"
    assert m["operating_point"] == {"rule": "logit > 0"} and m["forgotten"] == ["3"]
    assert set(m["before"]) == set(m["after"]) == set(DIGITS)
    assert set(m["before"]["0"]) == {"recall", "precision", "ap", "instances"}
    assert m["before"]["3"]["recall"] >= 0.9
    assert m["after"]["3"]["recall"] <= 0.02
    for digit in DIGITS:
        if digit != "3":
            assert m["after"][digit]["recall"] >= m["before"][digit]["recall"] - 0.02, digit
    kept = [d for d in DIGITS if d != "3"]
    retained = m["retained"]
    assert retained["mean_after"] == pytest.approx(sum(m["after"][d]["recall"] for d in kept) / len(kept))
    assert retained["worst"]["target"] in kept  # the forgotten digit never is the worst retained one


def test_prune_verdict_is_met_for_digit_3(pruned):
    v = pruned.report["verdict"]
    assert v["status"] == "met" and v["met"] is True, v
    assert v["forget"]["targets"]["3"]["after"] <= v["forget"]["goal"] == 0.02
    assert v["removed_channels"] == pruned.report["removed_channels"] > 0
    assert v["warnings"] == []
    last = pruned.stdout.strip().splitlines()[-1]
    assert last == v["line"] and last.startswith("verdict: met: forget 3 recall")
    table = pruned.stdout[pruned.stdout.index("target"):]
    assert "forgotten" in next(line for line in table.splitlines() if line.startswith("3 "))
    assert "retained mean" in table and "worst retained: " in table


def test_prune_onnx_parity(pruned):
    onnx = pruned.report["onnx"]
    assert Path(onnx["path"]).name == "model.onnx" and Path(onnx["path"]).resolve() == (pruned.out / "model.onnx").resolve()
    assert onnx["max_abs_diff"] <= 1e-4
    assert onnx["latency_ms"]["before"] > 0 and onnx["latency_ms"]["after"] > 0


def test_prune_sha256_match_the_files(pruned):
    sha = pruned.report["sha256"]
    assert sha["output_weights"] == sha256(pruned.out / "model.pt")
    assert sha["input_weights"] == pruned.zoo_sha
    assert sha256(zoo.weights_path(ZOO)) == pruned.zoo_sha  # the input checkpoint is never modified


def test_saved_model_reloads_with_its_pruning(pruned):
    path = pruned.out / "model.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "tpunlearn-timm/1" and ckpt["timm_name"] == "resnet18" and ckpt["history"]

    adapter = adapters.get("timm")
    model, info = adapter.build("resnet18", weights=path)  # architecture from the checkpoint itself
    assert info.input_size == (3, 64, 64) and info.class_names == DIGITS
    assert n_params(model) == pruned.report["params"]["after"]
    state = model.state_dict()
    assert state.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(state[k], v) for k, v in ckpt["state_dict"].items())

    # the ONNX file was exported from the in-memory pruned model: same outputs
    import onnxruntime as ort

    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(pruned.out / "model.onnx"), providers=["CPUExecutionProvider"])
    (expected, *_) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        got = model(x)
    assert float((got - torch.from_numpy(expected)).abs().max()) <= 1e-4

    # the zoo name with the pruned checkpoint gives the same model (the CLI's route and the zoo's own)
    _, model_z, info_z = tu.models.load_model(ZOO, weights=path)
    assert info_z.extra["history"] == ckpt["history"] and info_z.arch == ZOO
    model_l, meta = tu.zoo.load(ZOO, weights=path)
    assert meta["weights"] == str(path.resolve())
    with torch.no_grad():
        assert torch.equal(model_z(x), got) and torch.equal(model_l(x), got)


def test_eval_of_the_saved_model_matches_the_report(pruned, tmp_path, capsys):
    weights = pruned.out / "model.pt"
    before = sha256(weights)
    code, out, err = run(capsys, "eval", "--arch", "resnet18", "--weights", weights, "--json", tmp_path / "m.json")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]["per_target"]
    after = pruned.report["metrics"]["after"]
    assert set(metrics) == set(after)
    for digit in DIGITS:
        assert metrics[digit]["recall"] == pytest.approx(after[digit]["recall"], abs=1e-6), digit
    assert sha256(weights) == before


def test_prune_of_a_pruned_checkpoint_keeps_both_prunings(pruned, tmp_path, capsys):
    weights = tmp_path / "in" / "model.pt"
    weights.parent.mkdir()
    shutil.copy(pruned.out / "model.pt", weights)
    before = sha256(weights)
    out = tmp_path / "again"
    code, _, err = run(capsys, "prune", "--arch", "resnet18", "--weights", weights, "--forget", "5",
                       "--samples", "2", "--sigma", "2", "--out", out)
    assert code == 0, err
    assert sha256(weights) == before
    report = json.loads((out / "report.json").read_text())
    assert report["sha256"]["input_weights"] == before
    assert report["params"]["before"] == pruned.report["params"]["after"]
    first = torch.load(weights, weights_only=True)["history"]
    second = torch.load(out / "model.pt", weights_only=True)["history"]
    assert second[:len(first)] == first and len(second) >= len(first)
    model, _ = adapters.get("timm").build("resnet18", weights=out / "model.pt")
    assert n_params(model) == report["params"]["after"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "prune", "--arch", ZOO, "--forget", "3", "--samples", "2", "--dry-run",
                         "--out", tmp_path / "dry")
    assert code == 0, err
    assert "PrunePlan" in out
    assert list(tmp_path.iterdir()) == []


# ---- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, fragments", [
    (["--arch", "nope", "--forget", "1"], ["unknown arch 'nope'"]),
    (["--arch", ZOO, "--forget", "cat"], ["unknown target 'cat'", "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"]),
    (["--arch", ZOO, "--forget", "3", "--delta", "0"], ["--delta", "(0, 1]"]),
    (["--arch", ZOO, "--forget", "3", "--delta", "1.5"], ["--delta", "(0, 1]"]),
    (["--arch", ZOO, "--forget", "3", "--sigma", "0"], ["--sigma"]),
    (["--arch", ZOO, "--forget", "3", "--sigma", "999"], ["sigma=999"]),
    (["--arch", ZOO, "--forget", "3", "--retain", "4", "3"], ["3", "--forget", "--retain"]),
    (["--arch", ZOO], ["--forget"]),
    (["--arch", ZOO, "--forget", "3", "--erase", "nosuch"], ["unknown --erase method 'nosuch'", "known:"]),
], ids=["arch", "target", "delta0", "delta1.5", "sigma0", "sigma999", "forget-retain", "no-forget", "erase-method"])
def test_usage_errors(tmp_path, capsys, extra, fragments):
    out = tmp_path / "out"
    assert_error(run(capsys, "prune", *extra, "--out", out), 2, *fragments)
    assert not out.exists()


def test_non_empty_out_is_left_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = listing(out)
    assert_error(run(capsys, "prune", "--arch", ZOO, "--forget", "3", "--out", out), 2, "not empty", "--force")
    assert listing(out) == before


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_out_holding_the_weights_is_refused(pruned, tmp_path, capsys, force):
    folder = tmp_path / "w"
    folder.mkdir()
    weights = folder / "model.pt"
    shutil.copy(pruned.out / "model.pt", weights)
    before = listing(folder)
    result = run(capsys, "prune", "--arch", "resnet18", "--weights", weights, "--forget", "3", "--out", folder,
                 *(["--force"] if force else []))
    assert_error(result, 2, "holds the input checkpoint")
    assert listing(folder) == before


@pytest.mark.parametrize("arch", [ZOO, "resnet18"])
@pytest.mark.parametrize("kind", ["missing", "truncated", "random"])
def test_bad_weights(pruned, tmp_path, capsys, arch, kind):
    weights = tmp_path / "bad.pt"
    if kind == "truncated":
        weights.write_bytes((pruned.out / "model.pt").read_bytes()[:4096])
    elif kind == "random":
        weights.write_bytes(bytes(range(256)) * 16)
    before = sha256(weights) if weights.exists() else None
    out = tmp_path / "out"
    assert_error(run(capsys, "prune", "--arch", arch, "--weights", weights, "--forget", "3", "--out", out),
                 1, str(weights))
    assert not out.exists()
    if before:
        assert sha256(weights) == before


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert_error(run(capsys, "eval", "--arch", "resnet18", "--weights", tmp_path / "absent.pt"), 1, "not found")
    assert_error(run(capsys, "eval", "--arch", "nope"), 2, "unknown arch")


# ---- eval ------------------------------------------------------------------------------------
def test_eval_zoo_model_writes_json(tmp_path, capsys):
    path = tmp_path / "metrics.json"
    code, out, err = run(capsys, "eval", "--arch", ZOO, "--json", path)
    assert code == 0, err
    data = json.loads(path.read_text())
    assert data["arch"] == ZOO and data["name"] == "recall"
    metrics = data["metrics"]
    assert metrics["task"] == "multilabel" and metrics["primary"] == "recall"
    assert set(metrics["per_target"]) == set(DIGITS)
    assert all(m["recall"] >= 0.9 and m["precision"] >= 0.9 for m in metrics["per_target"].values()), metrics
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    assert rows["target"][:4] == ["target", "recall", "precision", "ap"]
    assert all(float(rows[d][1]) == pytest.approx(metrics["per_target"][d]["recall"], abs=1e-3) for d in DIGITS)


def test_eval_refuses_conf_for_a_classifier(capsys):
    assert_error(run(capsys, "eval", "--arch", ZOO, "--conf", "0.3"), 2, "--conf")


def test_graph_cache_then_prune_without_scoring(tmp_path, capsys):
    cache = tmp_path / "cache.json"
    assert cli.main(["graph", "--arch", "digitscenes-resnet", "--out", str(cache)]) == 0
    out = tmp_path / "out"
    assert cli.main(["prune", "--arch", "digitscenes-resnet", "--forget", "3", "--graph", str(cache),
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "scoring" not in report["timings_s"]  # the cache replaced scoring (bench_cost.py times the request)
    assert report["removed_channels"] > 0
    assert report["sha256"]["graph_cache"] == hashlib.sha256(cache.read_bytes()).hexdigest()
    assert len(report["sha256"]["data"]) == 64


def test_graph_cache_from_another_model_is_refused(tmp_path, capsys):
    cache = tmp_path / "cache.json"  # any valid cache will do: its signature is then damaged
    assert cli.main(["graph", "--arch", "digitscenes-resnet", "--data", "digits:40", "--sigma", "1", "--samples", "1",
                     "--out", str(cache)]) == 0
    data = json.loads(cache.read_text())
    first = next(iter(data["signature"]))
    data["signature"][first] = [999, 999]
    cache.write_text(json.dumps(data))
    capsys.readouterr()  # drop the graph command's progress output
    assert_error(run(capsys, "prune", "--arch", "digitscenes-resnet", "--forget", "3", "--graph", cache,
                     "--out", tmp_path / "out"), 1, "another model")
    assert not (tmp_path / "out").exists()


def test_export_command_checks_parity(tmp_path, capsys):
    onnx = tmp_path / "m.onnx"
    assert cli.main(["export", "--arch", "digitscenes-resnet", "--onnx", str(onnx)]) == 0
    assert onnx.is_file()
    assert "max |onnxruntime - torch|" in capsys.readouterr().out


def test_family_defaults_fill_only_what_the_user_left_out():
    import argparse

    from tpunlearn.settings import UnlearnSettings

    yolo = adapters.get("yolov5")
    args = argparse.Namespace(sigma=None, delta=0.1, retain_tolerance=None, samples=7)
    got = cli._settings(args, yolo)
    assert (got.sigma, got.delta, got.retain_tolerance, got.n_per_target) == (
        yolo.defaults["sigma"], 0.1, yolo.defaults["retain_tolerance"], 7)
    timm_args = argparse.Namespace(sigma=None, delta=None, retain_tolerance=None, align=None)
    assert cli._settings(timm_args, adapters.get("timm")) == UnlearnSettings(retain_tolerance=0.1)
    timm_args.retain_tolerance = 0
    assert cli._settings(timm_args, adapters.get("timm")) == UnlearnSettings()


def test_every_option_of_every_command_has_help():
    """`tpunlearn CMD --help` explains every option (none is a bare flag name)."""
    import argparse

    from tpunlearn.cli import _parser

    missing = []
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [(name, a.option_strings) for a in sub._actions
                            if a.option_strings and a.help in (None, "", argparse.SUPPRESS)]
                short = [(name, a.option_strings) for a in sub._actions if a.help and len(a.help) < 12
                         and a.option_strings != ["-h", "--help"]]
                missing += short
    assert missing == []
