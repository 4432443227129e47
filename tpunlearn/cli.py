"""The ``tpunlearn`` command line (argparse; not ultralytics' ``yolo TASK MODE key=value``).

Heavy libraries load only inside the command that needs them, so ``tpunlearn --help``
answers at once. Every error tpunlearn detects prints one line and exits non-zero.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tpunlearn.errors import TpunlearnError, UsageError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
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


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
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
    prune.add_argument("--repair-epochs", type=_int_at_least(0), default=0, metavar="N",
                       help="fine-tune the pruned model for N epochs on data without the forget targets "
                            "(default 0: no fine-tuning)")
    prune.add_argument("--repair-lr", type=_positive, default=1e-4, metavar="LR", help="repair learning rate (default 1e-4)")
    prune.add_argument("--auto", action="store_true",
                       help="search the smallest sigma, then delta, that brings every forget target under "
                            "--auto-bound with no retained target losing more than --auto-budget, on the "
                            "validation split (ignores --sigma and --delta)")
    prune.add_argument("--auto-bound", type=_fraction, default=0.02, metavar="F",
                       help="--auto: forget metric to reach, at most (default 0.02)")
    prune.add_argument("--auto-budget", type=_fraction, default=0.02, metavar="F",
                       help="--auto: largest drop allowed for any retained target (default 0.02)")
    prune.add_argument("--auto-sigmas", type=_int_at_least(1), nargs="+", default=None, metavar="N",
                       help="--auto: the sigmas to try, smallest first (default 1 2 4 8)")
    prune.add_argument("--auto-deltas", type=_fraction, nargs="+", default=None, metavar="F",
                       help="--auto: the deltas to try, smallest first (default 0.02 0.05 0.1 0.2 0.3)")
    prune.add_argument("--seed", type=int, default=0)
    prune.set_defaults(func=_cmd_prune)

    graph = sub.add_parser("graph", help="score every target once and save the cache `prune --graph` reads")
    _model_args(graph)
    graph.add_argument("--out", required=True, metavar="CACHE", help="cache file to write (JSON)")
    graph.add_argument("--sigma", type=_int_at_least(1), default=None,
                       help="last prunable convs to score (default 4, or the model family's)")
    graph.add_argument("--samples", type=_int_at_least(1), default=32, help="instances scored per target")
    graph.add_argument("--seed", type=int, default=0)
    graph.set_defaults(func=_cmd_graph)

    export = sub.add_parser("export", help="export a model to ONNX with a parity check")
    _model_args(export)
    export.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write")
    export.set_defaults(func=_cmd_export)

    ev = sub.add_parser("eval", help="per-target metrics of a model")
    _model_args(ev)
    ev.add_argument("--json", help="also write the metrics to this JSON file")
    ev.add_argument("--mia", action="store_true",
                    help="classifiers: also run the entropy membership-inference attack on the --forget "
                         "targets' training samples (members: retained training samples; non-members: test)")
    ev.add_argument("--forget", nargs="+", metavar="NAME", help="with --mia: the targets whose training samples to attack")
    ev.set_defaults(func=_cmd_eval)

    zoo = sub.add_parser("zoo", help="list the bundled models")
    zoo.set_defaults(func=_cmd_zoo)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help="architecture or zoo name (see `tpunlearn zoo`)")
    p.add_argument("--weights", help="checkpoint to load (never modified)")
    p.add_argument("--data", default=None, help="data spec (default: the model's own; `digits` = DigitScenes)")


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
    import torch

    from tpunlearn.io import sha256, write_json
    from tpunlearn.report import count_macs, versions

    torch.manual_seed(args.seed)
    out = Path(args.out)
    if not args.dry_run:
        _check_out(out, args.weights, args.force)
    adapter, model, info = _build(args)
    _settings(args, adapter)
    forget = list(dict.fromkeys(resolve_targets(args.forget, info.class_names)))
    retain = list(dict.fromkeys(resolve_targets(args.retain, info.class_names))) if args.retain else None
    both = [info.class_names[t] for t in forget if retain and t in retain]
    if both:
        raise UsageError(f"target(s) {', '.join(both)} are in both --forget and --retain")
    example = adapter.example_inputs(info)
    t0 = time.perf_counter()
    scores, samples = None, None
    if args.graph:
        from tpunlearn.cache import load_cache

        scores, _meta = load_cache(args.graph, model, sha256(info.weights) if info.weights else None)
    else:
        samples = adapter.samples(model, info, args.data)
    res, auto = _request(args, adapter, model, info, samples, scores, forget, retain)
    print(res.plan.dry_run())
    if args.dry_run:
        return 0
    report = dict(res.report)
    if auto is not None:
        report["auto"] = auto
    if args.repair_epochs:
        from tpunlearn.repair import repair

        report["repair"] = repair(res.model, adapter.repair_data(res.model, info, args.data, forget),
                                  adapter.repair_loss(info), epochs=args.repair_epochs, lr=args.repair_lr,
                                  plan=res.plan, seed=args.seed)
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


def _request(args: argparse.Namespace, adapter: Any, model: Any, info: Any, samples: Any, scores: Any,
             forget: list[int], retain: list[int] | None) -> tuple[Any, dict[str, Any] | None]:
    """One unlearning request: the given settings, or with ``--auto`` the searched ones."""
    import tpunlearn as tu

    common = dict(retain=retain, target=adapter.target_factory(info), example_inputs=adapter.example_inputs(info),
                  retain_delta=args.retain_delta, retain_tolerance=args.retain_tolerance, n_per_target=args.samples,
                  mode=args.mode, coupled=args.coupled, align=args.align,
                  ignored_layers=adapter.ignored_layers(model, info), num_targets=len(info.class_names),
                  output_transform=adapter.output_transform)
    if not args.auto:
        return tu.unlearn(model, samples, forget=forget, scores=scores, sigma=args.sigma, delta=args.delta,
                          **common), None
    if scores is not None:
        raise UsageError("--auto scores the model for every sigma it tries; drop --graph")
    from tpunlearn.auto import DELTAS, SIGMAS, auto_unlearn

    def evaluate(m: Any) -> dict[int, float]:
        return {info.class_names.index(k): v for k, v in adapter.validate(m, info, args.data).items()
                if k in info.class_names}

    found = auto_unlearn(model, samples, forget, evaluate, forget_bound=args.auto_bound,
                         retain_budget=args.auto_budget, sigmas=args.auto_sigmas or SIGMAS,
                         deltas=args.auto_deltas or DELTAS, **common)
    for row in found.tried:
        mark = "  <- chosen" if (row["sigma"], row["delta"]) == (found.sigma, found.delta) else ""
        print(f"auto: sigma {row['sigma']:2d} delta {row['delta']:.2f}: forget {row['forget_metric']:.3f}, worst "
              f"retained drop {row['worst_retained_drop']:.3f}, {row['removed_channels']} channels{mark}")
    if not found.met:
        print(f"auto: no setting tried met the goal; the closest is sigma {found.sigma}, delta {found.delta}",
              file=sys.stderr)
    args.sigma, args.delta = found.sigma, found.delta
    return found.result, {**found.to_dict(), "bound": args.auto_bound, "budget": args.auto_budget,
                          "split": "validation"}


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
    from tpunlearn.api import score_targets
    from tpunlearn.cache import save_cache
    from tpunlearn.io import sha256

    import torch

    torch.manual_seed(args.seed)
    adapter, model, info = _build(args)
    _settings(args, adapter)
    t0 = time.perf_counter()
    scores = score_targets(model, adapter.samples(model, info, args.data), target=adapter.target_factory(info),
                           example_inputs=adapter.example_inputs(info), sigma=args.sigma, n_per_target=args.samples,
                           ignored_layers=adapter.ignored_layers(model, info), num_targets=len(info.class_names),
                           output_transform=adapter.output_transform)
    seconds = time.perf_counter() - t0
    meta = {"arch": args.arch, "weights_sha256": sha256(info.weights) if info.weights else None,
            "data": args.data, "data_sha256": data_sha256(args.data), "sigma": args.sigma,
            "n_per_target": args.samples, "seed": args.seed, "seconds": round(seconds, 3),
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
    from tpunlearn.io import write_json

    if args.forget and not args.mia:
        raise UsageError("--forget on eval names the targets of --mia; add --mia")
    if args.mia and not args.forget:
        raise UsageError("--mia needs --forget NAME: the target whose training samples to attack")
    adapter, model, info = _build(args)
    metrics = adapter.evaluate(model, info, args.data)
    for name, value in metrics.items():
        print(f"{name:>10s} {adapter.metric_name} {value:.4f}")
    result: dict[str, Any] = {"arch": args.arch, "name": adapter.metric_name, "metrics": metrics}
    if args.mia:
        from tpunlearn.privacy import mia_score

        forget = list(dict.fromkeys(resolve_targets(args.forget, info.class_names)))
        mia = mia_score(model, *adapter.mia_data(model, info, args.data, forget), seed=0)
        result["mia"] = {"forget": [info.class_names[t] for t in forget], **mia.to_dict()}
        print(f"MIA: {100 * mia.score:.1f} % of the forget targets' {mia.n_forget} training samples look like "
              f"members (retained members {100 * mia.retain_member_rate:.1f} %, test {100 * mia.test_member_rate:.1f} %)")
    if args.json:
        write_json(args.json, result)
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
