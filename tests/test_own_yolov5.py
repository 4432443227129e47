"""A detector the user trained with ultralytics itself (``YOLO("yolov5n.yaml").train(...)`` ->
``runs/detect/train/weights/best.pt``) and the dataset YAML they trained it with, through
``tpunlearn prune|eval`` and back into ``ultralytics.YOLO``.

The fast tests share one yolov5n that ultralytics' own trainer trains for one epoch at 64 px
on a few GlyphScenes images (24 classes, names as a list): the dataset YAML variants users
write (``path`` absolute, beside the YAML or absent; splits as folders, txt lists or lists of
folders; ``names`` as a list or a dict, with ``nc`` or without), and every bad input as one
line with nothing written. The slow test trains for a few epochs, prunes, validates the
result with ultralytics and runs the README's yolov5 block as written.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for the network (read by ultralytics at import)

from tpunlearn import adapters  # noqa: E402
from tpunlearn.data.glyphscenes import GLYPH_CLASSES, GlyphScenes  # noqa: E402
from tpunlearn.data.writers import write_yolo_dataset  # noqa: E402
from tpunlearn.io import sha256  # noqa: E402

from helpers import assert_error, listing, run, run_readme_block  # noqa: E402

SIZE = 64
COUNTS = {"train": 16, "val": 8, "extra": 6}


def generated(root: Path, counts: dict[str, int], names_as: str = "list") -> Path:
    """GlyphScenes written as an ultralytics dataset (``images/<split>``, ``labels/<split>``, ``data.yaml``)."""
    splits = {split: GlyphScenes("train" if split == "extra" else split, size=SIZE, n_scenes=n,
                                 seed=1 if split == "extra" else 0) for split, n in counts.items()}
    return write_yolo_dataset(root, splits, names_as=names_as)


def train(data: Path, project: Path, epochs: int, scale: str = "n") -> Path:
    """ultralytics' own trainer, as a user runs it; returns its ``weights/best.pt``."""
    from ultralytics import YOLO

    YOLO(f"yolov5{scale}.yaml").train(data=str(data), epochs=epochs, imgsz=SIZE, batch=8, device="cpu", workers=0,
                                      project=str(project), name="train", exist_ok=True, plots=False, amp=False,
                                      verbose=False, seed=0, deterministic=True)
    best = project / "train" / "weights" / "best.pt"
    assert best.is_file()
    return best


def write_yaml(file: Path, **data) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    return file


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's dataset (``root/data.yaml``) and the ``best.pt`` that ``yolo train`` left for it."""
    root = tmp_path_factory.mktemp("own-yolo")
    data = generated(root / "ds", COUNTS)
    best = train(data, root / "runs" / "detect", epochs=1)
    return root, data, best


def scored_images(best: Path, data: Path) -> int:
    """How many images the adapter reads (with labels) from a dataset YAML."""
    adapter = adapters.for_arch("yolov5")
    model, info = adapter.build("yolov5", best)
    samples = adapter.samples(model, info, str(data))
    assert samples.labels is not None  # the YOLO txt labels, not the model's own detections
    return len(samples.images)


# ---- the checkpoint -------------------------------------------------------------------------------
def test_yolo_train_checkpoint_builds_with_its_own_scale_and_classes(user):
    _, _, best = user
    adapter = adapters.for_arch(str(best))
    assert adapter.name == "yolov5" and adapters.for_arch("yolov5") is adapter
    for arch in ("yolov5", "yolov5n", str(best)):
        model, info = adapter.build(arch, best)
        assert info.class_names == GLYPH_CLASSES and info.input_size == (3, SIZE, SIZE)  # names, imgsz: train_args
        assert info.extra["scale"] == "n"
    assert adapter.build("yolov5", best)[1].arch == "yolov5n"  # the family name takes the checkpoint's scale


def test_prune_eval_and_ultralytics_reads_the_result(user, tmp_path, capsys):
    root, data, best = user
    before = sha256(best)
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "prune", "--arch", "yolov5", "--weights", best, "--data", data, "--forget",
                            "circle", "--eval", "--out", out)
    assert code == 0, err
    assert "removed" in stdout and "circle" in stdout
    assert "Ultralytics" not in stdout + err and "YOLOv5n summary" not in stdout + err  # its console noise stays out
    assert sha256(best) == before  # the user's checkpoint is never modified
    from ultralytics import YOLO

    pruned = YOLO(str(out / "model.pt"))
    assert pruned.names == dict(enumerate(GLYPH_CLASSES))
    n_before = sum(p.numel() for p in YOLO(str(best)).model.parameters())
    assert sum(p.numel() for p in pruned.model.parameters()) < n_before
    metrics = pruned.val(data=str(data), imgsz=SIZE, device="cpu", workers=0, plots=False, verbose=False,
                         project=str(tmp_path / "val"))
    assert 0.0 <= float(metrics.box.map50) <= 1.0 and len(metrics.box.ap_class_index) > 0
    capsys.readouterr()  # ultralytics' own val printed its progress
    code, stdout, err = run(capsys, "eval", "--arch", "yolov5", "--weights", out / "model.pt", "--data", data)
    assert code == 0, err
    assert "recall at confidence 0.25" in stdout and "mAP50" in stdout
    assert "Ultralytics" not in stdout + err and "Scanning" not in stdout + err


# ---- the dataset YAMLs users write ------------------------------------------------------------------
def _variant(kind: str, root: Path) -> tuple[Path, int]:
    """A dataset YAML of the user's dataset written one way, and the train images it names."""
    ds = root / "ds"
    train, val = sorted((ds / "images" / "train").glob("*.png")), sorted((ds / "images" / "val").glob("*.png"))
    names = list(GLYPH_CLASSES)
    if kind == "names-dict-nc":
        return write_yaml(root / "v" / f"{kind}.yaml", path=str(ds), train="images/train", val="images/val",
                          nc=len(names), names=dict(enumerate(names))), len(train)
    if kind == "names-dict":
        return write_yaml(root / "v" / f"{kind}.yaml", path=str(ds), train="images/train", val="images/val",
                          names={i: n for i, n in enumerate(names)}), len(train)
    if kind == "path-beside-yaml":  # relative to the YAML's folder, read from another working folder
        return write_yaml(ds / "cfg" / f"{kind}.yaml", path="..", train="images/train", val="images/val",
                          names=names), len(train)
    if kind == "path-absent":  # the YAML's folder is the root
        return write_yaml(ds / f"{kind}.yaml", train="images/train", val="images/val", names=names), len(train)
    if kind == "txt-lists":  # relative ("./") and absolute lines
        (ds / "train.txt").write_text("".join(f"./images/train/{f.name}\n" for f in train[:10]))
        (ds / "val.txt").write_text("".join(f"{f}\n" for f in val))
        return write_yaml(ds / f"{kind}.yaml", path=str(ds), train="train.txt", val="val.txt", names=names), 10
    if kind == "folder-lists":
        return write_yaml(root / "v" / f"{kind}.yaml", path=str(ds), train=["images/train", "images/extra"],
                          val=["images/val"], names=names), len(train) + COUNTS["extra"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["names-dict-nc", "names-dict", "path-beside-yaml", "path-absent", "txt-lists", "folder-lists"])
def test_dataset_yaml_variants(user, kind, tmp_path, monkeypatch, capsys):
    root, _, best = user
    spec, n_train = _variant(kind, root)
    monkeypatch.chdir(tmp_path)  # not the dataset's folder
    assert scored_images(best, spec) == n_train
    code, _, err = run(capsys, "prune", "--arch", "yolov5", "--weights", best, "--data", spec, "--forget",
                       "square", "--dry-run")
    assert code == 0, err
    code, stdout, err = run(capsys, "eval", "--arch", "yolov5", "--weights", best, "--data", spec)
    assert code == 0, err
    assert "recall at confidence" in stdout


# ---- bad data: one line, exit 1, nothing written --------------------------------------------------
def _bad(kind: str, root: Path, tmp: Path) -> tuple[Path, str, list[str]]:
    """A broken dataset YAML, the forget name to ask for, and fragments of the expected message."""
    ds, names = root / "ds", list(GLYPH_CLASSES)
    if kind == "val-missing":
        return write_yaml(tmp / "d.yaml", path=str(ds), train="images/train", val="images/nowhere",
                          names=names), "circle", ["images not found", "images/nowhere"]
    if kind == "listed-image-missing":
        (tmp / "train.txt").write_text(f"{ds}/images/train/train_00000.png\n{ds}/images/train/gone.png\n")
        return write_yaml(tmp / "d.yaml", path=str(ds), train=str(tmp / "train.txt"), val="images/val",
                          names=names), "circle", ["train.txt lists 1 image(s) that do not exist", "gone.png"]
    if kind == "val-listed-image-missing":
        (tmp / "val.txt").write_text(f"{ds}/images/val/val_00000.png\n./missing/val_99.png\n")
        return write_yaml(tmp / "d.yaml", path=str(ds), train="images/train", val=str(tmp / "val.txt"),
                          names=names), "circle", ["val.txt lists 1 image(s) that do not exist", "val_99.png"]
    if kind == "names-vs-nc":
        return write_yaml(tmp / "d.yaml", path=str(ds), train="images/train", val="images/val", nc=5,
                          names=names), "circle", ["'names' length 24", "nc: 5"]
    if kind == "names-vs-model":
        return write_yaml(tmp / "d.yaml", path=str(ds), train="images/train", val="images/val",
                          names=names[:5]), "circle", ["has 5 classes", "the model has 24"]
    if kind == "forget-absent":  # labels rewritten without class 0 (circle)
        for sub in ("images", "labels"):
            for split in ("train", "val"):
                dest = tmp / "ds" / sub / split
                dest.mkdir(parents=True)
                for f in (ds / sub / split).iterdir():
                    if f.suffix != ".cache":
                        lines = [ln for ln in f.read_bytes().splitlines(True) if not ln.startswith(b"0 ")]
                        dest.joinpath(f.name).write_bytes(f.read_bytes() if sub == "images" else b"".join(lines))
        held = sorted({int(ln.split()[0]) for f in (tmp / "ds" / "labels" / "train").glob("*.txt")
                       for ln in f.read_text().splitlines() if ln.strip()})
        return write_yaml(tmp / "d.yaml", path=str(tmp / "ds"), train="images/train", val="images/val",
                          names=names), "circle", ["'circle'", "its labels hold " + ", ".join(names[c] for c in held)]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["val-missing", "listed-image-missing", "val-listed-image-missing", "names-vs-nc",
                                  "names-vs-model", "forget-absent"])
def test_bad_data_is_one_line_and_writes_nothing(user, kind, tmp_path, capsys):
    root, _, best = user
    spec, forget, fragments = _bad(kind, root, tmp_path)
    before = listing(root)
    out = tmp_path / "out"
    assert_error(run(capsys, "prune", "--arch", "yolov5", "--weights", best, "--data", spec, "--forget", forget,
                     "--out", out), 1, *fragments)
    assert not out.exists() and listing(root) == before
    if kind not in ("forget-absent", "listed-image-missing"):  # eval reads the val split alone
        assert_error(run(capsys, "eval", "--arch", "yolov5", "--weights", best, "--data", spec), 1, *fragments)


def test_forget_name_not_a_class_lists_the_classes(user, tmp_path, capsys):
    _, data, best = user
    line = assert_error(run(capsys, "prune", "--arch", "yolov5", "--weights", best, "--data", data, "--forget",
                            "unicorn", "--out", tmp_path / "out"), 2, "unknown target 'unicorn'")
    assert all(name in line for name in GLYPH_CLASSES[:12]) and "24 in all" in line
    assert not (tmp_path / "out").exists()


def test_arch_and_checkpoint_disagree(user, tmp_path, capsys):
    """``--arch yolov5s`` with a yolov5n best.pt, and the family name without weights, are one line each."""
    _, data, best = user
    assert_error(run(capsys, "prune", "--arch", "yolov5s", "--weights", best, "--data", data, "--forget", "circle",
                     "--out", tmp_path / "o"), 1, "holds a yolov5n model, not yolov5s", "--arch yolov5n")
    assert_error(run(capsys, "prune", "--arch", "yolov5", "--data", data, "--forget", "circle", "--out",
                     tmp_path / "o"), 2, "--arch yolov5 reads its scale from a checkpoint", "--weights")
    assert not (tmp_path / "o").exists()


# ---- the whole story: ultralytics trains, tpunlearn prunes, ultralytics validates -----------------
@pytest.mark.slow
def test_trained_by_ultralytics_pruned_validated_and_readme_block(tmp_path):
    """The README block runs as written in a folder laid out as after ``yolo train``."""
    data = generated(tmp_path / "glyphs", {"train": 96, "val": 32})
    (tmp_path / "data.yaml").write_text(data.read_text())  # the user's data.yaml, beside their runs/ folder
    best = train(tmp_path / "data.yaml", tmp_path / "runs" / "detect", epochs=3)
    assert best == tmp_path / "runs" / "detect" / "train" / "weights" / "best.pt"
    before = sha256(best)
    procs = run_readme_block("yolov5", tmp_path)
    assert sha256(best) == before
    pruned = tmp_path / "pruned" / "model.pt"
    assert pruned.is_file() and (tmp_path / "pruned" / "report.json").is_file()
    report = yaml.safe_load((tmp_path / "pruned" / "report.json").read_text())
    assert report["removed_channels"] > 0 and report["metrics"]
    joined = "\n".join(p.stdout + p.stderr for p in procs)
    assert "recall at confidence" in joined and "mAP50" in joined
    from ultralytics import YOLO

    model = YOLO(str(pruned))
    assert sum(p.numel() for p in model.model.parameters()) < sum(p.numel() for p in YOLO(str(best)).model.parameters())
    metrics = model.val(data=str(tmp_path / "data.yaml"), device="cpu", workers=0, plots=False, verbose=False,
                        project=str(tmp_path / "val"))
    assert metrics.box.map50 >= 0.0 and torch.tensor(list(metrics.box.ap50)).numel() > 0


@pytest.mark.slow
def test_a_yolov5s_from_the_trainer_keeps_its_scale(user, tmp_path, capsys):
    """Another scale: ``--arch yolov5`` builds what the checkpoint's YAML says (s), and ``--arch yolov5n`` is refused."""
    _, data, _ = user
    best = train(data, tmp_path / "runs" / "detect", epochs=1, scale="s")
    model, info = adapters.for_arch("yolov5").build("yolov5", best)
    assert info.arch == "yolov5s" and info.extra["scale"] == "s" and info.class_names == GLYPH_CLASSES
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "prune", "--arch", "yolov5", "--weights", best, "--data", data, "--forget",
                            "square", "--out", out)
    assert code == 0, err
    from ultralytics import YOLO

    pruned = YOLO(str(out / "model.pt"))
    assert pruned.model.yaml["scale"] == "s"
    assert sum(p.numel() for p in pruned.model.parameters()) < sum(p.numel() for p in model.parameters())
    assert_error(run(capsys, "eval", "--arch", "yolov5n", "--weights", best, "--data", data), 1,
                 "holds a yolov5s model, not yolov5n")
