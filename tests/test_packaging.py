"""The built wheel ships the adapters as tpunlearn.adapters, never as a top-level package."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# build outputs and caches that must not leak into (or be reused by) the build under test
_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".hypothesis", "venv", ".venv", "runs", "out", ".whl", "*.onnx")


def test_wheel_contains_the_adapters_under_tpunlearn(tmp_path):
    # Build from a clean copy of the repository: setuptools reuses build/lib, so a stale
    # build/ folder in the checkout could hide (or fake) what the configuration ships.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("tpunlearn", "adapters"):  # everything the build reads; no venvs or caches
        shutil.copytree(ROOT / folder, src / folder, ignore=_IGNORE)
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("tpunlearn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tpunlearn/__init__.py" in names
    assert "tpunlearn/adapters/__init__.py" in names
    assert "tpunlearn/adapters/timm.py" in names
    assert "tpunlearn/adapters/base.py" in names
    assert "tpunlearn/adapters/registry.py" in names
    assert not [n for n in names if n.startswith("adapters/")]
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["tpunlearn"]
    assert not [n for n in names if n.startswith("tests/")]
