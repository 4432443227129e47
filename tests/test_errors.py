"""Every bad input the CLI can meet gives one line, a fix, and the right exit code.

Each row of ``CASES`` is one user mistake: the command line (with ``{name}`` placeholders for
files the ``files`` fixture makes), the exit code (2 for usage errors, 1 for the rest) and
fragments of the message. Every row also checks that stderr is exactly one
``tpunlearn: error: ...`` line without a traceback and that a refused ``prune`` created no
output folder. The Python API rows check that the library raises the specific exception.
"""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from tpunlearn import cli, zoo
from tpunlearn.cache import save_cache
from tpunlearn.errors import DataError, PlanError, TpunlearnError, UsageError, WeightsError
from tpunlearn.scoring import ChannelScores, TargetScores

from helpers import assert_error, run

ZOO = "digitscenes-resnet"
YOLO = "digitscenes-yolov5"
DEEPLAB = "digitscenes-deeplabv3"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """Bad inputs on disk: damaged and foreign checkpoints, data folders, caches."""
    root = tmp_path_factory.mktemp("bad")
    resnet = zoo.weights_path(ZOO)
    (root / "truncated.pt").write_bytes(resnet.read_bytes()[:4096])
    (root / "random.pt").write_bytes(bytes(range(256)) * 16)
    (root / "empty.pt").write_bytes(b"")
    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("not a folder")
    (root / "bad.json").write_text("{not json")
    (root / "broken.yaml").write_text("train: images/\nnames: [a, b\n")
    (root / "bad_images").mkdir()
    (root / "bad_images" / "x.jpg").write_text("not a jpeg")
    (root / "graph.json").write_text(json.dumps({"format": "tpunlearn-graph/1"}))
    # a valid cache, made for another (tiny) model
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 3))
    scores = ChannelScores(layers=["2"], channels={"2": 5},
                           targets={3: TargetScores(alpha={"2": torch.zeros(5)}, count=1)})
    save_cache(root / "other_cache.json", scores, tiny)
    import timm

    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), root / "resnet10t.pt")
    # the zoo checkpoint sitting in a folder given as --out
    (root / "holds_weights").mkdir()
    shutil.copy(resnet, root / "holds_weights" / "model.pt")
    (root / "not_empty").mkdir()
    (root / "not_empty" / "keep.txt").write_text("mine")
    return SimpleNamespace(root=root, resnet=resnet, yolo=zoo.weights_path(YOLO), deeplab=zoo.weights_path(DEEPLAB))


def absent_digit() -> str:
    """A digit that the first DigitScenes training scene does not hold."""
    from tpunlearn.data import digitscenes

    present = set(digitscenes("train", size=64, n_scenes=1)[0][1].nonzero().flatten().tolist())
    return str(min(set(range(10)) - present))


P = ["prune", "--out", "{root}/out"]  # every prune row writes (if it wrongly could) to {root}/out
CASES = [
    # ---- usage errors (exit 2) ---------------------------------------------------------------------------
    ("unknown-arch", [*P, "--arch", "nope", "--forget", "1"], 2, ["unknown arch 'nope'", "tpunlearn zoo"]),
    ("unknown-target", [*P, "--arch", ZOO, "--forget", "cat"], 2, ["unknown target 'cat'", "valid: 0, 1, 2"]),
    ("unknown-target-80", [*P, "--arch", "yolov5n.yaml", "--forget", "unicorn"], 2,
     ["unknown target 'unicorn'", "person, bicycle", "(80 in all)"]),
    ("random-detector-unlabelled", [*P, "--arch", "yolov5n.yaml", "--forget", "person"], 2,
     ["random weights", "--data with labels"]),
    ("forget-in-retain", [*P, "--arch", ZOO, "--forget", "3", "--retain", "4", "3"], 2,
     ["3", "both --forget and --retain"]),
    ("delta-0", [*P, "--arch", ZOO, "--forget", "3", "--delta", "0"], 2, ["--delta", "(0, 1]"]),
    ("delta-1.5", [*P, "--arch", ZOO, "--forget", "3", "--delta", "1.5"], 2, ["--delta", "(0, 1]"]),
    ("delta-text", [*P, "--arch", ZOO, "--forget", "3", "--delta", "half"], 2, ["--delta", "'half'"]),
    ("retain-delta-2", [*P, "--arch", ZOO, "--forget", "3", "--retain-delta", "2"], 2, ["--retain-delta", "(0, 1]"]),
    ("sigma-0", [*P, "--arch", ZOO, "--forget", "3", "--sigma", "0"], 2, ["--sigma", ">= 1"]),
    ("sigma-999", [*P, "--arch", ZOO, "--forget", "3", "--sigma", "999"], 2,
     ["sigma=999", "number of prunable convolutions"]),
    ("samples-0", [*P, "--arch", ZOO, "--forget", "3", "--samples", "0"], 2, ["--samples", ">= 1"]),
    ("no-forget", [*P, "--arch", ZOO], 2, ["--forget"]),
    ("names-vs-head", [*P, "--arch", "resnet18", "--num-classes", "5", "--names", "a,b,c", "--imgsz", "32",
                       "--forget", "a"], 2, ["3 class names (a, b, c)", "5 class outputs"]),
    ("unknown-option", [*P, "--arch", ZOO, "--forget", "3", "--fast"], 2, ["unrecognized arguments: --fast"]),
    ("empty-weights-arg", [*P, "--arch", ZOO, "--forget", "3", "--weights", ""], 2, ["--weights", "is empty"]),
    ("out-is-file", ["prune", "--arch", ZOO, "--forget", "3", "--out", "{root}/a_file"], 2, ["is a file"]),
    ("out-not-empty", ["prune", "--arch", ZOO, "--forget", "3", "--out", "{root}/not_empty"], 2,
     ["not empty", "--force"]),
    ("out-holds-weights", ["prune", "--arch", "resnet18", "--weights", "{root}/holds_weights/model.pt",
                           "--forget", "3", "--out", "{root}/holds_weights", "--force"], 2,
     ["holds the input checkpoint", "choose another output folder"]),
    ("json-is-weights", ["eval", "--arch", ZOO, "--weights", "{root}/holds_weights/model.pt",
                         "--json", "{root}/holds_weights/model.pt"], 2, ["is the input checkpoint"]),
    ("onnx-is-folder", ["export", "--arch", ZOO, "--onnx", "{root}/empty_dir"], 2, ["is a folder"]),
    ("data-digits-0", [*P, "--arch", ZOO, "--forget", "3", "--data", "digits:0"], 2, ["digits:0", "N must be >= 1"]),
    ("data-not-a-format-for-timm", [*P, "--arch", ZOO, "--forget", "3", "--data", "{root}/empty_dir"], 1,
     ["is not an ImageFolder root", "tags CSV", "CelebA"]),
    ("graph-cache-missing", [*P, "--arch", ZOO, "--forget", "3", "--graph", "{root}/absent.json"], 2,
     ["no such file"]),
    # ---- weights (exit 1) ----------------------------------------------------------------------------------
    ("weights-missing", [*P, "--arch", ZOO, "--forget", "3", "--weights", "{root}/absent.pt"], 1,
     ["weights file not found"]),
    ("weights-folder", [*P, "--arch", ZOO, "--forget", "3", "--weights", "{root}/empty_dir"], 1, ["is a folder"]),
    ("weights-truncated", [*P, "--arch", ZOO, "--forget", "3", "--weights", "{root}/truncated.pt"], 1,
     ["truncated or corrupt", "re-download"]),
    ("weights-random", [*P, "--arch", "resnet18", "--forget", "3", "--weights", "{root}/random.pt"], 1,
     ["cannot read weights", "not a torch checkpoint"]),
    ("weights-empty", [*P, "--arch", ZOO, "--forget", "3", "--weights", "{root}/empty.pt"], 1, ["cannot read weights"]),
    ("weights-truncated-yolo", [*P, "--arch", YOLO, "--forget", "3", "--weights", "{root}/truncated.pt"], 1,
     ["truncated or corrupt"]),
    ("weights-truncated-deeplab", [*P, "--arch", DEEPLAB, "--forget", "3", "--weights", "{root}/truncated.pt"], 1,
     ["truncated or corrupt"]),
    ("weights-deeplab-for-timm", [*P, "--arch", "resnet18", "--forget", "3", "--weights", "{deeplab}"], 1,
     ["tpunlearn-deeplabv3/1 checkpoint", "not weights for the timm model", "--arch it was made for"]),
    ("weights-resnet10t-for-resnet18", [*P, "--arch", "resnet18", "--forget", "3", "--weights", "{root}/resnet10t.pt"],
     1, ["resnet10t.pt does not fit resnet18"]),
    ("weights-yolo-for-timm-zoo", [*P, "--arch", ZOO, "--forget", "3", "--weights", "{yolo}"], 1,
     ["ultralytics checkpoint (DetectionModel)"]),
    ("weights-resnet-for-yolo", [*P, "--arch", YOLO, "--forget", "3", "--weights", "{resnet}"], 1,
     ["holds no ultralytics model", "tpunlearn-zoo/1"]),
    ("weights-resnet-for-deeplab", [*P, "--arch", DEEPLAB, "--forget", "3", "--weights", "{resnet}"], 1,
     ["tpunlearn-zoo/1 checkpoint (resnet18), not a DeepLabv3 one"]),
    ("hub-offline", [*P, "--arch", "yolov5s", "--forget", "person"], 1,
     ["no weights for yolov5s", "offline", "--weights PATH"]),
    # ---- data (exit 1) -------------------------------------------------------------------------------------
    ("data-missing-yolo", [*P, "--arch", YOLO, "--forget", "3", "--data", "{root}/absent"], 1,
     ["cannot read data", "dataset YAML"]),
    ("data-empty-yolo", [*P, "--arch", YOLO, "--forget", "3", "--data", "{root}/empty_dir"], 1, ["no images in"]),
    ("data-missing-deeplab", [*P, "--arch", DEEPLAB, "--forget", "3", "--data", "{root}/absent"], 1,
     ["neither 'digits' nor a folder", "VOC-style"]),
    ("data-empty-deeplab", [*P, "--arch", DEEPLAB, "--forget", "3", "--data", "{root}/empty_dir"], 1,
     ["not a VOC-style folder", "JPEGImages"]),
    ("data-broken-yaml", [*P, "--arch", YOLO, "--forget", "3", "--data", "{root}/broken.yaml"], 1,
     ["cannot read dataset", "YAML syntax error"]),
    ("data-not-an-image", [*P, "--arch", YOLO, "--forget", "3", "--data", "{root}/bad_images"], 1,
     ["cannot read image", "x.jpg"]),
    ("forget-absent-from-data", [*P, "--arch", ZOO, "--forget", "{absent}", "--data", "digits:1", "--samples", "1"], 1,
     ["no sample in --data digits:1 holds target(s) '{absent}'", "pass --data with instances"]),
    # ---- JSON inputs (exit 1) ------------------------------------------------------------------------------
    ("cache-other-model", [*P, "--arch", ZOO, "--forget", "3", "--graph", "{root}/other_cache.json"], 1,
     ["the cache was made for another model", "tpunlearn graph"]),
    ("cache-is-graph-json", [*P, "--arch", ZOO, "--forget", "3", "--graph", "{root}/graph.json"], 1,
     ["not a tpunlearn graph cache", "tpunlearn-graph/1"]),
    ("cache-bad-json", [*P, "--arch", ZOO, "--forget", "3", "--graph", "{root}/bad.json"], 1, ["not valid JSON"]),
    # ---- the other commands share the checks -----------------------------------------------------------------
    ("eval-truncated", ["eval", "--arch", "resnet18", "--weights", "{root}/truncated.pt"], 1, ["truncated or corrupt"]),
    ("graph-unknown-arch", ["graph", "--arch", "nope", "--out", "{root}/c.json"], 2, ["unknown arch"]),
    ("export-missing-weights", ["export", "--arch", ZOO, "--weights", "{root}/absent.pt", "--onnx", "{root}/m.onnx"],
     1, ["weights file not found"]),
]


def _fill(text: str, files: SimpleNamespace, absent: str) -> str:
    return text.format(root=files.root, resnet=files.resnet, yolo=files.yolo, deeplab=files.deeplab, absent=absent)


@pytest.mark.parametrize("argv, code, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(files, capsys, argv, code, fragments):
    absent = absent_digit() if any("{absent}" in a for a in argv) else ""
    before = {p.name for p in files.root.iterdir()}
    result = run(capsys, *(_fill(a, files, absent) for a in argv))
    assert_error(result, code, *(_fill(f, files, absent) for f in fragments))
    assert {p.name for p in files.root.iterdir()} == before  # nothing written beside the inputs (no out/)


def test_refused_runs_leave_the_input_folders_as_they_were(files):
    assert (files.root / "holds_weights" / "model.pt").read_bytes() == files.resnet.read_bytes()
    assert [p.name for p in (files.root / "not_empty").iterdir()] == ["keep.txt"]


def test_unexpected_errors_are_one_line_without_traceback(monkeypatch, capsys):
    from tpunlearn import adapters

    def boom(*_a, **_k):
        raise ZeroDivisionError("deep inside")

    monkeypatch.setattr(adapters.get("timm"), "build", boom)
    line = assert_error(run(capsys, "eval", "--arch", ZOO), 1, "TPUNLEARN_DEBUG=1")
    assert line.startswith("tpunlearn: error: unexpected ZeroDivisionError: deep inside")
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["eval", "--arch", ZOO])


def test_os_errors_are_one_line(monkeypatch, tmp_path, capsys):
    from tpunlearn import io

    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "m.json"))

    monkeypatch.setattr(io, "write_json", denied)
    assert cli.main(["eval", "--arch", ZOO, "--json", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"tpunlearn: error: Permission denied: {tmp_path / 'm.json'}"


# ---- the Python API raises tpunlearn's own exceptions ----------------------------------------------------------


def test_api_errors_are_specific_exceptions(tiny_cnn, samples, tmp_path):
    import tpunlearn as tu
    from tpunlearn import adapters
    from tpunlearn.plan import PrunePlan, make_plan

    cases = [
        (UsageError, "unknown arch", lambda: adapters.for_arch("nope")),
        (UsageError, "delta must lie in (0, 1]", lambda: tu.unlearn(tiny_cnn, samples, forget=[0], delta=0)),
        (UsageError, "sigma must be >= 1", lambda: tu.unlearn(tiny_cnn, samples, forget=[0], sigma=0)),
        (UsageError, "larger than the number of prunable", lambda: tu.unlearn(tiny_cnn, samples, forget=[0], sigma=9)),
        (UsageError, "both forgotten and retained", lambda: tu.unlearn(tiny_cnn, samples, forget=[0], retain=[0, 1])),
        (UsageError, "out of range", lambda: tu.unlearn(tiny_cnn, samples, forget=[10])),
        (DataError, "no sample holds target(s) [3]",
         lambda: tu.unlearn(tiny_cnn, [(samples[0][0], torch.zeros(6, 10))], forget=[3], sigma=1, progress=False)),
        (DataError, "the data is empty", lambda: tu.unlearn(tiny_cnn, [], forget=[0])),
        (WeightsError, "weights file not found", lambda: adapters.get("timm").build("resnet18", tmp_path / "x.pt")),
    ]
    for kind, fragment, call in cases:
        with pytest.raises(kind) as err:
            call()
        assert isinstance(err.value, TpunlearnError)
        assert fragment in str(err.value) and "\n" not in str(err.value)

    # a plan (and a graph) made for one model, used on another
    x = torch.rand(1, 3, 32, 32)
    plan = make_plan(tiny_cnn, {"conv2": [0, 1]}, {}, x, candidates=["conv2"])
    plan.save(tmp_path / "plan.json")
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    with pytest.raises(PlanError, match="plan.json: the plan was made for another model"):
        PrunePlan.load(tmp_path / "plan.json", model=other)
    with pytest.raises(PlanError, match="made for another model"):
        PrunePlan.load(tmp_path / "plan.json").replay(other, x)


@pytest.mark.parametrize("damage", ["channel", "layer", "action", "history", "missing"])
def test_damaged_plan_json_is_refused_before_use(tiny_cnn, tmp_path, damage):
    import copy

    from tpunlearn.plan import PrunePlan, make_plan

    x = torch.rand(1, 3, 32, 32)
    plan = make_plan(tiny_cnn, {"conv2": [0, 1]}, {}, x, candidates=["conv2"])
    plan.apply(copy.deepcopy(tiny_cnn), x)
    data = plan.to_dict()
    if damage == "channel":
        data["decisions"][0]["channels"] = [0, 99]
    elif damage == "layer":
        data["decisions"][0]["members"] = {"nope": [0]}
    elif damage == "action":
        data["decisions"][0]["action"] = "explode"
    elif damage == "history":
        data["history"][0][0] = "nope"
    else:
        del data["signature"]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    fresh = copy.deepcopy(tiny_cnn)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(PlanError) as err:
        PrunePlan.load(path, model=fresh).replay(fresh, x)
    assert str(path) in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # refused before any change


def test_graph_json_from_another_model_is_refused(tiny_cnn, tiny_resnet, samples, tmp_path):
    import tpunlearn as tu
    from tpunlearn.graph import BalancedGraph

    res = tu.unlearn(tiny_cnn, samples, forget=[0], sigma=2, delta=0.3, progress=False)
    res.graph.save(tmp_path / "graph.json")
    assert BalancedGraph.load(tmp_path / "graph.json", model=tiny_cnn).flagged() == res.graph.flagged()
    with pytest.raises(PlanError, match="graph was made for another model"):
        BalancedGraph.load(tmp_path / "graph.json", model=tiny_resnet)
    data = json.loads((tmp_path / "graph.json").read_text())
    data["value"][data["layers"][0]] = [1, 2]  # a vector that does not fit its layer
    (tmp_path / "graph.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match="has .* channels but vectors"):
        BalancedGraph.load(tmp_path / "graph.json")


def test_damaged_cache_scores_are_refused(tmp_path):
    from tpunlearn.cache import load_cache

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 3))
    scores = ChannelScores(layers=["2"], channels={"2": 5},
                           targets={0: TargetScores(alpha={"2": torch.arange(5.0)}, count=1)})
    path = tmp_path / "cache.json"
    save_cache(path, scores, model)
    back, _ = load_cache(path, model)
    assert torch.equal(back.alpha(0, "2"), torch.arange(5.0))
    data = json.loads(path.read_text())
    data["scores"]["targets"]["0"]["alpha"]["2"] = [0.0, 1.0]
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"\(2,\) scores for 5 channels"):
        load_cache(path, model)
