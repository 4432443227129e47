"""A user's own torchvision DeepLabV3 state dict with a VOC-style folder of their own: the weights as
torchvision and its trainers save them, class names from labelmap.txt or --names, bad data as one
line, a run that removes nothing saying so, and the README block run as written.

The data are GlyphScenes (not DigitScenes) written as a VOC folder with two classes besides
background: glyph shapes are ``cat``, letters ``dog`` (the names the README block uses).
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from helpers import assert_error, build_tiny_resnet, make_batches, run, run_readme_block
from PIL import Image

import tpunlearn as tu
from tpunlearn.adapters.deeplabv3 import IMAGENET
from tpunlearn.data.glyphscenes import GlyphScenes
from tpunlearn.data.writers import write_voc_folder
from tpunlearn.errors import UsageError, WeightsError
from tpunlearn.models import load_model

SIZE = 64
NAMES = ["background", "cat", "dog"]


class CatsAndDogs:
    """GlyphScenes with two mask classes: shapes are 1 (``cat``), letters 2 (``dog``)."""

    class_names = NAMES[1:]

    def __init__(self, split: str, n: int) -> None:
        self.ds = GlyphScenes(split, size=SIZE, n_scenes=n)

    def __len__(self) -> int:
        return len(self.ds)

    def scene(self, i: int):
        scene = self.ds.scene(i)
        mask = scene.mask.clone()
        mask[(mask > 0) & (mask <= 12)] = 1
        mask[mask > 12] = 2
        return dataclasses.replace(scene, mask=mask)


def _deeplab(num_classes: int = 3, aux: bool = False, seed: int = 0) -> torch.nn.Module:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    torch.manual_seed(seed)
    return deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes,
                                        aux_loss=aux).eval()


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """``voc/`` (16 train, 8 val scenes, colour masks, labelmap.txt) and ``deeplab.pth`` (a random 3-class
    deeplabv3_mobilenet_v3_large state dict), as the README block expects them."""
    root = tmp_path_factory.mktemp("user")
    write_voc_folder(root / "voc", {"train": CatsAndDogs("train", 16), "val": CatsAndDogs("val", 8)},
                     masks="colour")
    model = _deeplab()
    torch.save(model.state_dict(), root / "deeplab.pth")
    return root, model


def _fresh(user, tmp_path):
    """A copy of the user's folder that a test may break."""
    root, _ = user
    shutil.copytree(root, tmp_path / "u")
    return tmp_path / "u"


# ---- weights -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", ["plain", "module", "model", "state_dict"])
def test_state_dicts_as_trainers_save_them(user, tmp_path, wrap):
    _, model = user
    sd = model.state_dict()
    payload = {"plain": sd, "module": {f"module.{k}": v for k, v in sd.items()}, "model": {"model": sd, "epoch": 3},
               "state_dict": {"state_dict": {f"module.{k}": v for k, v in sd.items()}}}[wrap]
    torch.save(payload, tmp_path / "w.pth")
    _, built, info = load_model("deeplabv3", tmp_path / "w.pth", imgsz=SIZE)  # backbone read from the keys
    assert info.arch == "deeplabv3_mobilenet_v3_large" and info.class_names == ["0", "1", "2"]
    assert info.extra["normalize"] == IMAGENET  # torchvision's recipes normalise so
    assert built.aux_classifier is None
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(built(x)["out"], model(x)["out"])
    _, again, _ = load_model("deeplabv3_mobilenet_v3_large", tmp_path / "w.pth", imgsz=SIZE)  # named: the same
    assert torch.equal(again.state_dict()["classifier.4.weight"], sd["classifier.4.weight"])


def test_class_count_and_aux_head_come_from_the_keys(tmp_path):
    torch.save(_deeplab(num_classes=5, aux=True).state_dict(), tmp_path / "w.pth")
    _, model, info = load_model("deeplabv3", tmp_path / "w.pth", imgsz=SIZE)
    assert len(info.class_names) == 5 and model.aux_classifier is not None
    assert model(torch.rand(1, 3, SIZE, SIZE))["out"].shape[1] == 5


def test_backbones_are_told_apart_by_their_keys():
    from torchvision.models import segmentation

    from tpunlearn.adapters.deeplabv3 import infer_builder

    with torch.device("meta"):  # keys only, no memory
        for arch in ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large"):
            sd = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=3).state_dict()
            assert infer_builder(sd) == arch
    assert infer_builder({"classifier.4.weight": torch.zeros(3, 256, 1, 1)}) is None


def test_a_state_dict_of_another_backbone_is_one_line(user, tmp_path):
    root, _ = user
    with pytest.raises(WeightsError, match="holds a deeplabv3_mobilenet_v3_large .*pass --arch "
                                           "deeplabv3_mobilenet_v3_large"):
        load_model("deeplabv3_resnet50", root / "deeplab.pth")
    torch.save({"classifier.4.weight": torch.zeros(3, 256, 1, 1)}, tmp_path / "head.pth")
    with pytest.raises(WeightsError, match="cannot tell the DeepLabv3 backbone"):
        load_model("deeplabv3", tmp_path / "head.pth")
    with pytest.raises(UsageError, match="reads the backbone from --weights"):
        load_model("deeplabv3")


# ---- class names ---------------------------------------------------------------------------------------------
def test_labelmap_names_the_classes_and_forget_takes_them(user, capsys):
    root, _ = user
    code, out, err = run(capsys, "eval", "--arch", "deeplabv3", "--weights", root / "deeplab.pth", "--data",
                         root / "voc", "--imgsz", SIZE)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:4]}
    assert list(rows) == NAMES and all(int(r[-1]) > 0 for r in rows.values())  # every class has pixels


def test_names_flag_names_a_folder_without_labelmap(user, tmp_path, capsys):
    root = _fresh(user, tmp_path)
    (root / "voc" / "labelmap.txt").unlink()
    (root / "voc" / "SegmentationClass").rename(root / "colour")  # colour masks need the labelmap's colours
    args = ["eval", "--arch", "deeplabv3", "--weights", root / "deeplab.pth", "--data", root / "voc", "--imgsz", SIZE]
    write_voc_folder(tmp_path / "pal", {"train": CatsAndDogs("train", 16), "val": CatsAndDogs("val", 8)},
                     labelmap=False)
    shutil.copytree(tmp_path / "pal" / "SegmentationClass", root / "voc" / "SegmentationClass")
    code, out, err = run(capsys, *args, "--names", "bg,a,b")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:4]] == ["bg", "a", "b"]
    assert_error(run(capsys, *args, "--names", "bg,a"), 2, "2 class names given for a model with 3 classes")
    assert_error(run(capsys, *args, "--names", "bg,a,a"), 2, "class name(s) a given twice")
    shutil.rmtree(root / "voc" / "SegmentationClass")
    (root / "colour").rename(root / "voc" / "SegmentationClass")
    assert_error(run(capsys, *args), 1, "is an RGB colour mask", "no labelmap.txt")


def test_labelmap_and_head_that_disagree_are_one_line(user, tmp_path, capsys):
    root = _fresh(user, tmp_path)
    torch.save(_deeplab(num_classes=4).state_dict(), root / "four.pth")
    base = ["--data", root / "voc", "--imgsz", SIZE]
    assert_error(run(capsys, "eval", "--arch", "deeplabv3", "--weights", root / "four.pth", *base), 1,
                 "labelmap.txt names 3 classes (background, cat, dog), but the model's head has 4 outputs")
    assert_error(run(capsys, "eval", "--arch", "deeplabv3", "--weights", root / "deeplab.pth", "--names", "x,y,z",
                     *base), 1, "labelmap.txt names classes background, cat, dog; --names names them x, y, z")


# ---- bad data: one line, exit 1, nothing written --------------------------------------------------------------
def _break(root, how: str) -> None:
    voc = root / "voc"
    if how == "mask":
        (voc / "SegmentationClass" / "train_00003.png").unlink()
    elif how == "image":
        (voc / "JPEGImages" / "train_00003.png").unlink()
    elif how == "list":
        (voc / "ImageSets" / "Segmentation" / "train.txt").unlink()
    elif how == "labelmap":
        (voc / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:128,0::\n")
    elif how == "colour":
        path = voc / "SegmentationClass" / "train_00002.png"
        with Image.open(path) as m:
            img = m.convert("RGB")
        img.putpixel((5, 7), (1, 2, 3))
        img.save(path)


@pytest.mark.parametrize("how, fragments", [
    ("mask", ["SegmentationClass has no mask train_00003.png"]),
    ("image", ["JPEGImages has no image for 'train_00003'"]),
    ("list", ["has no ImageSets/Segmentation/train.txt"]),
    ("labelmap", ["labelmap.txt line 3: colour '128,0' of 'cat' is not three values"]),
    ("colour", ["train_00002.png: colour (1, 2, 3) (pixel x=5, y=7) is not a class colour in labelmap.txt"]),
])
def test_bad_data_is_one_line_and_writes_nothing(user, tmp_path, capsys, how, fragments):
    root = _fresh(user, tmp_path)
    _break(root, how)
    result = run(capsys, "prune", "--arch", "deeplabv3", "--weights", root / "deeplab.pth", "--data", root / "voc",
                 "--imgsz", SIZE, "--forget", "cat", "--samples", "4", "--out", tmp_path / "o")
    assert_error(result, 1, *fragments)
    assert not (tmp_path / "o").exists()


def test_forget_names_that_are_no_class_or_absent_list_the_classes(user, tmp_path, capsys):
    root = _fresh(user, tmp_path)
    base = ["prune", "--arch", "deeplabv3", "--weights", root / "deeplab.pth", "--data", root / "voc", "--imgsz",
            SIZE, "--samples", "4", "--out", tmp_path / "o"]
    assert_error(run(capsys, *base, "--forget", "horse"), 2, "unknown target 'horse'; valid: background, cat, dog")
    # no training mask holds a dog: the line names the classes the masks do hold
    write_voc_folder(tmp_path / "nodog", {"train": CatsAndDogs("train", 16)}, masks="colour")
    for path in (tmp_path / "nodog" / "SegmentationClass").iterdir():
        with Image.open(path) as m:
            pixels = torch.tensor(list(m.convert("RGB").getdata()), dtype=torch.uint8)
        pixels[(pixels == torch.tensor([0, 128, 0], dtype=torch.uint8)).all(1)] = 0  # dog pixels -> background
        Image.frombytes("RGB", m.size, pixels.numpy().tobytes()).save(root / "voc" / "SegmentationClass" / path.name)
    assert_error(run(capsys, *base, "--forget", "dog"), 1, "holds target(s) 'dog'; its labels hold "
                                                           "background, cat")
    assert not (tmp_path / "o").exists()


# ---- a run that removes nothing says so ----------------------------------------------------------------------
def test_a_run_that_removes_no_channel_says_why(user, tmp_path, capsys):
    """The issue's report: a random 3-class DeepLab on a small VOC folder removed 0 channels and exited 0
    as if it had worked. At the defaults every channel the forget class selects in the 4 scored ASPP
    layers is shared with a retained class."""
    root, _ = user
    code, out, err = run(capsys, "prune", "--arch", "deeplabv3", "--weights", root / "deeplab.pth", "--data",
                         root / "voc", "--imgsz", SIZE, "--forget", "cat", "--samples", "8", "--eval", "--strict",
                         "--out", tmp_path / "o")
    assert code == 3, err  # not a success; the outputs are written all the same
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["removed_channels"] == 0
    outcome = report["outcome"]
    assert outcome["status"] == "nothing removed"
    assert "no channel is specific to the forget target" in outcome["why"] and "--sigma 4" in outcome["why"]
    assert outcome["try"][0].startswith("--retain-tolerance 1") and "--auto" in outcome["try"]
    assert any("--sigma" in t for t in outcome["try"])
    assert "removed 0 channels" in out and "nothing removed: the model is unchanged" in out
    warning = next(line for line in err.splitlines() if "removed no channel" in line)
    assert outcome["why"] in warning and "try --retain-tolerance 1" in warning and "or --auto" in warning
    verdict = report["verdict"]
    assert verdict["status"] == "not met" and not verdict["met"]
    assert any(outcome["why"] in w for w in verdict["warnings"])
    assert out.strip().splitlines()[-1].startswith("verdict: not met")
    page = (tmp_path / "o" / "report.html").read_text()
    assert 'id="outcome"' in page and "nothing removed: the model is unchanged" in page


# ---- README ----------------------------------------------------------------------------------------------------
def test_readme_block_runs_as_written(user, tmp_path):
    root = _fresh(user, tmp_path)
    procs = run_readme_block("deeplabv3", root)
    assert "background" in procs[0].stdout and "dog" in procs[0].stdout
    report = json.loads(next(root.glob("*/report.json")).read_text())
    assert report["forget"] == ["cat"] and report["verdict"]["status"] in ("met", "not met")
    assert report["outcome"]["status"] in ("pruned", "nothing removed")
    assert len(procs) == 3 and procs[2].stdout.splitlines()[0] == procs[0].stdout.splitlines()[0]  # same table head
    assert [line.split()[0] for line in procs[2].stdout.splitlines()[1:4]] == NAMES


@pytest.mark.slow  # two prunes (~40-60 s on two shared cores)
def test_the_hint_holds_and_auto_does_not_call_nothing_a_success(user, tmp_path, capsys):
    root, _ = user
    base = ["prune", "--arch", "deeplabv3", "--weights", root / "deeplab.pth", "--data", root / "voc", "--imgsz",
            SIZE, "--forget", "cat", "--samples", "8"]
    code, out, err = run(capsys, *base, "--retain-tolerance", "1", "--out", tmp_path / "o")  # the first hint
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["removed_channels"] > 0 and report["outcome"] == {"status": "pruned"}
    assert "removed no channel" not in err
    # --auto: a setting that removes nothing meets no goal, even where the forget metric is already 0
    code, out, err = run(capsys, *base, "--auto", "--auto-sigmas", "1", "--auto-deltas", "0.02", "--out",
                         tmp_path / "a")
    assert code == 0, err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["removed_channels"] == 0 and report["auto"]["met"] is False
    assert "auto: no setting tried met the goal" in err
    assert "--auto" not in report["outcome"]["try"]  # the search ran: the rest is left to try


def test_the_api_report_says_which_step_kept_every_channel():
    """The same outcome from ``tu.unlearn`` on any model (here the tests' tiny ResNet): channels
    flagged but all held back by width alignment, and what following the hint gives."""
    model, batches = build_tiny_resnet(), make_batches()
    held = tu.unlearn(model, batches, forget=[3], progress=False, sigma=2, align=16)
    outcome = held.report["outcome"]
    assert held.report["removed_channels"] == 0 and outcome["status"] == "nothing removed"
    flagged = held.report["removal"]["total"]["flagged"]
    assert flagged > 0 and outcome["why"].startswith(f"{flagged} channel(s) were flagged but all kept: "
                                                     f"{flagged} held back by width alignment (--align 16)")
    assert outcome["try"][0] == "--align 1"
    freed = tu.unlearn(model, batches, forget=[3], progress=False, sigma=2, align=1)
    assert freed.report["removed_channels"] >= flagged and freed.report["outcome"] == {"status": "pruned"}
