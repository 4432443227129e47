"""One rank of the 2-process checks in test_distributed.py, started by torchrun (gloo, CPU).

Every rank runs the same requests on the same tiny seeded model and samples as the test's
single process, and writes what it got to ``OUT/rank<r>.json``; the test compares.
Not collected by pytest (no ``test_`` prefix).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import distributed as dist

import tpunlearn as tu
from tpunlearn.api import score_targets
from tpunlearn.errors import DistributedError
from tpunlearn.scoring import score_channels
from tpunlearn.targets import ClassLogit

sys.path.insert(0, str(Path(__file__).parent))  # torchrun starts this file as a script, outside pytest
from helpers import build_tiny_resnet, forwards, make_batches  # noqa: E402 - needs the path above

# shared with test_distributed.py, which runs the same requests in one process
CAP = 6  # instances per target
UNLEARN = dict(forget=[3], sigma=3, delta=0.3, retain_tolerance=3, n_per_target=CAP, align=None, progress=False)
LAYERS = ["layer1.conv2", "layer2.shortcut.0", "layer2.conv2"]


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eight batches of five, every target in each: two ranks get whole batches, then split
    ones, and the cap cuts batches short (the last two hold one rank's images only)."""
    return make_batches(n_batches=8, batch=5, seed=1)


def example() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    record: dict[str, object] = {"rank": rank, "size": size}

    res = tu.unlearn(build_tiny_resnet(), batches(), example_inputs=example(), **UNLEARN)
    record["unlearn"] = None if res is None else {
        "scores": res.scores.to_dict(instances=True), "plan": res.plan.to_dict(), "execution": res.report["execution"]}

    scores = score_targets(build_tiny_resnet(), batches(), example_inputs=example(), sigma=3, n_per_target=CAP,
                           progress=False)
    record["score_targets"] = scores.to_dict(instances=True)

    model = build_tiny_resnet()
    scores, sizes = forwards(model, lambda: score_channels(
        model, batches(), LAYERS, {t: ClassLogit(t) for t in range(10)}, n_per_target=CAP, progress=False))
    record["share"] = {"forwards": sizes, "scores": scores.to_dict(instances=True)}

    # one instance in all: the other rank scores nothing, and still returns the same scores
    lone = [(example(), torch.nn.functional.one_hot(torch.tensor([2]), 10).float())]
    record["lone"] = score_channels(build_tiny_resnet(), lone, LAYERS, {2: ClassLogit(2)},
                                    progress=False).to_dict(instances=True)

    try:  # per-rank shards, as a DistributedSampler would give: refused on every rank
        score_channels(build_tiny_resnet(), make_batches(n_batches=2, seed=10 + rank), LAYERS,
                       {0: ClassLogit(0)}, progress=False)
        record["mismatch"] = None
    except DistributedError as exc:
        record["mismatch"] = str(exc)

    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
