"""Plain helpers shared by the test files: tiny seeded models, sample batches, CLI runners and
state comparisons. Fixtures live in ``conftest.py`` and build on these.

Every model here is small enough to score, trace and prune in well under a second on two
CPU cores. ``TinyResNet`` defines its modules in an order different from the order its
forward calls them, so tests can tell execution order from ``named_modules()`` order.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from tpunlearn import cli
from tpunlearn.io import sha256

NUM_CLASSES = 10
T = TypeVar("T")


# ---- tiny models and data ------------------------------------------------------------------------------------
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics.

    With the default init (weight 1, bias 0, mean 0, var 1) a zeroed filter already gives a
    zero BN output, so a test could not tell whether the BN affine was zeroed too.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.5)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


class Block(nn.Module):
    """A basic residual block; the shortcut is defined last but runs first."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class TinyResNet(nn.Module):
    """conv-bn-relu stem, two residual blocks, global pool, Linear head.

    Modules are defined head first and stem last: ``named_modules()`` lists the convs as
    layer2.conv1, layer2.conv2, layer2.shortcut.0, layer1.conv1, layer1.conv2, stem, while
    a forward calls stem, layer1.conv1, layer1.conv2, layer2.shortcut.0, layer2.conv1,
    layer2.conv2.
    """

    EXEC_ORDER = ["stem", "layer1.conv1", "layer1.conv2", "layer2.shortcut.0", "layer2.conv1", "layer2.conv2"]

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 8) -> None:
        super().__init__()
        self.head = nn.Linear(2 * width, num_classes)
        self.layer2 = Block(width, 2 * width, stride=2)
        self.layer1 = Block(width, width)
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TinyCNN(nn.Module):
    """A plain chain: three conv-bn-relu stages, global pool, Linear head."""

    EXEC_ORDER = ["conv1", "conv2", "conv3"]

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, 2, 1)
        self.bn2 = nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 16, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_tiny_resnet(seed: int = 0) -> TinyResNet:
    """A seeded ``TinyResNet`` with randomized norms, in eval mode."""
    torch.manual_seed(seed)
    return randomize_norms(TinyResNet(), seed=seed).eval()


def build_tiny_cnn(seed: int = 0) -> TinyCNN:
    """A seeded ``TinyCNN`` with randomized norms, in eval mode."""
    torch.manual_seed(seed)
    return randomize_norms(TinyCNN(), seed=seed).eval()


def make_batches(n_batches: int = 2, batch: int = 6, size: int = 32, num_classes: int = NUM_CLASSES,
                 seed: int = 0, channels: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random ``(images, multi_hot)`` batches in which every target is present in every batch."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        images = torch.rand(batch, channels, size, size, generator=gen)
        multi_hot = (torch.rand(batch, num_classes, generator=gen) < 0.3).float()
        for c in range(num_classes):
            multi_hot[c % batch, c] = 1.0
        out.append((images, multi_hot))
    return out


# ---- models: sizes, states, forwards -------------------------------------------------------------------------
def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s state dict, to compare with later."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    """Same keys in the same order, and every tensor bit-identical (shape, dtype, values)."""
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def norm_after(model: nn.Module, layer: str) -> nn.Module:
    """The BatchNorm registered right after ``layer`` (conv, bn pairs in these models)."""
    names = [n for n, _ in model.named_modules()]
    for name in names[names.index(layer) + 1:]:
        module = model.get_submodule(name)
        if isinstance(module, nn.BatchNorm2d):
            return module
    raise AssertionError(f"no norm after {layer}")


def forwards(model: nn.Module, run: Callable[[], T]) -> tuple[T, list[int]]:
    """``run()``'s result and the batch size of each forward ``model`` ran during it."""
    seen: list[int] = []
    handle = model.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[0]))
    try:
        return run(), seen
    finally:
        handle.remove()


def unlearn_family(adapter: Any, model: nn.Module, info: Any, samples: Any, forget: list[int], **kwargs: Any) -> Any:
    """``tu.unlearn`` wired to a model family as the CLI wires it (target, example input, ignored
    layers, output transform, number of targets); ``kwargs`` override any of them."""
    import tpunlearn as tu

    wiring = {**adapter.unlearn_kwargs(model, info), "progress": False}
    return tu.unlearn(model, samples, forget=forget, **{**wiring, **kwargs})


def family_request(cache: dict[str, Any], built: tuple[Any, nn.Module, Any], mode: str, data: str,
                   forget: list[int], **kwargs: Any) -> Any:
    """The family's default request (``adapter.defaults``, ``kwargs`` on top) on ``data``, made once per
    ``mode`` into ``cache``; each call returns a deep copy, so a test may train or erase it."""
    import copy

    adapter, model, info = built
    if mode not in cache:
        samples = adapter.samples(model, info, data)
        cache[mode] = unlearn_family(adapter, model, info, samples, forget, mode=mode, **adapter.defaults, **kwargs)
    return copy.deepcopy(cache[mode])


# ---- the command line ----------------------------------------------------------------------------------------
Result = tuple[int, str, str]  # (exit code, stdout, stderr)


def run(capsys: Any, *argv: Any) -> Result:
    """``tpunlearn ARGV`` in-process; arguments may be paths or numbers."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_captured(*argv: Any) -> Result:
    """``run`` without capsys, for module-scoped fixtures."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_error(result: Result, code: int, *fragments: str) -> str:
    """One line on stderr, ``tpunlearn: error: ...``, no traceback, exit ``code``; returns the line."""
    got, _, err = result
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("tpunlearn: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def listing(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256): what a run must leave as it was."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def listing_with_times(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``folder`` (relative path -> (sha256 or "dir", mtime in ns)): a new,
    removed, rewritten or touched entry changes it, as any write into the folder does."""
    return {str(p.relative_to(folder)): (sha256(p) if p.is_file() else "dir", p.stat().st_mtime_ns)
            for p in sorted([folder, *folder.rglob("*")])}


# ---- README "Your own model" blocks --------------------------------------------------------------------------
def readme_block(family: str) -> str:
    """The bash block under ``<!-- own-model: FAMILY -->`` in README.md, as written."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(rf"<!-- own-model: {re.escape(family)} -->\n```bash\n(.*?)```", text, flags=re.S)
    assert found, f"README.md has no own-model block for {family}"
    return found.group(1)


def run_readme_block(family: str, cwd: Path, timeout: float = 600) -> list[Any]:
    """Run each command line of the README block in ``cwd`` (``set -e`` semantics); returns the processes.

    ``tpunlearn`` and ``python`` resolve to this interpreter's environment, as for a user who
    installed the package. A failing line fails with its output.
    """
    import os
    import shlex
    import subprocess
    import sys

    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    lines, done = [], []
    for raw in readme_block(family).replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    assert lines, f"README own-model block {family} has no command"
    for line in lines:
        proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"README line failed ({proc.returncode}): {shlex.quote(line)}\n" \
                                     f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        done.append(proc)
    return done


# ---- benchmark scripts ---------------------------------------------------------------------------------------
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def bench_module(name: str) -> Iterator[Any]:
    """``benchmarks/<name>.py`` imported as a module (its folder on the path while it loads, as when it
    runs), for a module-scoped fixture: ``yield from bench_module("bench_compare")``."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    yield module
    sys.modules.pop(name, None)
