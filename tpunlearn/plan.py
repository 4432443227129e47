"""PrunePlan: flagged nodes turned into torch-pruning group decisions.

The unit torch-pruning removes is a *group*: a conv's output channels with the norm layer,
the next layers' input channels, residual adds and concats coupled to it. We decide per
group, never per layer. A channel of a group is removed when one of its coupled nodes is
flagged and none is protected. Groups that reach layers outside the scored set follow the
``coupled`` policy: ``protect`` (leave them), ``prune`` (remove the whole coupled channel)
or ``zero`` (zero only the flagged layer's filter and norm affine, shapes kept). Groups the
tracer cannot model (grouped convolutions, channel splits and slices, operations whose index
mapping torch-pruning cannot compute: see :mod:`tpunlearn.tracing`) are left alone and the
plan says so, and so is any group that would change the model's output channels. No group is
ever emptied.

A plan is data: it prints as a dry run, saves as JSON, and replays on a fresh copy of the
model through torch-pruning's pruning history.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tpunlearn.errors import PlanError, TracerError
from tpunlearn.io import JsonFormat
from tpunlearn.layers import module_by_name
from tpunlearn.settings import COUPLED, MODES, check_choice
from tpunlearn.torchutils import CONV_TYPES, LAYER_TYPES, NORM_TYPES, forward, norm_width, out_width
from tpunlearn.tracing import blocked_reason, build_dependency_graph, out_group

PLAN_FORMAT = JsonFormat("tpunlearn-plan/1", "tpunlearn plan")


@dataclass
class GroupDecision:
    """What happens to one dependency group, in the root layer's channel indices."""

    root: str
    action: str  # "prune" | "zero" | "skip"
    channels: list[int]
    members: dict[str, list[int]]  # every layer whose output channels the action touches
    reason: str
    local: bool = True  # no other layer's output channels are coupled to the root's
    exact: bool = True  # zeroing every member equals removal (no channel-mixing norm in the group)
    # Width alignment's part, per member layer (layer indices); kept out of the plan's JSON,
    # which the golden tests pin: only the plan :func:`make_plan` returns can explain itself.
    align_added: dict[str, list[int]] = field(default_factory=dict)  # unflagged channels added
    align_kept: dict[str, list[int]] = field(default_factory=dict)  # flagged channels kept back

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "action": self.action, "channels": self.channels, "members": self.members,
                "reason": self.reason, "local": self.local, "exact": self.exact}


@dataclass
class PrunePlan:
    """Decisions per group, plus what is needed to replay them exactly."""

    mode: str
    coupled: str
    decisions: list[GroupDecision]
    signature: dict[str, list[int]]  # layer -> [out, in] channels of the original model
    history: list[list[Any]] = field(default_factory=list)  # torch-pruning history, set by apply()
    notes: list[str] = field(default_factory=list)
    # The balanced graph's flagged channels per scored layer, as make_plan received them (not in the JSON).
    flagged: dict[str, list[int]] = field(default_factory=dict)

    # ---- views -------------------------------------------------------------------------
    @property
    def removed(self) -> dict[str, list[int]]:
        """Output channels removed (physical) or zeroed, per layer, in original indices."""
        out: dict[str, list[int]] = {}
        for d in self.decisions:
            if d.action in ("prune", "zero"):
                for layer, idxs in d.members.items():
                    out.setdefault(layer, [])
                    out[layer] = sorted(set(out[layer]) | set(idxs))
        return out

    @property
    def removed_channels(self) -> int:
        return sum(len(v) for v in self.removed.values())

    def zero_ops(self) -> dict[str, list[int]]:
        """Layers and channels to zero: every decision in mask mode, ``zero`` ones otherwise."""
        ops: dict[str, list[int]] = {}
        for d in self.decisions:
            if d.action == "zero" or (self.mode == "mask" and d.action == "prune"):
                for layer, idxs in d.members.items():
                    ops[layer] = sorted(set(ops.get(layer, [])) | set(idxs))
        return ops

    def explain(self) -> dict[str, Any]:
        """What was removed and why, per layer: ``{"layers": {layer: counts}, "total": counts}``.

        Counts per layer (its own channel indices): ``channels`` (width), ``flagged`` (by the
        balanced graph), ``align_added`` (unflagged channels width alignment added),
        ``align_kept`` (flagged channels alignment held back), ``protected_kept`` (flagged
        channels left because their group is protected, skipped or would be emptied),
        ``coupled_added`` (unflagged channels removed because a coupled layer's channel was
        flagged) and ``removed``. Always ``removed = flagged - align_kept - protected_kept +
        align_added + coupled_added``, and the total removed is :attr:`removed_channels`.
        """
        removed = self.removed
        layers = list(self.flagged) + [layer for layer in removed if layer not in self.flagged]
        rows = {layer: self._explain_layer(layer, removed.get(layer, [])) for layer in layers}
        keys = ("channels", "flagged", "align_added", "align_kept", "protected_kept", "coupled_added", "removed")
        total = {k: sum(r[k] for r in rows.values()) for k in keys}
        return {"layers": rows, "total": total}

    def _explain_layer(self, layer: str, removed: Sequence[int]) -> dict[str, int]:
        flagged, gone = set(self.flagged.get(layer, [])), set(removed)
        added = {c for d in self.decisions for c in d.align_added.get(layer, [])}
        held = {c for d in self.decisions for c in d.align_kept.get(layer, [])}
        align_added = len((gone - flagged) & added)
        align_kept = len((flagged - gone) & held)
        return {"channels": self.signature.get(layer, [0])[0], "flagged": len(flagged),
                "align_added": align_added, "align_kept": align_kept,
                "protected_kept": len(flagged - gone) - align_kept,
                "coupled_added": len(gone - flagged) - align_added, "removed": len(gone)}

    def removal_table(self) -> str:
        """:meth:`explain` as a fixed-width table (layer, channels, flagged, +align, -align,
        kept by protection, +coupled, removed) with totals."""
        info = self.explain()
        head = ("layer", "channels", "flagged", "+align", "-align", "protected", "+coupled", "removed")
        keys = ("channels", "flagged", "align_added", "align_kept", "protected_kept", "coupled_added", "removed")
        rows = [(layer, *(str(r[k]) for k in keys)) for layer, r in info["layers"].items()]
        rows.append(("total", *(str(info["total"][k]) for k in keys)))
        width = max([len(head[0])] + [len(r[0]) for r in rows])
        fmt = "  {:<" + str(width) + "}" + " {:>9}" * (len(head) - 1)
        return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])

    def dry_run(self) -> str:
        """A human-readable listing of every decision, and the removal table, as a dry run prints it."""
        lines = [f"PrunePlan  mode={self.mode}  coupled={self.coupled}  "
                 f"channels={self.removed_channels} in {len(self.removed)} layer(s)"]
        for d in self.decisions:
            members = ", ".join(f"{k}[{len(v)}]" for k, v in d.members.items()) or "-"
            lines.append(f"  {d.action:5s} {d.root:40s} {len(d.channels):4d} ch  -> {members}  ({d.reason})")
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.flagged:
            lines += ["removal per layer (protected: flagged but kept by a protected or skipped group; "
                      "+coupled: removed with a flagged coupled channel):", self.removal_table()]
        return "\n".join(lines)

    __str__ = dry_run

    # ---- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return PLAN_FORMAT.stamp({
            "mode": self.mode,
            "coupled": self.coupled,
            "decisions": [d.to_dict() for d in self.decisions],
            "signature": self.signature,
            "history": self.history,
            "removed": self.removed,
            "removed_channels": self.removed_channels,
            "notes": self.notes,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrunePlan:
        """A plan from its JSON form, every field type-checked (a damaged file is a PlanError)."""
        PLAN_FORMAT.check(data)
        try:
            plan = cls(
                mode=str(data["mode"]), coupled=str(data["coupled"]),
                decisions=[_decision_from_dict(d) for d in data["decisions"]],
                signature={str(k): [int(c) for c in v] for k, v in data["signature"].items()},
                history=[[str(h[0]), bool(h[1]), [int(i) for i in h[2]]] for h in data.get("history", [])],
                notes=[str(n) for n in data.get("notes", [])],
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise PlanError(f"not a valid tpunlearn plan ({type(exc).__name__}: {exc})") from None
        if plan.mode not in MODES or plan.coupled not in COUPLED:
            raise PlanError(f"not a valid tpunlearn plan (mode {plan.mode!r}, coupled {plan.coupled!r})")
        if any(len(v) != 2 for v in plan.signature.values()):
            raise PlanError("not a valid tpunlearn plan (a signature entry is not [out, in] channels)")
        return plan

    def save(self, path: str | os.PathLike[str]) -> None:
        PLAN_FORMAT.write(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None) -> PrunePlan:
        """Read a plan file; with ``model``, also check that it was made for that model."""
        def parse(data: Mapping[str, Any]) -> PrunePlan:
            plan = cls.from_dict(data)
            if model is not None:
                plan.check(model)
            return plan

        return PLAN_FORMAT.read(path, parse)

    def check(self, model: nn.Module) -> None:
        """Raise PlanError unless every layer and channel the plan names exists in ``model``.

        ``model`` is the model the plan was made for, before pruning: its signature must
        match, every decision's layers must be in it with channel indices in range, and the
        pruning history may only name its modules.
        """
        check_signature(model, self.signature)
        for d in self.decisions:
            for layer, idxs in [(d.root, d.channels), *d.members.items()]:
                if layer not in self.signature:
                    raise PlanError(f"the plan names layer {layer!r}, which the model does not have")
                width = self.signature[layer][0]
                bad = [i for i in idxs if not 0 <= i < width]
                if bad:
                    raise PlanError(f"the plan names channel {bad[0]} of {layer}, which has {width} channels")
        modules = dict(model.named_modules())
        unknown = [h[0] for h in self.history if h[0] not in modules]
        if unknown:
            raise PlanError(f"the plan's pruning history names module {unknown[0]!r}, which the model does not have")

    # ---- application -------------------------------------------------------------------
    def apply(self, model: nn.Module, example_inputs: Any, output_transform: Callable[[Any], Any] | None = None,
              dependency_graph: Any = None) -> nn.Module:
        """Apply the plan to ``model`` in place and return it.

        Zero operations come first (they touch output channels no pruned group owns), then
        the pruned groups through torch-pruning. The pruning history is recorded in the
        plan so that :meth:`replay` can redo it on a fresh copy.
        """
        self.check(model)
        zero_channels(model, self.zero_ops(), example_inputs)
        if self.mode == "physical":
            prunes = [d for d in self.decisions if d.action == "prune"]
            if prunes:
                dg = dependency_graph or build_dependency_graph(model, example_inputs, output_transform)
                for d in prunes:
                    group = out_group(dg, module_by_name(model, d.root), list(d.channels))
                    if not dg.check_pruning_group(group):
                        raise PlanError(f"pruning {len(d.channels)} channels of {d.root} would empty a layer")
                    try:
                        group.prune()
                    except Exception as exc:  # noqa: BLE001 - torch-pruning failed on a group it had traced
                        raise TracerError(f"torch-pruning failed to prune {d.root} in {type(model).__name__} "
                                          f"({type(exc).__name__}: {exc})") from None
                self.history = [[name, bool(out), [int(i) for i in idxs]] for name, out, idxs in dg.pruning_history()]
        return model

    def replay(self, model: nn.Module, example_inputs: Any,
               output_transform: Callable[[Any], Any] | None = None) -> nn.Module:
        """Redo an applied plan on a fresh copy of the original model (in place)."""
        if self.mode == "physical" and not self.history and any(d.action == "prune" for d in self.decisions):
            return self.apply(model, example_inputs, output_transform)  # never applied: apply it now
        self.check(model)
        zero_channels(model, self.zero_ops(), example_inputs)
        if self.mode == "physical" and self.history:
            dg = build_dependency_graph(model, example_inputs, output_transform)
            try:
                dg.load_pruning_history([list(h) for h in self.history])
            except Exception as exc:  # noqa: BLE001 - a history that does not fit this model
                raise PlanError(f"the plan's pruning history does not fit this model ({type(exc).__name__}: {exc}); "
                                "replay it on a fresh copy of the model it was made for") from None
        return model


def _decision_from_dict(d: Mapping[str, Any]) -> GroupDecision:
    action = str(d["action"])
    if action not in ("prune", "zero", "skip"):
        raise ValueError(f"unknown action {action!r}")
    return GroupDecision(root=str(d["root"]), action=action, channels=[int(c) for c in d["channels"]],
                         members={str(k): [int(c) for c in v] for k, v in d["members"].items()},
                         reason=str(d.get("reason", "")), local=bool(d.get("local", True)),
                         exact=bool(d.get("exact", True)))


def close_groups(model: nn.Module, layers: Sequence[str], order: Sequence[str], dependency_graph: Any) -> list[str]:
    """``layers`` plus every prunable layer coupled to one of them, in execution order.

    torch-pruning removes a channel from a whole group at once (a residual stream couples
    the convs that add into it). Scoring every member lets the plan decide a group on full
    information instead of protecting or pruning it blind. Only layers in ``order`` (the
    prunable, non-ignored convs) are added.
    """
    dg = dependency_graph
    allowed = set(order)
    out = set(layers)
    names = {m: n for n, m in model.named_modules()}
    for name in layers:
        root = module_by_name(model, name)
        if blocked_reason(dg, root):
            continue
        out.update(n for n in out_members(dg, out_group(dg, root), names) if n in allowed)
    return [n for n in order if n in out]


def signature(model: nn.Module) -> dict[str, list[int]]:
    """Channel counts of every conv and linear layer: identifies the model a plan is for."""
    out: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, CONV_TYPES):
            out[name] = [m.out_channels, m.in_channels]
        elif isinstance(m, nn.Linear):
            out[name] = [m.out_features, m.in_features]
    return out


def check_signature(model: nn.Module, expected: Mapping[str, Sequence[int]], what: str = "the plan") -> None:
    """Raise PlanError when ``model`` is not the model ``what`` (a plan, a cache) was made for."""
    actual = signature(model)
    if set(actual) != set(expected):
        extra = sorted(set(expected) ^ set(actual))[:3]
        raise PlanError(f"{what} was made for another model (layers such as {extra} do not match)")
    for name, shape in expected.items():
        if list(actual[name]) != list(shape):
            raise PlanError(f"{what} was made for another model: {name} has {actual[name]} channels, "
                            f"{what} expects {list(shape)}")


def make_plan(
    model: nn.Module,
    flagged: Mapping[str, Iterable[int]],
    protected: Mapping[str, Iterable[int]],
    example_inputs: Any,
    candidates: Sequence[str] | None = None,
    ignored_layers: Sequence[str] = (),
    coupled: str = "protect",
    mode: str = "physical",
    priority: Mapping[str, torch.Tensor] | None = None,
    output_transform: Callable[[Any], Any] | None = None,
    dependency_graph: Any = None,
    align: int | None = None,
) -> PrunePlan:
    """Decide, group by group, which flagged channels to remove.

    ``align`` keeps pruned widths at multiples of ``align`` where the original width is one
    (ONNX Runtime's fast CPU convolutions want multiples of 8): each group's removal is
    topped up with its unprotected channels that score highest for the forget targets, or,
    when too few remain, cut back to the multiple below. Protected channels are never added.

    ``flagged`` and ``protected`` map layer names to channel indices (a BalancedGraph's
    ``flagged()`` and ``protected()``). ``candidates`` is the scored set (default: the
    layers in ``flagged``); ``ignored_layers`` never lose output channels. ``priority``
    (per layer, higher = remove first) picks the channel to keep when a group would empty.
    """
    check_choice("mode", mode, MODES)
    check_choice("coupled policy", coupled, COUPLED)
    import torch_pruning as tp

    dg = dependency_graph or build_dependency_graph(model, example_inputs, output_transform)
    names = {m: n for n, m in model.named_modules()}
    flag_sets = {layer: {int(c) for c in v} for layer, v in flagged.items()}
    guard_sets = {layer: {int(c) for c in v} for layer, v in protected.items()}
    scored = set(candidates) if candidates is not None else set(flag_sets)
    ignored = tuple(ignored_layers)
    decisions: list[GroupDecision] = []
    notes: list[str] = []
    seen: set[frozenset[str]] = set()
    pruned: set[str] = set()
    scored_order = list(candidates or list(flag_sets))
    for root_name in [layer for layer in scored_order if flag_sets.get(layer)]:
        root = module_by_name(model, root_name)
        blocked = blocked_reason(dg, root)
        if blocked:
            decision = GroupDecision(root_name, "skip", sorted(flag_sets[root_name]), {}, blocked)
            notes.append(f"{root_name}: {len(decision.channels)} flagged channel(s) left alone: {blocked}")
            decisions.append(decision)
            continue
        group = out_group(dg, root)
        members = out_members(dg, group, names)
        key = frozenset(members)
        if key in seen:
            continue
        seen.add(key)
        decision = _decide(root_name, group, members, flag_sets, guard_sets, scored, ignored, coupled, dg, tp,
                           priority, align)
        shared = sorted(pruned & set(decision.members)) if decision.action == "prune" else []
        if shared:  # a concat made two partial groups of one layer: the second's indices would be stale
            decision = GroupDecision(root_name, "skip", decision.channels, {}, f"overlaps the group already pruned "
                                     f"at {shared[0]} (a concatenation splits it); left alone")
        if decision.action == "prune":
            pruned |= set(decision.members)
        if decision.action == "skip" and decision.channels:
            notes.append(f"{root_name}: {len(decision.channels)} flagged channel(s) left alone: {decision.reason}")
        if "kept one channel" in decision.reason:
            notes.append(f"{root_name}: every channel was flagged; kept one channel so the layer is not emptied")
        decisions.append(decision)
    return PrunePlan(mode=mode, coupled=coupled, decisions=decisions, signature=signature(model), notes=notes,
                     flagged={layer: sorted(flag_sets.get(layer, set())) for layer in scored_order})


def out_members(dg: Any, group: Any, names: Mapping[nn.Module, str]) -> dict[str, tuple[list[int], list[int]]]:
    """Layers (conv/linear) whose output channels the group removes: name -> (idxs, root_idxs)."""
    members: dict[str, tuple[list[int], list[int]]] = {}
    for item in group.items:
        module = item.dep.target.module
        if isinstance(module, LAYER_TYPES) and dg.is_out_channel_pruning_fn(item.dep.handler):
            members[names[module]] = (list(item.idxs), list(item.root_idxs))
    return members


def _root_hits(members: Mapping[str, tuple[list[int], list[int]]], chosen: Mapping[str, set[int]]) -> set[int]:
    """The group's root channels that are ``chosen`` (flagged or protected) in any of its coupled layers."""
    return {int(r) for layer, (idxs, root_idxs) in members.items()
            for i, r in zip(idxs, root_idxs, strict=False) if i in chosen.get(layer, set())}


def _zeroed(members: Mapping[str, tuple[list[int], list[int]]], keep: set[int], flagged: Mapping[str, set[int]],
            scored: set[str]) -> dict[str, list[int]]:
    """coupled=zero: per scored layer, its own flagged channels among the root channels ``keep``."""
    zeroed = {layer: sorted(int(i) for i, r in zip(idxs, root_idxs, strict=False)
                            if int(r) in keep and int(i) in flagged.get(layer, set()))
              for layer, (idxs, root_idxs) in members.items() if layer in scored}
    return {layer: v for layer, v in zeroed.items() if v}


def _decide(root_name: str, group: Any, members: Mapping[str, tuple[list[int], list[int]]],
            flagged: Mapping[str, set[int]], protected: Mapping[str, set[int]], scored: set[str],
            ignored: tuple[str, ...], coupled: str, dg: Any, tp: Any,
            priority: Mapping[str, torch.Tensor] | None, align: int | None = None) -> GroupDecision:
    hit, guard = _root_hits(members, flagged), _root_hits(members, protected)
    wanted = sorted(hit - guard)

    def by_layer(chans: set[int]) -> dict[str, list[int]]:
        return {layer: sorted(int(i) for i, r in zip(idxs, root_idxs, strict=False) if int(r) in chans)
                for layer, (idxs, root_idxs) in members.items()}

    local = set(members) == {root_name}
    exact = not any(isinstance(item.dep.target.module, (nn.LayerNorm, nn.GroupNorm)) for item in group.items)

    def skip(reason: str) -> GroupDecision:
        return GroupDecision(root_name, "skip", sorted(hit), {}, reason, local, exact)

    heads = [layer for layer in members if any(layer == i or layer.startswith(i + ".") for i in ignored)]
    if heads:
        return skip(f"would remove output channels of protected layer {heads[0]}")
    if any(item.dep.target.type == tp.ops.OPTYPE.OUTPUT for item in group.items):
        return skip("would change the model's output channels")
    unsupported = unsupported_reason(group, tp)
    if unsupported:
        return skip(unsupported)
    if not wanted:
        return skip("every flagged channel is protected by a retained target" if hit else "nothing flagged")
    outside = sorted(set(members) - scored)
    reason = f"{len(wanted)} flagged, {len(hit) - len(wanted)} protected"
    if outside and coupled == "protect":
        return skip(f"coupled to unscored layer(s) {', '.join(outside[:2])}{'...' if len(outside) > 2 else ''} "
                    "(coupled=protect)")
    if outside and coupled == "zero":
        return GroupDecision(root_name, "zero", wanted, _zeroed(members, set(wanted), flagged, scored),
                             reason + "; coupled=zero keeps shapes", local, exact)
    n_root = len(members[root_name][0])
    before_align = set(wanted)
    if align and align > 1 and n_root % align == 0 and len(wanted) % align:
        wanted, note = _align(wanted, guard, n_root, align, priority.get(root_name) if priority else None)
        reason += note
        if not wanted:
            held = skip(f"fewer flagged channels than one block of {align}, and too few unprotected ones to fill it")
            held.align_kept = by_layer(before_align)
            return held
    aligned = set(wanted)
    if len(wanted) >= n_root:
        kept = _keep_one(wanted, priority.get(root_name) if priority else None)
        wanted = [c for c in wanted if c != kept]
        reason += f"; kept one channel ({kept}) so the group is not emptied"
    group_to_check = out_group(dg, group[0].dep.target.module, wanted)
    if not dg.check_pruning_group(group_to_check):
        return skip("removing these channels would empty a coupled layer")
    return GroupDecision(root_name, "prune", wanted, by_layer(set(wanted)), reason, local, exact,
                         align_added=by_layer(aligned - before_align), align_kept=by_layer(before_align - aligned))


def unsupported_reason(group: Any, tp: Any) -> str:
    """Why torch-pruning can't remove arbitrary channels of this group, or ''."""
    bad = (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.SLICE)
    for item in group.items:
        node = item.dep.target
        module = node.module
        if isinstance(module, CONV_TYPES) and module.groups > 1 and not (
                module.groups == module.in_channels == module.out_channels):
            return f"grouped convolution (groups={module.groups}) in the group; left alone"
        if node.type in bad:
            return f"channel {node.type.name.lower()} in the group, which torch-pruning does not model; left alone"
    return ""


def _align(wanted: list[int], guard: set[int], width: int, align: int,
           priority: torch.Tensor | None) -> tuple[list[int], str]:
    """``wanted`` grown (or cut) to a multiple of ``align`` channels; and what was done."""
    need = align - len(wanted) % align

    def rank(c: int) -> float:
        return -float(priority[c]) if priority is not None else float(c)

    spare = sorted((c for c in range(width) if c not in guard and c not in set(wanted)), key=rank)
    if len(spare) >= need and len(wanted) + need < width:
        note = f"; +{need} unprotected channel(s) to keep the width a multiple of {align}"
        return sorted(wanted + spare[:need]), note
    cut = len(wanted) % align
    kept = sorted(sorted(wanted, key=rank)[:len(wanted) - cut])
    return kept, f"; {cut} flagged channel(s) kept to hold the width at a multiple of {align}"


def _keep_one(channels: Sequence[int], priority: torch.Tensor | None) -> int:
    if priority is None:
        return channels[-1]
    return min(channels, key=lambda c: float(priority[c]))


def zero_channels(model: nn.Module, ops: Mapping[str, Sequence[int]], example_inputs: Any = None) -> None:
    """Zero the filters, biases and following norm affine of ``ops`` (mask mode).

    The norm that follows a layer is the one that reads its output in a forward of
    ``example_inputs`` (whatever the registration order); where none does directly (no
    inputs given, or a permute in between), the norm registered right after the layer.
    """
    if not ops:
        return
    modules = list(model.named_modules())
    position = {name: i for i, (name, _) in enumerate(modules)}
    readers = _norm_readers(model, list(ops), example_inputs) if example_inputs is not None else None
    with torch.no_grad():
        for layer, idxs in ops.items():
            module = module_by_name(model, layer)
            _zero_rows(module, idxs)
            norm = (readers or {}).get(layer) or _following_norm(modules, position[layer], module)
            if norm is not None:
                _zero_rows(norm, idxs)


def _zero_rows(module: nn.Module, idxs: Sequence[int]) -> None:
    """Zero the entries ``idxs`` (output channels) of a layer's or a norm's weight and bias, where it has them."""
    for name in ("weight", "bias"):
        param = getattr(module, name, None)
        if isinstance(param, torch.Tensor):
            param[torch.as_tensor(list(idxs), dtype=torch.long, device=param.device)] = 0


def _norm_readers(model: nn.Module, layers: Sequence[str], example_inputs: Any) -> dict[str, nn.Module]:
    """For each of ``layers``, the norm layer (of its width) whose input is that layer's output."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is kept so that its id stays unique
    found: dict[str, nn.Module] = {}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = (name, output)
        return hook

    def read(module: nn.Module, inputs: Any) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and id(inputs[0]) in outputs:
            name = outputs[id(inputs[0])][0]
            if name not in found and norm_width(module) == out_width(module_by_name(model, name)):
                found[name] = module

    handles = [module_by_name(model, name).register_forward_hook(record(name)) for name in layers]
    handles += [m.register_forward_pre_hook(read) for m in model.modules() if isinstance(m, NORM_TYPES)]
    try:
        forward(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _following_norm(modules: list[tuple[str, nn.Module]], start: int, layer: nn.Module) -> nn.Module | None:
    """The norm layer registered right after ``layer`` with its channel count, if any.

    Most families register a conv's norm next to it (conv, bn, act); the zeroing is
    verified against the physical result by the tests for each architecture.
    """
    for _name, module in modules[start + 1:start + 4]:
        if isinstance(module, NORM_TYPES):
            return module if norm_width(module) == out_width(layer) else None
        if isinstance(module, LAYER_TYPES):
            return None
    return None

