"""Data-parallel scoring and devices.

Two gloo processes under torchrun (``tests/dist_worker.py``) give the alphas (relative
difference <= 1e-5), the instances and the plan of one process on the same samples;
``torchrun ... -m tpunlearn.cli prune`` writes from rank 0 alone. The rest runs in-process:
device checks, the torchrun environment, and what a non-zero rank does in the CLI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tpunlearn as tu
from tpunlearn import cli, distributed, torchutils
from tpunlearn.api import score_targets
from tpunlearn.errors import UsageError
from tpunlearn.scoring import ChannelScores, score_channels
from tpunlearn.targets import ClassLogit

import dist_worker
from helpers import assert_error, forwards, run

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def torchrun(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 ARGS`` (free port, one thread each)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the largest |b|: the alphas' scale, so near-zero entries don't blow it up."""
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def assert_same_scores(got: ChannelScores, want: ChannelScores) -> None:
    assert got.layers == want.layers and got.channels == want.channels
    assert sorted(got.targets) == sorted(want.targets)
    for t, ref in want.targets.items():
        assert got.targets[t].count == ref.count
        for layer in want.layers:
            assert rel_diff(got.alpha(t, layer), ref.alpha[layer]) <= 1e-5, (t, layer)
            assert got.targets[t].instances[layer].shape == ref.instances[layer].shape
            assert rel_diff(got.targets[t].instances[layer], ref.instances[layer]) <= 1e-5, (t, layer)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of two gloo ranks got from the requests in dist_worker.py."""
    out = tmp_path_factory.mktemp("ranks")
    proc = torchrun([str(Path(dist_worker.__file__)), str(out)], cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


# ---- two gloo processes give one process's answer ------------------------------------------
def test_two_ranks_unlearn_like_one_process(ranks):
    one = tu.unlearn(dist_worker.build_tiny_resnet(), dist_worker.batches(), example_inputs=dist_worker.example(),
                     **dist_worker.UNLEARN)
    assert one.plan.removed_channels > 0  # a plan with something in it
    main, other = ranks
    assert other["unlearn"] is None  # rank 0 alone plans and prunes
    got = main["unlearn"]
    assert got["execution"] == {"device": "cpu", "ranks": 2}
    assert_same_scores(ChannelScores.from_dict(got["scores"]), one.scores)
    assert got["plan"]["removed"] == one.plan.removed
    assert got["plan"]["decisions"] == one.plan.to_dict()["decisions"]
    assert got["plan"]["history"] == one.plan.history


def test_two_ranks_score_targets_like_one_process_on_every_rank(ranks):
    one = score_targets(dist_worker.build_tiny_resnet(), dist_worker.batches(), example_inputs=dist_worker.example(),
                        sigma=3, n_per_target=dist_worker.CAP, progress=False)
    assert all(s.count == dist_worker.CAP for s in one.targets.values())  # the cap cut batches short
    for rank in ranks:
        assert_same_scores(ChannelScores.from_dict(rank["score_targets"]), one)


def test_ranks_split_the_images_one_process_forwards(ranks):
    model = dist_worker.build_tiny_resnet()
    targets = {t: ClassLogit(t) for t in range(10)}
    one, sizes = forwards(model, lambda: score_channels(
        model, dist_worker.batches(), dist_worker.LAYERS, targets, n_per_target=dist_worker.CAP, progress=False))
    shares = [rank["share"]["forwards"] for rank in ranks]
    assert all(shares) and sum(map(sum, shares)) == sum(sizes)  # every image once, on one rank
    assert sum(map(len, shares)) > len(sizes)  # whole batches first, then batches spread over both ranks
    for rank in ranks:
        assert_same_scores(ChannelScores.from_dict(rank["share"]["scores"]), one)


def test_a_rank_without_a_share_gets_the_scores(ranks, tiny_resnet):
    lone = [(dist_worker.example(), torch.nn.functional.one_hot(torch.tensor([2]), 10).float())]
    one = score_channels(dist_worker.build_tiny_resnet(), lone, dist_worker.LAYERS, {2: ClassLogit(2)}, progress=False)
    for rank in ranks:
        assert_same_scores(ChannelScores.from_dict(rank["lone"]), one)


def test_ranks_reading_different_samples_are_refused_on_every_rank(ranks):
    for rank in ranks:
        assert rank["mismatch"] and "the ranks read different samples" in rank["mismatch"]


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_each_chosen_image_goes_to_one_rank_whole_batches_first(size):
    from tpunlearn.scoring import _InstancePool, _present

    pool = _InstancePool({t: ClassLogit(t) for t in range(10)}, ["x"], dist_worker.CAP, size)
    spread, images = [], 0
    for _, multi_hot in dist_worker.batches():
        if pool.full():
            break
        taken = dict(pool.taken)
        chosen = pool.choose(multi_hot)
        used = torch.stack(list(chosen.wanted.values())).any(0).nonzero().flatten()
        assert torch.equal(torch.cat(chosen.shares).sort().values, used)  # a partition of the chosen images
        images += used.numel()
        present = _present(multi_hot, 10)
        for t, mask in chosen.wanted.items():  # each target's first still-needed instances, as one process
            assert int(mask.sum()) == min(int(present[:, t].sum()), dist_worker.CAP - taken[t])
        spread.append(sum(s.numel() > 0 for s in chosen.shares) > 1)
    assert pool.full() and sum(pool.load) == images
    assert not any(spread[:2])  # the first batches go whole
    if size == 2:
        assert any(spread) and max(pool.load) - min(pool.load) <= 1  # the last ones even the loads out


# ---- the CLI under torchrun -----------------------------------------------------------------
def test_torchrun_prune_writes_from_rank_zero_only(tmp_path):
    args = ["prune", "--arch", "digitscenes-resnet", "--forget", "3", "--samples", "4"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = torchrun(["--log-dir", "logs", "--redirects", "3", "-m", "tpunlearn.cli", *args, "--out", "out"],
                    cwd=run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in run_dir.iterdir()) == ["logs", "out"]
    names = ["graph.json", "graph.png", "model.pt", "plan.json", "report.html", "report.json"]
    assert sorted(p.name for p in (run_dir / "out").iterdir()) == names
    logs = {p.parent.name + "/" + p.name: p.read_text() for p in (run_dir / "logs").rglob("*.log")}
    assert logs["1/stdout.log"] == "" and logs["1/stderr.log"] == ""  # rank 1 says nothing, writes nothing
    assert "wrote out/" in logs["0/stdout.log"]
    report = json.loads((run_dir / "out" / "report.json").read_text())
    assert report["execution"] == {"device": "cpu", "ranks": 2} and report["removed_channels"] > 0


def test_cli_outside_a_reachable_group_is_one_line(tmp_path, capsys, monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    line = assert_error(run(capsys, "graph", "--arch", "digitscenes-resnet", "--out", tmp_path / "c.json"), 1,
                        "MASTER_ADDR")
    assert line.startswith("tpunlearn: error: cannot join the torchrun process group (gloo)")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("argv", [["eval", "--arch", "digitscenes-resnet"], ["zoo"]])
def test_commands_without_shared_work_run_on_rank_zero_only(argv, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert cli.main(argv) == 0
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["zoo"]) == 0
    assert "digitscenes-resnet" in capsys.readouterr().out


# ---- devices --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["tpu", "gpu", "cuda:x", "cuda:-1", "CPU", ""])
def test_unknown_devices_are_usage_errors(spec):
    with pytest.raises(UsageError, match="unknown device"):
        distributed.resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_usage_error(spec, tiny_cnn, samples):
    with pytest.raises(UsageError, match="CUDA is not available"):
        distributed.resolve_device(spec)
    with pytest.raises(UsageError, match="CUDA is not available"):
        tu.unlearn(tiny_cnn, samples, forget=[1], device=spec, progress=False)


@pytest.mark.parametrize("argv", [["prune", "--arch", "digitscenes-resnet", "--forget", "3"],
                                  ["graph", "--arch", "digitscenes-resnet", "--out", "c.json"],
                                  ["eval", "--arch", "digitscenes-resnet"]])
@pytest.mark.parametrize("device", ["tpu", "cuda:one"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:1"]))
def test_cli_bad_device_is_one_line_exit_2(argv, device, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_error(run(capsys, *argv, "--device", device), 2, repr(device))
    assert list(tmp_path.iterdir()) == []


def test_device_cpu_gives_the_default_result(tiny_resnet, samples):
    x = samples[0][0][:1]
    kwargs = dict(forget=[3], example_inputs=x, delta=0.3, retain_tolerance=3, align=None, progress=False)
    default = tu.unlearn(tiny_resnet, samples, **kwargs)
    on_cpu = tu.unlearn(tiny_resnet, samples, device="cpu", **kwargs)
    assert on_cpu.report["execution"] == {"device": "cpu", "ranks": 1}
    assert on_cpu.plan.removed == default.plan.removed and on_cpu.plan.removed_channels > 0
    assert torchutils.model_device(on_cpu.model) == torch.device("cpu")


def test_to_device_moves_nested_tensors_only():
    obj = {"a": torch.zeros(1), "b": [torch.ones(2), (torch.ones(1), "text")], "c": 3}
    moved = torchutils.to_device(obj, "cpu")
    assert moved["c"] == 3 and moved["b"][1][1] == "text"
    assert isinstance(moved["b"], list) and isinstance(moved["b"][1], tuple)
    assert torch.equal(moved["b"][0], torch.ones(2))
    assert torchutils.model_device(torch.nn.ReLU()) == torch.device("cpu")


def test_outside_torchrun_there_is_one_rank(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == (0, 1) and distributed.is_main()
    with distributed.process_group_from_env(torch.device("cpu")) as made:
        assert made is False
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UsageError, match="WORLD_SIZE"):
        distributed.rank_device("cpu")
