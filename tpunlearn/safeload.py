"""Checkpoint loading that runs no code a checkpoint names.

A checkpoint is a pickle, and a pickle may call any importable function while it loads
(``os.system`` from a ``__reduce__``). :func:`load_checkpoint` reads a file in two steps:

1. ``torch.load(weights_only=True)``: tensors, containers and plain values only. Every
   tpunlearn format (timm, deeplabv3, zoo) loads here.
2. When step 1 refuses the file (ultralytics checkpoints pickle whole modules), a restricted
   unpickler that resolves only

   * model classes: ``nn.Module`` subclasses and enums defined in torch, torchvision, timm
     or ultralytics, under their own names. A pickle may create them empty and fill them
     (NEWOBJ and BUILD, which is how a module is pickled) but never *call* them:
     constructors such as ultralytics' ``DetectionModel(cfg)`` evaluate strings from their
     arguments;
   * what torch's own ``weights_only`` loader allows (tensor rebuilds, dtypes, sizes);
   * the helper types these formats hold: ``OrderedDict``, sets, paths, namespaces,
     datetimes, numpy arrays and dtypes, ultralytics' ``IterableSimpleNamespace``.

   Every global the pickle names is checked before anything is unpickled, so a file that
   names anything else (``os.system``, ``builtins.exec``, ``subprocess.Popen``) is refused
   with an :class:`UnsafeCheckpointError` naming it, and nothing of it has run. The same
   rules are enforced again while unpickling, and the loaded modules and tensors must
   carry no hooks (a hook is code planted to run later).

``trust=True`` (the CLI's ``--trust-checkpoint``) loads a refused file with plain pickle,
after a :class:`~tpunlearn.errors.TrustedCheckpointWarning`.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import collections
import datetime
import enum
import functools
import importlib
import importlib.util
import os
import pathlib
import pickle
import pickletools
import sys
import types
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tpunlearn.errors import TrustedCheckpointWarning, UnsafeCheckpointError, WeightsError

__all__ = ["load_checkpoint", "restricted_load", "checkpoint_globals", "allowed_global", "describe_checkpoint"]

MODEL_PACKAGES = ("torch", "torchvision", "timm", "ultralytics")
# modules that may be imported to resolve a model class; other modules must already be imported
_IMPORTABLE = ("torch.nn.", "torchvision.models.", "torchvision.ops.", "timm.layers.", "timm.models.",
               "ultralytics.nn.")


def load_checkpoint(path: str | os.PathLike[str], trust: bool = False,
                    unsafe_load: Callable[[Path], Any] | None = None) -> Any:
    """Load a checkpoint without running any code it names (see the module docstring).

    A missing, truncated or corrupt file is a :class:`WeightsError`; a file that names
    anything off the allow-list an :class:`UnsafeCheckpointError`, unless ``trust``: then
    ``unsafe_load(path)`` (default: ``torch.load(weights_only=False)``) loads it after a
    :class:`TrustedCheckpointWarning`.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}" if not path.exists()
                           else f"weights {path} is a folder, not a checkpoint file")
    _refuse_torchscript(path)
    if not _torch_allow_list_widened():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            pass  # names globals torch's loader does not know (or is not a pickle): our allow-list decides
        except Exception as exc:  # noqa: BLE001 - truncated zip, EOF, not a torch file
            raise _corrupt(path, exc) from None
    try:
        return restricted_load(path)
    except UnsafeCheckpointError as exc:
        if not trust:
            raise
        warnings.warn(f"loading {path} with full unpickling (--trust-checkpoint): it names {exc.names_text}, "
                      "which can run any code", TrustedCheckpointWarning, stacklevel=2)
    try:
        return (unsafe_load or _torch_load_unsafe)(path)
    except WeightsError:
        raise
    except ModuleNotFoundError as exc:
        raise WeightsError(f"cannot load {path}: it needs module {exc.name!r}, which is not installed") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in any of pickle's or zipfile's ways
        raise _corrupt(path, exc) from None


def restricted_load(path: str | os.PathLike[str]) -> Any:
    """Step 2 alone: the allow-listed unpickler (see the module docstring)."""
    import torch

    path = Path(path)
    names = checkpoint_globals(path)
    refused = [n for n in names if not allowed_global(n)]
    if refused:
        raise UnsafeCheckpointError(path, refused)
    try:
        result = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except _Refused as exc:
        raise UnsafeCheckpointError(path, [exc.name], exc.why) from None
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in any of pickle's or zipfile's ways
        raise _corrupt(path, exc) from None
    _check_no_hooks(result, path)
    return result


def checkpoint_globals(path: str | os.PathLike[str]) -> list[str]:
    """Every ``module.name`` a ``torch.save`` zip file's pickle names (read statically; runs nothing).

    Files that are not zip archives (legacy torch format, or not torch at all) give ``[]``;
    the unpickler's own checks then apply.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            record = next((n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
            if record is None:
                return []
            raw = zf.read(record)
    except (zipfile.BadZipFile, OSError, EOFError):
        return []
    found: dict[str, None] = {}
    proto = 0
    try:
        for op, arg, _pos in pickletools.genops(raw):
            if op.name == "PROTO":
                proto = int(arg or 0)
            elif op.name in ("GLOBAL", "INST"):
                module, name = str(arg).split(" ", 1)
                found[_full_name(module, name, proto)] = None
    except Exception:  # noqa: BLE001 - a damaged pickle: the unpickler reports it
        pass
    return list(found)


def allowed_global(full_name: str) -> bool:
    """Whether the restricted unpickler resolves ``module.name``."""
    module, _, name = full_name.rpartition(".")
    try:
        _resolve(module, name)
    except _Refused:
        return False
    return True


def describe_checkpoint(ckpt: Any) -> str:
    """What a loaded checkpoint holds, in words (for "weights of another architecture" errors)."""
    import torch

    if isinstance(ckpt, torch.nn.Module):
        return f"a pickled {type(ckpt).__name__} module"
    if isinstance(ckpt, dict):
        fmt = ckpt.get("format")
        if isinstance(fmt, str) and fmt.startswith("tpunlearn-"):
            what = ckpt.get("timm_name") or ckpt.get("arch") or ckpt.get("name") or "model"
            return f"a {fmt} checkpoint ({what})"
        model = ckpt.get("ema") if isinstance(ckpt.get("ema"), torch.nn.Module) else ckpt.get("model")
        if isinstance(model, torch.nn.Module):
            library = type(model).__module__.split(".")[0]
            return f"{'an' if library[0] in 'aeiou' else 'a'} {library} checkpoint ({type(model).__name__})"
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return f"a state dict of {len(ckpt)} tensors"
        if isinstance(ckpt.get("state_dict"), dict):
            return f"a dict holding a state dict of {len(ckpt['state_dict'])} tensors"
        return f"a dict of {', '.join(map(repr, list(ckpt)[:4]))}" if ckpt else "an empty dict"
    return f"a {type(ckpt).__name__}"


# ---- the allow-list -------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, name: str, why: str = "") -> None:
        super().__init__(name)
        self.name, self.why = name, why


def _full_name(module: str, name: str, proto: int) -> str:
    """``module.name`` with Python 2 names mapped as the unpickler maps them (protocol < 3)."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as ultralytics checkpoints use it: enum members and modules' ``forward``."""
    import torch

    if isinstance(obj, type) and issubclass(obj, enum.Enum) and name in obj.__members__:
        return obj[name]
    if name in ("forward", "forward_fuse") and (
            isinstance(obj, torch.nn.Module) or (isinstance(obj, type) and issubclass(obj, torch.nn.Module))):
        return getattr(obj, name)
    raise _Refused(f"getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r})")


def _encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch's tensor-subclass rebuild, which calls ``func``: only with an allowed callable."""
    import torch

    if func not in _callables() or not (isinstance(new_type, type) and issubclass(new_type, torch.Tensor)):
        raise _Refused(f"torch._tensor._rebuild_from_type_v2({getattr(func, '__name__', func)!r}, ...)")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


@functools.cache
def _helpers() -> dict[str, Any]:
    """Globals outside the model classes: ``name -> object``; all of them are safe to call."""
    import numpy as np
    from torch import _weights_only_unpickler as wou

    helpers: dict[str, Any] = dict(wou._get_allowed_globals())  # torch's own weights_only allow-list
    helpers["torch._tensor._rebuild_from_type_v2"] = _rebuild_from_type_v2
    helpers["_codecs.encode"] = _encode
    helpers["builtins.getattr"] = _restricted_getattr
    data_types: list[Any] = [collections.OrderedDict, set, frozenset, slice, complex, bytearray, range,
                             pathlib.PurePosixPath, pathlib.PosixPath, types.SimpleNamespace, argparse.Namespace,
                             datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone]
    for obj in data_types:
        helpers[f"{obj.__module__}.{obj.__qualname__}"] = obj
    helpers["builtins.set"], helpers["builtins.frozenset"] = set, frozenset
    for name in ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib._local.PosixPath", "pathlib._local.WindowsPath"):
        helpers[name] = pathlib.PosixPath if os.name != "nt" else pathlib.WindowsPath
    helpers["numpy.dtype"] = np.dtype
    helpers["numpy.ndarray"] = np.ndarray
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        helpers[f"{core}._reconstruct"] = reconstruct
        helpers[f"{core}.scalar"] = scalar
    for dtype_class in {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGSUVOMm"}:
        helpers[f"{dtype_class.__module__}.{dtype_class.__qualname__}"] = dtype_class
    if "ultralytics" in sys.modules or _importable("ultralytics"):
        from ultralytics.utils import IterableSimpleNamespace

        helpers["ultralytics.utils.IterableSimpleNamespace"] = IterableSimpleNamespace
        helpers["ultralytics.yolo.utils.IterableSimpleNamespace"] = IterableSimpleNamespace  # before 8.0.44
    return helpers


@functools.cache
def _callables() -> frozenset[int]:
    """ids of the objects a pickle may call (REDUCE, INST, OBJ)."""
    return frozenset(id(v) for v in _helpers().values() if callable(v))


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _resolve(module: str, name: str) -> Any:
    """The object ``module.name`` names, or :class:`_Refused`."""
    full = f"{module}.{name}"
    helpers = _helpers()
    if full in helpers:
        return helpers[full]
    dunder = any(p.startswith("_") and p.endswith("_") for p in name.split("."))
    if module.split(".")[0] not in MODEL_PACKAGES or dunder:
        raise _Refused(full)
    mod = sys.modules.get(module)
    if mod is None:
        if not module.startswith(_IMPORTABLE):
            raise _Refused(full)
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise _Refused(full, "which is not installed here") from None
    obj: Any = mod
    for part in name.split("."):
        obj = getattr(obj, part, None)
    import torch

    if isinstance(obj, type) and obj.__module__ == module and obj.__qualname__ == name and \
            issubclass(obj, (torch.nn.Module, enum.Enum)):
        return obj
    raise _Refused(full)


def _is_safe_call(func: Any) -> bool:
    return id(func) in _callables() or (isinstance(func, type) and issubclass(func, enum.Enum))


# ---- the unpickler --------------------------------------------------------------------------


# pickle's pure-Python unpickler: its opcode handlers and stacks are what we override, and
# typeshed does not describe those internals, so the type checker sees the base as Any
_PythonUnpickler: Any = pickle._Unpickler


class _RestrictedUnpickler(_PythonUnpickler):
    """pickle's Python unpickler with every opcode that resolves or calls something checked."""

    dispatch = dict(_PythonUnpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        module, _, name = _full_name(module, name, self.proto if self.fix_imports else 3).rpartition(".")
        return _resolve(module, name)

    def _instantiate(self, klass: Any, args: tuple) -> None:  # INST, OBJ
        self._check_call(klass)
        self.append(klass(*args))

    def _check_call(self, func: Any) -> None:
        if not _is_safe_call(func):
            raise _Refused(_describe(func), "which a checkpoint may not call")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self._check_call(self.stack[-1])
        self.stack[-1] = self.stack[-1](*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_new(cls)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_new(cls)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _check_new(self, cls: Any) -> None:
        if not isinstance(cls, type) or not (_is_safe_call(cls) or _is_model_class(cls)):
            raise _Refused(_describe(cls), "which a checkpoint may not create")

    def load_build(self) -> None:
        inst = self.stack[-2]  # the state is on top
        if isinstance(inst, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                             types.ModuleType, functools.partial)) or not _buildable(inst):
            raise _Refused(f"BUILD on {_describe(inst)}", "which a checkpoint may not modify")
        super().load_build()

    def load_append(self) -> None:
        self._check_target(self.stack[-2], list)
        super().load_append()

    def load_appends(self) -> None:
        self._check_target(self.metastack[-1][-1] if self.metastack else None, list)
        super().load_appends()

    def load_setitem(self) -> None:
        self._check_target(self.stack[-3], dict)
        super().load_setitem()

    def load_setitems(self) -> None:
        self._check_target(self.metastack[-1][-1] if self.metastack else None, dict)
        super().load_setitems()

    def load_additems(self) -> None:
        self._check_target(self.metastack[-1][-1] if self.metastack else None, set)
        super().load_additems()

    @staticmethod
    def _check_target(obj: Any, kind: type) -> None:
        if not isinstance(obj, kind):
            raise _Refused(f"{kind.__name__} update of {_describe(obj)}", "which a checkpoint may not modify")

    def _refuse_extension(self) -> None:
        raise _Refused("a copyreg extension code", "which tpunlearn does not resolve")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.EXT1[0]] = dispatch[pickle.EXT2[0]] = dispatch[pickle.EXT4[0]] = _refuse_extension


def _load_legacy(file: Any, **kwargs: Any) -> Any:
    """``pickle_module.load``: legacy (pre-zip) torch files read a few values with it first."""
    return _RestrictedUnpickler(file, **kwargs).load()


# the ``pickle_module`` torch.load uses: the restricted unpickler, nothing else
_RestrictedPickle: Any = types.ModuleType("tpunlearn_restricted_pickle")  # Any: a module whose attributes we set
_RestrictedPickle.Unpickler = _RestrictedUnpickler
_RestrictedPickle.UnpicklingError = pickle.UnpicklingError
_RestrictedPickle.load = _load_legacy


def _is_model_class(cls: type) -> bool:
    import torch

    return issubclass(cls, (torch.nn.Module, enum.Enum)) and cls.__module__.split(".")[0] in MODEL_PACKAGES


def _buildable(inst: Any) -> bool:
    """Objects whose state a pickle may set: instances of allow-listed classes."""
    import numpy as np
    import torch

    cls = type(inst)
    return (_is_model_class(cls) or id(cls) in _callables() or cls in _helpers().values()
            or isinstance(inst, (collections.OrderedDict, torch.Tensor, np.ndarray, np.dtype, types.SimpleNamespace,
                                 argparse.Namespace)))


def _describe(obj: Any) -> str:
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object"


def _check_no_hooks(obj: Any, path: Path) -> None:
    """Refuse loaded modules or tensors that carry hooks (callables planted to run later)."""
    import torch

    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.nn.Module):
            for key, value in vars(item).items():
                if key.endswith("hooks") and isinstance(value, dict) and value:
                    raise UnsafeCheckpointError(path, [f"{type(item).__name__}.{key}"], "hooks that would run code")
            stack.extend(vars(item).values())
        elif isinstance(item, torch.Tensor):
            if getattr(item, "_backward_hooks", None):
                raise UnsafeCheckpointError(path, ["tensor backward hooks"], "hooks that would run code")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, (types.SimpleNamespace, argparse.Namespace)):
            stack.extend(vars(item).values())


# ---- plain helpers ---------------------------------------------------------------------------


def _torch_allow_list_widened() -> bool:
    """True when something in this process added globals to torch's weights_only allow-list
    (ultralytics' safe loader does, for the life of the process); torch's loader would then
    call those classes, so our own allow-list decides instead."""
    import torch

    get = getattr(torch.serialization, "get_safe_globals", None)
    return bool(get()) if get is not None else True


def _torch_load_unsafe(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _refuse_torchscript(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            scripted = any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return
    if scripted:
        raise WeightsError(f"{path} is a TorchScript archive, not a checkpoint; pass the original .pt "
                           "(torch.save of a state dict or of the model)")


def _corrupt(path: Path, exc: BaseException) -> WeightsError:
    """A one-line WeightsError for a file torch cannot read."""
    text = str(exc)
    if isinstance(exc, (EOFError, zipfile.BadZipFile)) or "PytorchStreamReader" in text or "zip archive" in text:
        why = "the file is truncated or corrupt (not a complete torch zip archive)"
    elif isinstance(exc, OSError) and exc.strerror:
        why = exc.strerror
    else:  # an unknown opcode, a bad memo index, ...: bytes that are not a torch pickle
        why = "not a torch checkpoint, or a damaged one"
    return WeightsError(f"cannot read weights {path}: {why}; re-download or re-save it")
