"""Classification readers on generated data in the users' formats, and the timm CLI on them."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_error, listing, run_captured
from tpunlearn.data.glyphscenes import GlyphScenes
from tpunlearn.data.specs import labels_of, read_classification
from tpunlearn.data.writers import write_celeba, write_image_folder, write_tags_csv
from tpunlearn.errors import DataError


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cls")
    train = GlyphScenes("train", size=32, n_scenes=24, objects=(1, 1))
    val = GlyphScenes("val", size=32, n_scenes=12, objects=(1, 1))
    write_image_folder(base / "if", {"train": train, "val": val})
    for extra in {p.name for p in (base / "if/val").iterdir()} - {p.name for p in (base / "if/train").iterdir()}:
        shutil.rmtree(base / "if/val" / extra)
    write_tags_csv(base / "tg", {"train": train, "val": val})
    write_celeba(base / "cb", {"train": train})
    return base


def test_formats_and_splits(root: Path) -> None:
    folder = read_classification(str(root / "if"))
    assert (folder.format, folder.task, folder.holdout) == ("imagefolder", "multiclass", None)
    assert folder.class_names == sorted(p.name for p in (root / "if/train").iterdir())
    assert labels_of(folder.split("train")).sum(1).eq(1).all()
    tags = read_classification(str(root / "tg" / "tags.csv"))
    assert (tags.format, tags.task, len(tags.class_names)) == ("tags", "multilabel", 24)
    assert {k: len(v) for k, v in tags.splits.items()} == {"train": 24, "val": 12}  # type: ignore[arg-type]
    image, label = tags.split("val")[0]
    assert label.shape == (24,)
    celeba = read_classification(str(root / "cb"))
    assert celeba.holdout == {"fraction": 0.2, "seed": 0, "from": "train", "sizes": {"train": 19, "val": 5}}
    again = read_classification(str(root / "cb"))
    assert list(celeba.split("val").indices) == list(again.split("val").indices)  # type: ignore[attr-defined]


def _csv(tmp_path: Path, text: str) -> str:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "t.csv").write_text(text)
    return str(tmp_path / "t.csv")


@pytest.mark.parametrize(("text", "fragment"), [
    ("name,x,y\na.png,0,1\n", "no 'file' column"),
    ("file,x,y\na.png,0,2\n", "column 'y' line 2"),
    ("file,x,y\na.png,0,1\nb.png,1,0\nc.png,1,0\n", "2 image(s) that do not exist, first"),
])
def test_bad_csv(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(DataError, match=None) as exc:
        read_classification(_csv(tmp_path, text))
    assert fragment in str(exc.value)


def test_bad_folders(root: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    shutil.copytree(root / "if/train" / "circle", one / "circle")
    with pytest.raises(DataError, match="at least two"):
        read_classification(str(one))
    (one / "empty").mkdir()
    shutil.copytree(root / "if/train" / "star", one / "star")
    with pytest.raises(DataError, match="'empty' holds no images"):
        read_classification(str(one))
    cb = tmp_path / "cb"
    shutil.copytree(root / "cb", cb)
    attr = cb / "list_attr_celeba.txt"
    attr.write_text("99\n" + attr.read_text().split("\n", 1)[1])
    with pytest.raises(DataError, match="says 99 images but holds 24 rows"):
        read_classification(str(cb))


@pytest.fixture(scope="module")
def weights(root: Path) -> Path:
    import timm

    torch.manual_seed(0)
    k = len(read_classification(str(root / "if")).class_names)
    path = root / "w.pt"
    torch.save({"state_dict": {f"module.{n}": v for n, v in timm.create_model("resnet18", num_classes=k)
                               .state_dict().items()}}, path)
    return path


@pytest.mark.parametrize("data", ["if", "tg/tags.csv"])
def test_cli_prune_user_data(root: Path, weights: Path, tmp_path: Path, data: str) -> None:
    k = len(read_classification(str(root / data)).class_names)
    w = weights
    if data != "if":
        import timm

        w = tmp_path / "w.pt"
        torch.save(timm.create_model("resnet18", num_classes=k).state_dict(), w)
    code, out, err = run_captured("prune", "--arch", "resnet18", "--num-classes", k, "--imgsz", 32, "--weights", w,
                                  "--data", root / data, "--forget", "circle", "--samples", 4, "--out", tmp_path / "o")
    assert code == 0, err
    import re

    removed = re.search(r"removed (\d+) channels", out)
    assert removed is not None and int(removed.group(1)) > 0, out
    assert (tmp_path / "o" / "report.json").is_file()
    assert (tmp_path / "o" / "model.pt").is_file()


def test_cli_class_count_mismatch(root: Path, weights: Path, tmp_path: Path) -> None:
    result = run_captured("prune", "--arch", "resnet18", "--num-classes", 24, "--imgsz", 32,
                          "--data", root / "if", "--forget", "circle", "--out", tmp_path / "o")
    assert_error(result, 1, "16 classes", "24 outputs", "--num-classes 16")
    assert not (tmp_path / "o").exists() or listing(tmp_path / "o") == {}
