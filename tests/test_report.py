"""The pictures and the page a person reads: graph.png, metrics.png and report.html.

Hand-made balanced graphs and plans on the tiny ResNet (alignment adding channels, a protected
coupled layer keeping one), a wide and deep graph for the size cap, and a hand-made metrics
entry and report. The CLI's own outputs are checked in test_cli.py (one shared prune).
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from tpunlearn.graph import BalancedGraph
from tpunlearn.plan import make_plan
from tpunlearn.report import CHANNEL_STATES, draw_graph, draw_metrics, short_label, write_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
X32 = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
LABELS = {key: label for key, _, label in CHANNEL_STATES}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def hand_graph(widths: dict[str, int], flagged: dict[str, list[int]],
               protected: dict[str, list[int]]) -> BalancedGraph:
    """A BalancedGraph (one forget, one retained target) whose flagged() and protected() are the given sets."""
    f_hits = {layer: torch.zeros(w, dtype=torch.long) for layer, w in widths.items()}
    r_hits = {layer: torch.zeros(w, dtype=torch.long) for layer, w in widths.items()}
    for layer, idxs in flagged.items():
        f_hits[layer][idxs] = 1
    for layer, idxs in protected.items():
        r_hits[layer][idxs] = 1
    return BalancedGraph(layers=list(widths), channels=dict(widths), forget=[0], retain=[1], retain_tolerance=0,
                         value={layer: f_hits[layer] * 2 - r_hits[layer] for layer in widths},
                         forget_hits=f_hits, retain_hits=r_hits)


def test_graph_picture_draws_what_alignment_added(tiny_resnet, tmp_path):
    graph = hand_graph({"layer2.conv1": 16}, {"layer2.conv1": [0, 1, 2]}, {"layer2.conv1": [14]})
    plan = make_plan(tiny_resnet, graph.flagged(), graph.protected(), X32, candidates=graph.layers,
                     priority={"layer2.conv1": torch.arange(16, dtype=torch.float32)}, align=8)
    assert plan.removed_channels == 8
    drawn = draw_graph(graph, tmp_path / "graph.png", plan=plan, title="tiny")
    row = drawn["layers"]["layer2.conv1"]
    assert (row["removed"], row["align"], row["coupled"], row["kept"], row["protected"]) == (3, 5, 0, 0, 1)
    assert drawn["removed"] == plan.removed_channels == plan.explain()["total"]["removed"]
    assert row["shown"] == row["channels"] == 16
    assert drawn["legend"] == [LABELS["removed"], LABELS["align"], LABELS["protected"], LABELS["other"]]
    assert "every channel" in drawn["caption"] and "8 channel(s) removed" in drawn["caption"]
    assert png_size(tmp_path / "graph.png") == tuple(drawn["size_px"])


def test_graph_picture_draws_what_a_protected_group_kept(tiny_resnet, tmp_path):
    graph = hand_graph({"layer2.conv2": 16, "layer2.shortcut.0": 16}, {"layer2.conv2": [0, 1, 2]},
                       {"layer2.shortcut.0": [1]})
    plan = make_plan(tiny_resnet, graph.flagged(), graph.protected(), X32, candidates=graph.layers, coupled="prune")
    drawn = draw_graph(graph, tmp_path / "graph.png", plan=plan)
    conv, short = drawn["layers"]["layer2.conv2"], drawn["layers"]["layer2.shortcut.0"]
    assert (conv["removed"], conv["kept"]) == (2, 1)  # channel 1 flagged, kept: its shortcut channel is protected
    assert (short["coupled"], short["protected"]) == (2, 1)
    assert drawn["removed"] == plan.removed_channels == 4
    assert LABELS["kept"] in drawn["legend"] and LABELS["coupled"] in drawn["legend"]
    assert LABELS["align"] not in drawn["legend"]  # no legend entry for a state the picture does not show
    without_plan = draw_graph(graph, tmp_path / "flagged.png")
    assert without_plan["removed"] == 3 and "no plan given" in without_plan["caption"]


def test_wide_deep_graph_stays_legible_and_shows_every_removed_channel(tmp_path):
    widths = {f"model.backbone.stage{i}.block.{i}.cv3.conv": 1024 if i % 2 else 64 for i in range(30)}
    flagged = {layer: list(range(0, w, 50)) for layer, w in widths.items()}
    protected = {layer: [c for c in range(w) if c % 3 == 1 and c % 50] for layer, w in widths.items()}
    graph = hand_graph(widths, flagged, protected)
    drawn = draw_graph(graph, tmp_path / "graph.png", max_cells=256)
    width, height = png_size(tmp_path / "graph.png")
    assert width <= 1300 and height <= 1600
    assert drawn["removed"] == sum(len(v) for v in flagged.values())
    wide = drawn["layers"]["model.backbone.stage1.block.1.cv3.conv"]
    assert wide["channels"] == 1024 and wide["shown"] == 256 and wide["removed"] == 21
    assert "showing up to 256 channels per layer (15 of 30 layers sampled)" in drawn["caption"]


def test_short_label_keeps_the_tail_on_two_lines():
    assert short_label("layer4.0.conv2") == "layer4.0.conv2"
    label = short_label("model.backbone.stage1.block.1.cv3.conv", width=16)
    assert len(label.splitlines()) == 2 and label.endswith("cv3.conv")
    assert all(len(line) <= 20 for line in label.splitlines())


METRICS = {
    "name": "recall", "task": "detection", "primary": "recall", "operating_point": {"conf": 0.25, "iou": 0.5},
    "forgotten": ["3"],
    "before": {str(t): {"recall": 0.95, "precision": 0.9, "instances": 90} for t in range(10)},
    "after": {**{str(t): {"recall": 0.94, "precision": 0.9, "instances": 90} for t in range(10)},
              "3": {"recall": 0.0, "precision": 0.0, "instances": 90}, "7": {"recall": 0.5, "precision": 0.8,
                                                                             "instances": 90}},
    "summary": {"before": {"mAP50": 0.99}, "after": {"mAP50": 0.9}},
}


def test_metrics_picture_marks_the_forgotten_and_the_worst_retained(tmp_path):
    drawn = draw_metrics(METRICS, tmp_path / "metrics.png")
    assert png_size(tmp_path / "metrics.png")[0] > 500
    assert drawn["forgotten"] == ["3"] and drawn["worst"] == "7"
    assert drawn["targets"] == [str(t) for t in range(10)]
    assert "worst retained: 7 0.950 -> 0.500" in drawn["caption"]
    assert drawn["title"] == "recall per target, before and after (conf 0.25, IoU 0.5)"


def test_metrics_picture_of_many_targets_keeps_the_forgotten_and_the_largest_drops(tmp_path):
    before = {f"class{t}": 0.9 for t in range(80)}
    after = {f"class{t}": 0.9 - t / 1000 for t in range(80)}
    metrics = {"name": "ap50", "before": before, "after": {**after, "class5": 0.0}}
    drawn = draw_metrics(metrics, tmp_path / "metrics.png", forgotten=["class5"], max_targets=10)
    assert len(drawn["targets"]) == 10 and "class5" in drawn["targets"] and "class79" in drawn["targets"]
    assert drawn["worst"] == "class79" and drawn["caption"].startswith("10 of 80 targets")
    assert png_size(tmp_path / "metrics.png")[1] < 1000


def page_report(folder: Path, verdict: dict | None) -> dict:
    report = {"arch": "tiny<net>", "forget": ["3"], "removed_channels": 4,
              "removal": {"layers": {"conv1": {"channels": 8, "flagged": 4, "align_added": 0, "align_kept": 0,
                                               "protected_kept": 0, "coupled_added": 0, "removed": 4}},
                          "total": {"channels": 8, "flagged": 4, "align_added": 0, "align_kept": 0,
                                    "protected_kept": 0, "coupled_added": 0, "removed": 4}},
              "settings": {"forget": [3], "sigma": 4}, "sha256": {"output_weights": "ab" * 32},
              "versions": {"torch": "2"}, "reproduce": ["tpunlearn", "prune", "--forget", "<3>"],
              "notes": ["a note & more"]}
    if verdict is not None:
        report.update(verdict=verdict, metrics=METRICS)
        draw_metrics(METRICS, folder / "metrics.png")
    graph = hand_graph({"conv1": 8}, {"conv1": [0, 1, 2, 3]}, {})
    draw_graph(graph, folder / "graph.png")
    return report


def test_html_page_is_self_contained_and_escaped(tmp_path):
    verdict = {"status": "not met", "met": False, "line": "verdict: not met: <b>forget</b> 3 recall 0.95 -> 0.00",
               "warnings": ["removed <no> channel"]}
    page = write_html(page_report(tmp_path, verdict), tmp_path).read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "verdict: not met" in page and "&lt;b&gt;forget&lt;/b&gt;" in page and "<b>forget</b>" not in page
    assert "removed &lt;no&gt; channel" in page and "tiny&lt;net&gt;" in page and "&lt;3&gt;" in page
    assert "3 (forgotten)" in page and "kept by protection" in page and "a note &amp; more" in page
    assert "<td>mAP50</td><td>0.99</td><td>0.9</td>" in page  # the summary, apart from the targets
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # written atomically


def test_html_page_without_a_verdict_says_so(tmp_path):
    page = write_html(page_report(tmp_path, None), tmp_path).read_text()
    assert "not evaluated (run with --eval)" in page
    assert page.count('src="data:image/png;base64,') == 1 and "metrics.png" not in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COUNT_IMAGES = ("<script>window.addEventListener('load', () => { const n = [...document.images]"
                ".filter(i => i.complete && i.naturalWidth > 0).length; document.body.setAttribute('data-images', n); "
                "document.body.setAttribute('data-total', document.images.length); });</script>")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="headless Chromium is not installed (Debian package chromium; .ci/run installs it)")
def test_html_page_renders_with_its_images_in_headless_chromium(tmp_path):
    assert CHROMIUM is not None, "CI must have chromium (.ci/run installs it)"
    verdict = {"status": "met", "met": True, "line": "verdict: met"}
    path = write_html(page_report(tmp_path, verdict), tmp_path)
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", COUNT_IMAGES + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--dump-dom", "--virtual-time-budget=5000", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-images="2"' in proc.stdout and 'data-total="2"' in proc.stdout, proc.stdout[:500]
    assert "verdict: met" in proc.stdout
