"""Imports run one way: the core knows no model family, and the command line stays light.

Each check runs in a fresh interpreter, so that what this test session already imported
cannot hide an import the module under test makes.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CORE = ["targets", "layers", "scoring", "graph", "plan", "api", "export", "evaluate", "privacy", "repair", "settings",
        "torchutils", "io", "errors", "safeload", "cache", "report", "auto", "distributed", "calibrate", "audit", "erase"]
BLOCKED = ["ultralytics", "timm", "torchvision.models.segmentation", "tpunlearn.adapters"]

BLOCKER = textwrap.dedent(f"""
    import importlib, sys

    BLOCKED = {BLOCKED!r}

    class Block:
        '''Refuse the model families' modules, as an install without them would.'''

        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"blocked by the test: {{name}}")
            return None

    sys.meta_path.insert(0, Block())
""")


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_the_core_imports_without_any_model_family():
    proc = python(BLOCKER + textwrap.dedent(f"""
        failed = []
        for module in {CORE!r}:
            try:
                importlib.import_module("tpunlearn." + module)
            except ImportError as exc:
                failed.append(f"tpunlearn.{{module}}: {{exc}}")
        leaked = [m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED)]
        imported = sum(f"tpunlearn.{{m}}" in sys.modules for m in {CORE!r})
        print("failed:", failed, "leaked:", leaked, "imported:", imported)
    """))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"failed: [] leaked: [] imported: {len(CORE)}"


def test_the_blocker_does_block():
    proc = python(BLOCKER + "import tpunlearn.adapters\n")
    assert proc.returncode != 0 and "blocked by the test: tpunlearn.adapters" in proc.stderr


def test_the_command_line_parser_and_help_import_no_torch():
    proc = python(textwrap.dedent("""
        import contextlib, io, sys
        import tpunlearn.cli as cli

        cli._parser()
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
            cli.main(["prune", "--help"])
        assert "--forget" in out.getvalue() and "{physical,mask}" in out.getvalue()
        print(sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "torch_pruning", "numpy", "timm"}))
    """))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_the_package_surface_is_lazy():
    proc = python(textwrap.dedent("""
        import sys
        import tpunlearn as tu

        assert "torch" not in sys.modules
        assert callable(tu.repair.repair) and callable(tu.auto.auto_unlearn) and callable(tu.privacy.mia_score)
        assert callable(tu.adapters.get) and tu.settings.UnlearnSettings is tu.UnlearnSettings
        assert callable(tu.torchutils.eval_mode) and callable(tu.distributed.world) and callable(tu.unlearn)
        assert tu.UnlearnSettings().sigma == 4
        print("ok")
    """))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_an_unknown_attribute_is_an_attribute_error():
    import tpunlearn as tu

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tu.nope  # noqa: B018 - the attribute access is the test
