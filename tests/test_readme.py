"""The README's Python quick start runs as written."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_quick_start_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    res = namespace["res"]
    assert res.report["removed_channels"] > 0
    assert res.report["settings"]["forget"] == [3]
    assert (tmp_path / "m.onnx").is_file()


def test_readme_compression_pipeline_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    pipeline = [b for b in blocks if "MagnitudePruner" in b]
    assert pipeline, "README shows no compression pipeline"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(pipeline[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    model, slim, x = namespace["model"], namespace["slim"], namespace["x"]
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(slim) < namespace["res"].report["params"]["after"] < n(model)  # both steps slimmed it
    assert slim(x).shape == model(x).shape
    assert namespace["diff"] <= 1e-4
    assert (tmp_path / "slim.onnx").is_file()
