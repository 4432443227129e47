#!/usr/bin/env python
"""Train a target-level retrained reference of a zoo classifier: the zoo's own recipe with the
forget target's label removed from the loss (every scene kept; its BCE column masked out).

    python scripts/train_reference.py digitscenes-resnet --forget 3 [--seed 0] [--out PATH]
        [--epochs N] [--n-train N] [--threads 1]
    python scripts/train_reference.py glyphscenes-resnet --forget 5 ...

This is the model an unlearning method should look like afterwards (DESIGN.md section 8):
the scenes that hold the target stay, only its label never reaches the loss. The defaults are
the zoo's full budget (digitscenes-resnet: 10 epochs of 24000 scenes; glyphscenes-resnet: 12
epochs of 24000); ``--epochs`` / ``--n-train`` give a stated smaller one. The checkpoint is the
zoo's ``tpunlearn-zoo/1`` (the timm family loads it: ``--arch NAME --weights PATH``, or
``tpunlearn.zoo.load(NAME, weights=PATH)``), with the reference's forget targets and training
seconds in its training record (``train.reference``). It is kept out of git: by default it goes
under the cache folder (``$TPUNLEARN_CACHE``, else ``~/.cache/tpunlearn``) as
``references/NAME-forget-T-seed-S[-eE-nN].pt``. The last line printed is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_zoo import train_digitscenes_resnet  # noqa: E402  (also makes tpunlearn.adapters importable)

from tpunlearn import zoo  # noqa: E402

# the zoo's full budgets (scripts/train_zoo.py, scripts/zoo_glyphs.py RESNET_DEFAULTS)
FULL = {"digitscenes-resnet": {"epochs": 10, "n_train": 24000, "lr": 3e-3, "batch_size": 128},
        "glyphscenes-resnet": {"epochs": 12, "n_train": 24000, "lr": 3e-3, "batch_size": 64}}


def default_path(name: str, forget: list[int], seed: int, epochs: int, n_train: int) -> Path:
    """Where a reference goes unless ``--out`` says: the cache folder, named by what it was trained on."""
    from tpunlearn.data.yolo import cache_root

    budget = "" if (epochs, n_train) == (FULL[name]["epochs"], FULL[name]["n_train"]) else f"-e{epochs}-n{n_train}"
    return cache_root() / "references" / f"{name}-forget-{'+'.join(map(str, forget))}-seed-{seed}{budget}.pt"


def train_reference(name: str, forget: list[int], seed: int = 0, epochs: int | None = None,
                    n_train: int | None = None) -> dict[str, Any]:
    """The ``tpunlearn-zoo/1`` checkpoint of ``name`` retrained with ``forget``'s labels masked out."""
    full = FULL[name]
    epochs, n_train = epochs or full["epochs"], n_train or full["n_train"]
    t0 = time.perf_counter()
    if name == "glyphscenes-resnet":
        from zoo_glyphs import train_glyphscenes_resnet

        ckpt = train_glyphscenes_resnet(name, epochs, seed, n_train, full["lr"], full["batch_size"],
                                        exclude_labels=tuple(forget))
    else:
        ckpt = train_digitscenes_resnet(name, epochs, seed, n_train, full["lr"], full["batch_size"],
                                        exclude_labels=tuple(forget))
    seconds = time.perf_counter() - t0
    ckpt["train"]["reference"] = {"forget": list(forget), "kind": "target-level (labels masked, scenes kept)",
                                  "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                                  "full_budget": (epochs, n_train) == (full["epochs"], full["n_train"])}
    return ckpt


def write(ckpt: dict[str, Any], out: Path) -> None:
    """Write ``ckpt`` atomically (a temp file beside ``out``, then a rename); it must load weights-only."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        torch.load(tmp, weights_only=True)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(FULL))
    p.add_argument("--forget", required=True, help="class index or name, or several joined by + (e.g. 3+8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="checkpoint path (default: under the cache folder)")
    p.add_argument("--epochs", type=int, default=None, help="default: the zoo's (10 digitscenes, 12 glyphscenes)")
    p.add_argument("--n-train", type=int, default=None, help="training scenes (default: the zoo's 24000)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list(zoo.entry(args.name).class_names)
    forget = [int(t) if t.isdigit() else names.index(t) for t in args.forget.split("+")]
    full = FULL[args.name]
    epochs, n_train = args.epochs or full["epochs"], args.n_train or full["n_train"]
    out = (args.out or default_path(args.name, forget, args.seed, epochs, n_train)).resolve()
    ckpt = train_reference(args.name, forget, args.seed, epochs, n_train)
    write(ckpt, out)
    ref = ckpt["train"]["reference"]
    print(f"wrote {out} (reference for forget {forget}, {epochs} epochs of {n_train} scenes, {ref['seconds']:.0f} s)")
    print(json.dumps({"out": str(out), "forget": forget, "seed": args.seed, "epochs": epochs, "n_train": n_train,
                      "seconds": ref["seconds"], "threads": args.threads,
                      "test_recall": ckpt["train"].get("test_recall")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
