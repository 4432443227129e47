"""The README's Python examples run as written."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from helpers import n_params

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


def test_readme_compression_pipeline_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    pipeline = [b for b in blocks if "MagnitudePruner" in b]
    assert pipeline, "README shows no compression pipeline"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(pipeline[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    model, slim, x = namespace["model"], namespace["slim"], namespace["x"]
    assert n_params(slim) < namespace["res"].report["params"]["after"] < n_params(model)  # both steps slimmed it
    assert slim(x).shape == model(x).shape
    assert namespace["diff"] <= 1e-4
    assert (tmp_path / "slim.onnx").is_file()
    printed = [line for line in capsys.readouterr().out.splitlines() if " 3:" in line]
    assert [line.split()[0] for line in printed] == ["original", "forget", "25"]  # recall after every step
    assert " 3:0.00" in printed[1] and " 3:0.00" not in printed[0]


def test_readme_torchrun_script_runs_on_two_cpu_ranks(tmp_path):
    """The README's own-torchrun-script example, under torchrun with two gloo ranks: rank 0 alone writes."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    script = [b for b in blocks if "init_process_group" in b]
    assert script, "README shows no torchrun script"
    (tmp_path / "unlearn_ddp.py").write_text(script[0])
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "CUDA_VISIBLE_DEVICES")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", "logs", "--redirects", "3", "unlearn_ddp.py"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forget-3.pt", "logs", "unlearn_ddp.py"]
    state = torch.load(tmp_path / "forget-3.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in state.values())
    logs = {p.parent.name + "/" + p.name: p.read_text() for p in (tmp_path / "logs").rglob("*.log")}
    assert "PrunePlan" in logs["0/stdout.log"] and logs["1/stdout.log"] == ""
