"""A user's own timm classifier on their own data: every command on an ImageFolder root, a tags
CSV and CelebA's files (generated, in the users' formats), the report's record of the split,
and loading the saved model back."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import assert_error, listing, run_captured
from tpunlearn.data.glyphscenes import GlyphScenes
from tpunlearn.data.specs import read_classification
from tpunlearn.data.writers import write_celeba, write_image_folder, write_tags_csv

SIZE = 32
SHAPES = 3  # the ImageFolder keeps the scenes of the first three classes: circle, square, triangle


class _FirstClasses:
    """The single-glyph scenes whose glyph is one of the first ``k`` classes (a small ImageFolder)."""

    def __init__(self, scenes: GlyphScenes, k: int) -> None:
        self.scenes, self.class_names = scenes, scenes.class_names
        self.index = [i for i in range(len(scenes)) if scenes.scene(i).labels[0] < k]

    def __len__(self) -> int:
        return len(self.index)

    def scene(self, i: int) -> Any:
        return self.scenes.scene(self.index[i])


def _state(k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=k).state_dict()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("own")
    single = {s: _FirstClasses(GlyphScenes(s, size=SIZE, n_scenes=n, objects=(1, 1)), SHAPES)
              for s, n in (("train", 160), ("val", 200))}
    write_image_folder(base / "if", single)
    multi = {s: GlyphScenes(s, size=SIZE, n_scenes=48) for s in ("train", "val")}
    write_tags_csv(base / "tg", multi)
    write_celeba(base / "cb", {"train": multi["train"]})  # no val partition: a held-out fraction
    torch.save(_state(SHAPES), base / "w_if.pt")  # a plain state dict
    state = _state(24)
    torch.save({"epoch": 3, "state_dict": state, "state_dict_ema": {f"module.{k}": v for k, v in state.items()}},
               base / "w_tags.pt")  # timm's training checkpoint layout
    torch.save(state, base / "w_cb.pt")
    return base


FORMATS = {"if": ("if", "w_if.pt"), "tags": ("tg/tags.csv", "w_tags.pt"), "celeba": ("cb", "w_cb.pt")}


def _forget(root: Path, data: str) -> str:
    """A class with instances in both the training and the validation split."""
    found = read_classification(str(root / data))
    both = set(found.present("train")) & set(found.present("val"))
    return next(c for c in found.class_names if c in both)


def _model(root: Path, fmt: str) -> list[Any]:
    data, weights = FORMATS[fmt]
    return ["--arch", "resnet18", "--weights", root / weights, "--imgsz", SIZE, "--data", root / data]


def _ok(*argv: Any) -> str:
    code, out, err = run_captured(*argv)
    assert code == 0, err
    return out


@pytest.mark.parametrize("fmt", ["if", pytest.param("tags", marks=pytest.mark.slow),
                                 pytest.param("celeba", marks=pytest.mark.slow)])
def test_every_command_on_user_data(root: Path, tmp_path: Path, fmt: str) -> None:
    model, forget = _model(root, fmt), _forget(root, FORMATS[fmt][0])
    out = _ok("eval", *model, "--json", tmp_path / "eval.json")
    task = "accuracy" if fmt == "if" else "mAP"
    assert task in out
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["data"]["format"] == {"if": "imagefolder", "tags": "tags", "celeba": "celeba"}[fmt]
    _ok("graph", *model, "--out", tmp_path / "g.json", "--samples", 4)
    assert (tmp_path / "g.json").is_file()
    for name, extra in (("eval", ["--eval"]), ("repair", ["--repair-epochs", 1]),
                        ("auto", ["--auto", "--auto-sigmas", 2, "--auto-deltas", 0.2])):
        _ok("prune", *model, "--forget", forget, "--samples", 4, "--out", tmp_path / name, *extra)
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert (tmp_path / name / "model.pt").is_file()
        assert report["forget"] == [forget]
    assert "metrics" in json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "repair" in json.loads((tmp_path / "repair" / "report.json").read_text())
    assert json.loads((tmp_path / "auto" / "report.json").read_text())["auto"]["split"] == "validation"
    _ok("eval", *model, "--mia", "--forget", forget, "--json", tmp_path / "mia.json")
    assert json.loads((tmp_path / "mia.json").read_text())["mia"]["forget"] == [forget]
    pruned = ["--arch", "resnet18", "--weights", tmp_path / "eval" / "model.pt", "--data", root / FORMATS[fmt][0]]
    _ok("eval", *pruned, "--mia", "--forget", forget)  # the pruned model knows its size, names and task


def test_report_records_the_validation_split(root: Path, tmp_path: Path) -> None:
    """The data's own val/ folder and split column, or a seeded held-out fraction with its sizes
    (tags CSV and CelebA also through ``prune --eval``, the multi-label metrics on their val split)."""
    seen = {}
    for fmt in FORMATS:
        _ok("prune", *_model(root, fmt), "--forget", _forget(root, FORMATS[fmt][0]), "--samples", 4,
            "--out", tmp_path / fmt, *(["--eval"] if fmt != "if" else []))
        report = json.loads((tmp_path / fmt / "report.json").read_text())
        seen[fmt] = report["data"]
        if fmt != "if":
            assert {"recall", "ap"} <= set(next(iter(report["metrics"]["before"].values())))
    assert seen["if"]["holdout"] is None and seen["if"]["used"]["validation"] == "val"
    assert seen["if"]["splits"] == {"train": 23, "val": 26}
    assert seen["tags"]["holdout"] is None and seen["tags"]["splits"] == {"train": 48, "val": 48}
    assert seen["celeba"]["holdout"] == {"fraction": 0.2, "seed": 0, "from": "train",
                                         "sizes": {"train": 38, "val": 10}}
    assert seen["celeba"]["splits"] == {"train": 38, "val": 10}


def test_forget_names_list_the_classes(root: Path, tmp_path: Path) -> None:
    model = _model(root, "if")
    assert_error(run_captured("prune", *model, "--forget", "unicorn", "--out", tmp_path / "o"), 2,
                 "unknown target 'unicorn'", "circle, square, triangle")
    write_tags_csv(tmp_path / "three", {"train": _FirstClasses(GlyphScenes("train", size=SIZE, n_scenes=40,
                                                                           objects=(1, 1)), SHAPES)})
    few = ["--arch", "resnet18", "--weights", root / "w_cb.pt", "--imgsz", SIZE, "--data", tmp_path / "three"]
    line = assert_error(run_captured("prune", *few, "--forget", "diamond", "--out", tmp_path / "o"), 1,
                        "holds target(s) 'diamond'", "its labels hold circle, square, triangle")
    line = assert_error(run_captured("eval", *few, "--mia", "--forget", "diamond"), 1, "holds 'diamond'")
    assert line.endswith("circle, square, triangle"), line
    assert not (tmp_path / "o").exists() or listing(tmp_path / "o") == {}


# ---- loading back (issue 12 part 8) ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digitscenes-resnet", pytest.param("digitscenes-yolov5", marks=pytest.mark.slow),
                                  "digitscenes-deeplabv3"])
def test_load_rebuilds_what_tpunlearn_saved(tmp_path: Path, name: str) -> None:
    """``tu.load`` and ``tu.zoo.load(name, weights=...)`` give back the pruned model, of every family."""
    import itertools

    import tpunlearn as tu
    from tests.helpers import unlearn_family
    from tpunlearn.models import load_model
    from tpunlearn.settings import DEFAULTS
    from tpunlearn.torchutils import forward, main_tensor

    adapter, model, info = load_model(name)
    samples = list(itertools.islice(iter(adapter.samples(model, info, "digits:24", batch_size=8)), 2))
    settings = DEFAULTS.override(**{**adapter.defaults, "n_per_target": 4})  # as the CLI runs the family
    res = unlearn_family(adapter, model, info, samples, [3], settings=settings)
    assert res.report["removed_channels"] > 0
    info.extra["history"] = res.plan.history
    adapter.save(res.model, info, tmp_path / "model.pt")
    x = adapter.example_inputs(info)
    want = main_tensor(forward(res.model.eval(), x))
    width = sum(p.numel() for p in res.model.parameters())
    assert width < sum(p.numel() for p in model.parameters())
    back, back_info = tu.load(tmp_path / "model.pt")
    assert not back.training and back_info.class_names == info.class_names
    assert back_info.arch == name  # the pruned copy is still that zoo model, with its data
    assert sum(p.numel() for p in back.parameters()) == width
    torch.testing.assert_close(main_tensor(forward(back, x)), want)
    again, record = tu.zoo.load(name, weights=tmp_path / "model.pt")
    assert record["name"] == name and record["weights"] == str((tmp_path / "model.pt").resolve())
    torch.testing.assert_close(main_tensor(forward(again, x)), want)


def test_load_refuses_a_file_that_names_no_architecture(tmp_path: Path) -> None:
    import tpunlearn as tu
    from tpunlearn.errors import WeightsError

    torch.save(_state(3), tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match="names no architecture; build it with tpunlearn.models.load_model"):
        tu.load(tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match="no such checkpoint"):
        tu.load(tmp_path / "absent.pt")


# ---- images and normalisation (issue 12 part 1: timm's transforms) ------------------------------------------
def _pixels(model_args: dict[str, Any], spec: Path) -> torch.Tensor:
    """The first scoring batch the timm adapter reads from ``spec`` for the model built from ``model_args``."""
    from tpunlearn.models import load_model

    adapter, model, info = load_model(**model_args)
    return next(iter(adapter.samples(model, info, str(spec), batch_size=4)))[0]


def test_grayscale_images_and_one_channel_models(root: Path, tmp_path: Path) -> None:
    import timm
    from PIL import Image

    import tpunlearn as tu

    for f in (root / "if").rglob("*.png"):  # the ImageFolder as one-channel PNGs
        out = tmp_path / "gray" / f.relative_to(root / "if")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("L").save(out)
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=SHAPES, in_chans=1).state_dict(), tmp_path / "w1.pt")
    assert _pixels({"arch": "resnet18", "weights": tmp_path / "w1.pt", "imgsz": SIZE}, tmp_path / "gray").shape == \
        (4, 1, SIZE, SIZE)  # the stem's channels are read from the state dict
    assert _pixels({"arch": "resnet18", "weights": root / "w_if.pt", "imgsz": SIZE}, tmp_path / "gray").shape == \
        (4, 3, SIZE, SIZE)  # grey images for an RGB model
    gray = ["--arch", "resnet18", "--weights", tmp_path / "w1.pt", "--imgsz", SIZE, "--data", tmp_path / "gray"]
    _ok("prune", *gray, "--forget", "circle", "--samples", 4, "--eval", "--out", tmp_path / "o")
    back, info = tu.load(tmp_path / "o" / "model.pt")
    assert info.input_size == (1, SIZE, SIZE) and info.class_names == ["circle", "square", "triangle"]
    assert back(torch.rand(2, 1, SIZE, SIZE)).shape == (2, SHAPES)


def test_checkpoint_data_config(root: Path, tmp_path: Path) -> None:
    """The zoo's [0, 1] models are fed [0, 1] images, not timm's ImageNet normalisation, and a
    pruned checkpoint records the normalisation it ran with."""
    zoo = _pixels({"arch": "digitscenes-resnet"}, root / "if")
    assert zoo.min() >= 0 and zoo.max() <= 1 and zoo.shape[-1] == 64
    plain = _pixels({"arch": "resnet18", "weights": root / "w_if.pt", "imgsz": SIZE}, root / "if")
    assert plain.min() < -0.5  # ImageNet's mean subtracted: timm's default for a model that says nothing
    own = _pixels({"arch": "resnet18", "weights": root / "w_if.pt", "imgsz": SIZE, "mean": [0.5], "std": [0.5]},
                  root / "if")
    assert own.min() >= -1 and own.max() <= 1 and not torch.allclose(own, plain)
    _ok("prune", "--arch", "digitscenes-resnet", "--forget", "3", "--samples", 4, "--out", tmp_path / "z")
    saved = torch.load(tmp_path / "z" / "model.pt", weights_only=True)
    assert saved["data_config"]["mean"] == [0.0, 0.0, 0.0] and saved["data_config"]["std"] == [1.0, 1.0, 1.0]
    again = _pixels({"arch": "resnet18", "weights": tmp_path / "z" / "model.pt"}, root / "if")
    torch.testing.assert_close(again, zoo)


def test_cli_mean_and_std_are_the_models_normalisation(root: Path, tmp_path: Path) -> None:
    """``--mean``/``--std`` give a timm model its own normalisation on the command line: the pruned
    model.pt records them in its data_config and reads images with them again; bad values and another
    family are one-line usage errors, before anything is written."""
    model, mean, std = _model(root, "if"), [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    _ok("prune", *model, "--forget", "circle", "--samples", 4, "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.5",
        "--out", tmp_path / "o")
    saved = torch.load(tmp_path / "o" / "model.pt", weights_only=True)
    assert saved["data_config"]["mean"] == mean and saved["data_config"]["std"] == std
    own = _pixels({"arch": "resnet18", "weights": root / "w_if.pt", "imgsz": SIZE, "mean": mean, "std": std},
                  root / "if")
    plain = _pixels({"arch": "resnet18", "weights": root / "w_if.pt", "imgsz": SIZE}, root / "if")
    torch.testing.assert_close(_pixels({"arch": "resnet18", "weights": tmp_path / "o" / "model.pt"}, root / "if"), own)
    assert not torch.allclose(own, plain)
    for flag, value, fragment in (("--std", "0.2,0,0.5", "> 0"), ("--std", "0.2,-1,0.5", "> 0"),
                                  ("--mean", "0.5,0.4", "3 comma-separated"), ("--mean", "a,b,c", "3 comma-separated"),
                                  ("--mean", "nan,0,0", "finite")):
        assert_error(run_captured("prune", *model, "--forget", "circle", flag, value, "--out", tmp_path / "bad"), 2,
                     flag, fragment)
    assert_error(run_captured("prune", "--arch", "yolov5n.yaml", "--forget", "0", "--mean", "0.5,0.5,0.5",
                              "--out", tmp_path / "bad"), 2, "timm classifier", "drop them")
    assert not (tmp_path / "bad").exists()


def test_readme_timm_block(root: Path, tmp_path: Path) -> None:
    """The README's own-model block for timm, line by line, on the files it names."""
    import shutil

    from tests.helpers import run_readme_block

    shutil.copytree(root / "if", tmp_path / "data")
    shutil.copy(root / "w_if.pt", tmp_path / "weights.pt")
    done = run_readme_block("timm", tmp_path)
    assert len(done) == 3
    assert "accuracy" in done[0].stdout
    assert "verdict:" in done[1].stdout and (tmp_path / "pruned" / "report.json").is_file()
    assert done[2].stdout.strip() == "['circle', 'square', 'triangle'] (3, 32, 32)"
