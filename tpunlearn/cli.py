"""The ``tpunlearn`` command line (argparse; not ultralytics' ``yolo TASK MODE key=value``).

Heavy libraries load only inside the command that needs them, so ``tpunlearn --help``
answers at once. Every error tpunlearn detects prints one line and exits non-zero.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from tpunlearn.errors import TpunlearnError, UsageError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        if not getattr(args, "data_parallel", False) and _launched_rank() != 0:
            return 0  # under torchrun only graph and prune share work; rank 0 alone runs the rest
        return int(args.func(args) or 0)
    except TpunlearnError as exc:
        print(f"tpunlearn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tpunlearn: interrupted; nothing was written for this step", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse with tpunlearn's error style: one line, ``tpunlearn: error: ...``, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tpunlearn", description="Target-level machine unlearning by structural pruning.")
    sub = p.add_subparsers(metavar="COMMAND")

    prune = sub.add_parser("prune", help="forget one or more targets and write a smaller model",
                           description="Score channels per target, balance the essential graphs (Eq. 4) and "
                                       "remove the channels that carry the forget targets and no other.")
    _model_args(prune)
    prune.add_argument("--forget", nargs="+", required=True, metavar="NAME", help="class names (or indices) to forget")
    prune.add_argument("--retain", nargs="+", metavar="NAME", help="targets to keep (default: every other class)")
    prune.add_argument("--sigma", type=_int_at_least(1), default=None,
                       help="number of last prunable convs to consider (default 4, or the model family's)")
    prune.add_argument("--delta", type=_fraction, default=None,
                       help="top fraction of channels per layer and target (default 0.05, or the family's)")
    prune.add_argument("--retain-delta", type=_fraction, default=None, help="top fraction each retained target protects (default: --delta)")
    prune.add_argument("--retain-tolerance", type=_int_at_least(0), default=None,
                       help="retained targets that may share a flagged channel (default 0, or the family's)")
    prune.add_argument("--samples", type=_int_at_least(1), default=32, help="instances scored per target (default 32)")
    prune.add_argument("--mode", choices=("physical", "mask"), default="physical")
    prune.add_argument("--coupled", choices=("protect", "prune", "zero"), default="protect")
    prune.add_argument("--out", default="tpunlearn-out", help="output folder (default ./tpunlearn-out)")
    prune.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    prune.add_argument("--onnx", action="store_true", help="also export model.onnx with a parity check")
    prune.add_argument("--eval", action="store_true", help="evaluate every target before and after")
    prune.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    prune.add_argument("--graph", metavar="CACHE", help="use the scores of `tpunlearn graph` (no scoring)")
    prune.add_argument("--align", type=_int_at_least(1), default=None, metavar="N",
                       help="keep pruned widths at multiples of N (default 8, which ONNX Runtime's CPU "
                            "convolutions need to stay fast, or the family's; 1 turns it off)")
    prune.add_argument("--seed", type=int, default=0)
    _device_arg(prune)
    prune.set_defaults(func=_cmd_prune, data_parallel=True)

    graph = sub.add_parser("graph", help="score every target once and save the cache `prune --graph` reads")
    _model_args(graph)
    graph.add_argument("--out", required=True, metavar="CACHE", help="cache file to write (JSON)")
    graph.add_argument("--sigma", type=_int_at_least(1), default=None,
                       help="last prunable convs to score (default 4, or the model family's)")
    graph.add_argument("--samples", type=_int_at_least(1), default=32, help="instances scored per target")
    graph.add_argument("--seed", type=int, default=0)
    _device_arg(graph)
    graph.set_defaults(func=_cmd_graph, data_parallel=True)

    export = sub.add_parser("export", help="export a model to ONNX with a parity check")
    _model_args(export)
    export.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write")
    export.set_defaults(func=_cmd_export)

    ev = sub.add_parser("eval", help="per-target metrics of a model")
    _model_args(ev)
    ev.add_argument("--json", help="also write the metrics to this JSON file")
    _device_arg(ev)
    ev.set_defaults(func=_cmd_eval)

    zoo = sub.add_parser("zoo", help="list the bundled models")
    zoo.set_defaults(func=_cmd_zoo)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help="architecture or zoo name (see `tpunlearn zoo`)")
    p.add_argument("--weights", help="checkpoint to load (never modified)")
    p.add_argument("--data", default=None, help="data spec (default: the model's own; `digits` = DigitScenes)")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", type=_device_text, metavar="DEVICE",
                   help="cpu, cuda or cuda:N (default cpu); under torchrun, cuda is each rank's own GPU")


def _device_text(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda or cuda:N")
    return text


def _launched_rank() -> int:
    """This process's rank as torchrun's environment gives it (0 outside torchrun)."""
    try:
        return int(os.environ.get("RANK") or 0)
    except ValueError:
        raise UsageError(f"environment variable RANK={os.environ['RANK']!r} is not an integer") from None


@contextlib.contextmanager
def _ranks(args: argparse.Namespace) -> Iterator[Any]:
    """The rank's device, inside the torchrun process group when launched by torchrun."""
    from tpunlearn import distributed

    device = distributed.rank_device(args.device)
    with distributed.process_group_from_env(device):
        yield device


def _build(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from tpunlearn import adapters

    adapter = adapters.for_arch(args.arch)
    model, info = adapter.build(args.arch, args.weights)
    return adapter, model, info


LIBRARY_DEFAULTS = {"sigma": 4, "delta": 0.05, "retain_tolerance": 0, "align": 8}


def _settings(args: argparse.Namespace, adapter: Any) -> None:
    """Fill the settings the user left out: the family's defaults first, then the library's."""
    for key, value in {**LIBRARY_DEFAULTS, **adapter.defaults}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def resolve_targets(names: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Class names (or indices) to indices, per model; unknown names list the valid ones."""
    out = []
    for name in names:
        if name in class_names:
            out.append(list(class_names).index(name))
        elif name.isdigit() and int(name) < len(class_names):
            out.append(int(name))
        else:
            shown = ", ".join(class_names[:12]) + (f", ... ({len(class_names)} in all)" if len(class_names) > 12 else "")
            raise UsageError(f"unknown target {name!r}; valid: {shown}")
    return out


def _cmd_prune(args: argparse.Namespace) -> int:
    with _ranks(args) as device:
        return _prune(args, device)


def _prune(args: argparse.Namespace, device: Any) -> int:
    """``tpunlearn prune`` on ``device``; under torchrun every rank scores, rank 0 alone does the rest."""
    import torch

    import tpunlearn as tu
    from tpunlearn.distributed import is_main, to_device
    from tpunlearn.io import sha256, write_json
    from tpunlearn.report import count_macs, versions

    if not is_main() and args.graph:
        return 0  # cached scores: nothing to share
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if not args.dry_run and is_main():
        _check_out(out, args.weights, args.force)
    adapter, model, info = _build(args)
    model.to(device)
    _settings(args, adapter)
    forget = list(dict.fromkeys(resolve_targets(args.forget, info.class_names)))
    retain = list(dict.fromkeys(resolve_targets(args.retain, info.class_names))) if args.retain else None
    both = [info.class_names[t] for t in forget if retain and t in retain]
    if both:
        raise UsageError(f"target(s) {', '.join(both)} are in both --forget and --retain")
    example = to_device(adapter.example_inputs(info), device)
    t0 = time.perf_counter()
    scores, samples = None, None
    if args.graph:
        from tpunlearn.cache import load_cache

        scores, _meta = load_cache(args.graph, model, sha256(info.weights) if info.weights else None)
    else:
        samples = adapter.samples(model, info, args.data)
    res = tu.unlearn(model, samples, forget=forget, retain=retain, scores=scores,
                     target=adapter.target_factory(info), example_inputs=example, sigma=args.sigma,
                     delta=args.delta, retain_delta=args.retain_delta, retain_tolerance=args.retain_tolerance,
                     n_per_target=args.samples, mode=args.mode, coupled=args.coupled, align=args.align,
                     ignored_layers=adapter.ignored_layers(model, info), num_targets=len(info.class_names),
                     output_transform=adapter.output_transform, device=device)
    if res is None:
        return 0  # another rank plans, prunes and writes
    print(res.plan.dry_run())
    if args.dry_run:
        return 0
    report = dict(res.report)
    report.update(arch=args.arch, forget=[info.class_names[t] for t in forget],
                  retain=[info.class_names[t] for t in res.report["settings"]["retain"]], seed=args.seed,
                  macs={"before": count_macs(model, example), "after": count_macs(res.model, example)},
                  versions=versions(adapter.library), total_s=round(time.perf_counter() - t0, 3))
    # a pruned checkpoint carries its own history: the new pruning replays after it
    info.extra["history"] = [list(h) for h in info.extra.get("history") or []] + res.plan.history
    out.mkdir(parents=True, exist_ok=True)
    if args.eval:
        before = adapter.evaluate(model, info, args.data)
        after = adapter.evaluate(res.model, info, args.data)
        report["metrics"] = {"name": adapter.metric_name, "before": before, "after": after}
    adapter.save(res.model, info, out / "model.pt")
    res.plan.save(out / "plan.json")
    res.graph.save(out / "graph.json")
    res.graph.draw(out / "graph.png", title=f"{args.arch}: forget {', '.join(args.forget)}")
    if args.onnx:
        from tpunlearn.export import compare_latency, to_onnx

        diff = to_onnx(res.model, out / "model.onnx", example_inputs=example, output_transform=adapter.output_transform)
        to_onnx(model, out / ".original.onnx", example_inputs=example, output_transform=adapter.output_transform)
        before, after = compare_latency([out / ".original.onnx", out / "model.onnx"], example)
        report["onnx"] = {"path": str(out / "model.onnx"), "max_abs_diff": diff,
                          "latency_ms": {"before": before, "after": after}}
        (out / ".original.onnx").unlink()
    report["sha256"] = {"input_weights": sha256(info.weights) if info.weights else None,
                        "output_weights": sha256(out / "model.pt"), "data": data_sha256(args.data),
                        "graph_cache": sha256(args.graph) if args.graph else None}
    write_json(out / "report.json", report)
    _summary(report)
    print(f"wrote {out}/ (model.pt, plan.json, graph.json, graph.png, report.json{', model.onnx' if args.onnx else ''})")
    return 0


def data_sha256(spec: str | None) -> str:
    """sha256 of what a data spec reads: a file, every file of a folder, or the bundled scans."""
    import hashlib

    from tpunlearn.io import sha256

    if spec and Path(spec).is_file():
        return sha256(spec)
    if spec and Path(spec).is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in Path(spec).rglob("*") if p.is_file()):
            digest.update(f"{f.relative_to(spec)} {sha256(f)}\n".encode())
        return digest.hexdigest()
    from sklearn.datasets import load_digits  # DigitScenes and the bundled pictures derive from package data

    return hashlib.sha256(load_digits().data.tobytes()).hexdigest()


def _cmd_graph(args: argparse.Namespace) -> int:
    with _ranks(args) as device:
        return _graph(args, device)


def _graph(args: argparse.Namespace, device: Any) -> int:
    """``tpunlearn graph`` on ``device``; under torchrun every rank scores, rank 0 alone writes."""
    from tpunlearn.api import score_targets
    from tpunlearn.cache import save_cache
    from tpunlearn.distributed import is_main, to_device, world
    from tpunlearn.io import sha256

    import torch

    torch.manual_seed(args.seed)
    adapter, model, info = _build(args)
    model.to(device)
    _settings(args, adapter)
    t0 = time.perf_counter()
    scores = score_targets(model, adapter.samples(model, info, args.data), target=adapter.target_factory(info),
                           example_inputs=to_device(adapter.example_inputs(info), device), sigma=args.sigma,
                           n_per_target=args.samples, ignored_layers=adapter.ignored_layers(model, info),
                           num_targets=len(info.class_names), output_transform=adapter.output_transform,
                           device=device)
    seconds = time.perf_counter() - t0
    if not is_main():
        return 0
    meta = {"arch": args.arch, "weights_sha256": sha256(info.weights) if info.weights else None,
            "data": args.data, "data_sha256": data_sha256(args.data), "sigma": args.sigma,
            "n_per_target": args.samples, "seed": args.seed, "seconds": round(seconds, 3),
            "device": str(device), "ranks": world()[1],
            "targets": [info.class_names[t] for t in sorted(scores.targets)],
            "stability": {info.class_names[t]: round(v, 4) for t, v in scores.stability(0.05).items()}}
    save_cache(args.out, scores, model, meta)
    print(f"scored {len(scores.targets)} targets over {len(scores.layers)} layers in {seconds:.1f}s; wrote {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tpunlearn.export import to_onnx

    adapter, model, info = _build(args)
    example = adapter.example_inputs(info)
    diff = to_onnx(model, args.onnx, example_inputs=example, output_transform=adapter.output_transform)
    print(f"wrote {args.onnx}; max |onnxruntime - torch| = {diff:.2e}")
    return 0


def _check_out(out: Path, weights: str | None, force: bool) -> None:
    if weights and out.exists() and Path(weights).resolve().parent == out.resolve():
        raise UsageError(f"--out {out} holds the input checkpoint; choose another output folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} is not empty; pass --force to write into it")


def _summary(report: dict[str, Any]) -> None:
    params = report["params"]
    print(f"removed {report['removed_channels']} channels; params {params['before']:,} -> {params['after']:,}")
    metrics = report.get("metrics")
    if metrics:
        print(f"{'target':>10s} {metrics['name'] + ' before':>16s} {'after':>8s}")
        for name, before in metrics["before"].items():
            mark = "  <- forgotten" if name in report["forget"] else ""
            print(f"{name:>10s} {before:16.3f} {metrics['after'][name]:8.3f}{mark}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from tpunlearn.distributed import resolve_device
    from tpunlearn.io import write_json

    device = resolve_device(args.device)
    adapter, model, info = _build(args)
    metrics = adapter.evaluate(model.to(device), info, args.data)
    for name, value in metrics.items():
        print(f"{name:>10s} {adapter.metric_name} {value:.4f}")
    if args.json:
        write_json(args.json, {"arch": args.arch, "name": adapter.metric_name, "metrics": metrics})
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    from tpunlearn import zoo

    for name in zoo.names():
        e = zoo.entry(name)
        state = "ready" if zoo.weights_path(name).is_file() else "not trained (scripts/train_zoo.py)"
        print(f"{name:24s} {e.family:6s} {e.task:12s} {state:10s} {e.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
