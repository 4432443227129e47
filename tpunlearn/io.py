"""Small I/O helpers: atomic writes, JSON and versioned JSON files, hashes. Nothing here knows about models."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tpunlearn.errors import PlanError, TpunlearnError, UsageError

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` in one step.

    A failed or interrupted write leaves ``path`` as it was and no temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike[str], last: str = "report.json") -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; on success its files move into ``out``.

    Each file replaces its namesake in ``out`` with one ``os.replace`` (so an input that
    shares a name is replaced, never written into). An older ``last`` file in ``out`` is
    removed first and the new one moves in last, so a report never sits beside files it
    does not describe. A failed or interrupted run removes the temp folder and leaves
    ``out`` (and any folder created for it) as it was.
    """
    out = Path(out)
    created = _make_parents(out.parent)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        out_created = not out.exists()
        out.mkdir(exist_ok=True)
        created.extend([out] if out_created else [])
        (out / last).unlink(missing_ok=True)
        names = sorted((p.name for p in tmp.iterdir()), key=lambda n: n == last)
        for name in names:
            os.replace(tmp / name, out / name)
        created.clear()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when still empty


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; the folders it created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir(exist_ok=True)
    return list(reversed(missing))


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically, with bytes that depend on ``obj`` only.

    Saving through a file handle names the zip's inner folder ``archive`` instead of after
    the (random) temp file, so the same object always gives the same file and sha256.
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON, turning a missing or malformed file into a one-line error."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class JsonFormat:
    """One kind of versioned JSON file, such as ``{"format": "tpunlearn-plan/1", ...}``.

    Plans, graphs, scores and caches are tagged on write and checked on read the same way,
    and each refuses another file with the same one-line message: what it is not, what it is.
    """

    tag: str  # the value of the "format" key, e.g. "tpunlearn-plan/1"
    what: str  # what to call it in errors, e.g. "tpunlearn plan"
    error: type[TpunlearnError] = PlanError
    hint: str = ""  # appended to a refusal: how to make the right file

    def stamp(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``body`` with this format's tag as its first key."""
        return {"format": self.tag, **{k: v for k, v in body.items() if k != "format"}}

    def check(self, data: Any) -> Mapping[str, Any]:
        """``data`` when it is a mapping tagged with this format; else a one-line ``error``."""
        if isinstance(data, Mapping) and data.get("format") == self.tag:
            return data
        found = data.get("format") if isinstance(data, Mapping) else None
        got = f", got {found}" if isinstance(found, str) else ""
        raise self.error(f"not a {self.what} (format {self.tag} expected{got}){self.hint}")

    def write(self, path: str | os.PathLike[str], body: Mapping[str, Any]) -> None:
        """Write ``body``, tagged, to ``path`` atomically."""
        write_json(path, self.stamp(body))

    def read(self, path: str | os.PathLike[str], parse: Callable[[Mapping[str, Any]], T]) -> T:
        """Read ``path``, check its format and ``parse`` it; an ``error`` raised on the way names the file."""
        data = read_json(path)
        try:
            return parse(self.check(data))
        except self.error as exc:
            raise self.error(f"{path}: {exc}") from None
