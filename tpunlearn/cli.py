"""The ``tpunlearn`` command line (argparse; not ultralytics' ``yolo TASK MODE key=value``).

Heavy libraries load only inside the command that needs them, so ``tpunlearn --help``
answers at once. Every error tpunlearn detects prints one line and exits non-zero.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tpunlearn.errors import DataError, TpunlearnError, TrustedCheckpointWarning, UsageError, listed
from tpunlearn.settings import CLI_FLAGS, COUPLED, DEFAULTS, MODES, UnlearnSettings, check_device

DEBUG_ENV = "TPUNLEARN_DEBUG"  # set to 1 to see the traceback of an unexpected error


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one ``tpunlearn: error: ...`` line and a non-zero exit.

    Exit codes: 0 done, 2 usage error, 1 any other error, 130 interrupted.
    """
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", TrustedCheckpointWarning)
        warnings.showwarning = _show_warning
        try:
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            if not getattr(args, "data_parallel", False) and _launched_rank() != 0:
                return 0  # under torchrun only graph and prune share work; rank 0 alone runs the rest
            args.argv = argv
            return int(args.func(args) or 0)
        except TpunlearnError as exc:
            return _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            return _fail("interrupted; no output was written", 130)
        except OSError as exc:  # a folder we may not write, a disk that is full, ...
            where = f": {exc.filename}" if exc.filename else ""
            return _fail(f"{exc.strerror or exc}{where}", 1)
        except Exception as exc:  # noqa: BLE001 - a bug: one line unless debugging
            if os.environ.get(DEBUG_ENV):
                raise
            line = next((text.strip() for text in str(exc).splitlines() if text.strip()), "")
            return _fail(f"unexpected {type(exc).__name__}{': ' + line[:200] if line else ''}; no output was "
                         f"written (set {DEBUG_ENV}=1 for the traceback, and please report it)", 1)


def _fail(message: str, code: int) -> int:
    print(f"tpunlearn: error: {message}", file=sys.stderr)
    return code


def _show_warning(message: Warning | str, category: type[Warning], *_args: Any, **_kwargs: Any) -> None:
    """tpunlearn's own warnings as one line; others as Python prints them."""
    if issubclass(category, TrustedCheckpointWarning):
        print(f"tpunlearn: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, *_args[:2]).rstrip(), file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse with tpunlearn's error style: one line, ``tpunlearn: error: ...``, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]  # argparse types it NoReturn; we raise too
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def _tolerance(text: str) -> float:
    """A count >= 0 or a fraction in (0, 1) (of the retained targets)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count >= 0 or a fraction in (0, 1), got {text!r}") from None
    if value < 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"must be a count >= 0 or a fraction in (0, 1), got {text}")
    return int(value) if value >= 1 or value == 0 else value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _path(text: str) -> str:
    """A file or folder argument: any non-empty string (an empty one would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a path")
    return text


def _names(text: str) -> list[str]:
    """``--names a,b,c``: comma-separated, none empty, none twice."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty class name in {text!r}; give names as a,b,c")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"class name(s) {', '.join(twice)} given twice")
    return names


def _channel_values(positive: bool):
    """``--mean`` / ``--std``: three comma-separated finite numbers (one per RGB channel), each > 0 for std."""
    import math

    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected 3 comma-separated numbers (R,G,B), got {text!r}") from None
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected 3 comma-separated finite numbers (R,G,B), got {text!r}")
        if positive and min(values) <= 0:
            raise argparse.ArgumentTypeError(f"each value must be > 0, got {text!r}")
        return values

    return parse


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


HELP = {  # the longer help texts, in plain words
    "sigma": "how many of the model's last prunable convolutions are scored and may lose channels (default {}, or "
             "the model family's); raise it when the target survives because its channels sit earlier",
    "delta": "the top fraction of each scored layer's channels that counts as carrying a target (default {}, or "
             "the family's); larger removes more and forgets harder, smaller removes less",
    "retain_tolerance": "how many retained targets may also use a channel before it is protected: a count, or a "
                        "fraction in (0, 1) of the retained targets (default {}, or the family's); 0 protects every "
                        "channel any retained target relies on, a few more let shared channels go when the strict "
                        "rule leaves the target",
    "mode": "physical removes the channels for real (a smaller, faster model); mask keeps the shapes and zeroes "
            "them (the paper's setting, for comparison); default {}",
    "coupled": "what to do with a flagged channel whose group (a residual add or a concatenation) reaches layers "
               "that were not scored (default {}): protect leaves it, prune removes the whole coupled channel "
               "everywhere, zero only zeroes the scored layers' filters",
    "seed": "seed of the sample order and every random choice; the same inputs and seed give the same plan and "
            "bit-identical weights (default 0)",
    "data": "data: the model's own when omitted. timm: digits[:N] (DigitScenes), an ImageFolder root "
            "(train/ and val/ of class folders), a tags CSV (file column plus one 0/1 column per class, optional "
            "split) or a CelebA folder (list_attr_celeba.txt). yolov5: digits[:N], an ultralytics dataset YAML "
            "(labels), or an image folder or image (a trained model's own detections label it). deeplabv3: "
            "digits[:N] or a VOC-style folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)",
}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tpunlearn", description="Target-level machine unlearning by structural pruning.")
    sub = p.add_subparsers(metavar="COMMAND")

    prune = sub.add_parser("prune", help="forget one or more targets and write a smaller model",
                           description="Score channels per target, balance the essential graphs (Eq. 4) and "
                                       "remove the channels that carry the forget targets and no other.")
    _model_args(prune)
    prune.add_argument("--forget", nargs="+", required=True, metavar="NAME", help="class names (or indices) to forget")
    prune.add_argument("--retain", nargs="+", metavar="NAME", help="targets to keep (default: every other class)")
    # The settings' flags default to None: the family's defaults, then the library's, fill them (see _settings).
    prune.add_argument("--sigma", type=_int_at_least(1), default=None,
                       help=HELP["sigma"].format(DEFAULTS.sigma))
    prune.add_argument("--delta", type=_fraction, default=None,
                       help=HELP["delta"].format(DEFAULTS.delta))
    prune.add_argument("--retain-delta", type=_fraction, default=None,
                       help="top fraction each retained target protects (default: --delta)")
    prune.add_argument("--retain-tolerance", type=_tolerance, default=None,
                       help=HELP["retain_tolerance"].format(DEFAULTS.retain_tolerance))
    prune.add_argument("--samples", type=_int_at_least(1), default=None,
                       help=f"instances scored per target (default {DEFAULTS.n_per_target})")
    prune.add_argument("--mode", choices=MODES, default=None, help=HELP["mode"].format(DEFAULTS.mode))
    prune.add_argument("--coupled", choices=COUPLED, default=None, help=HELP["coupled"].format(DEFAULTS.coupled))
    prune.add_argument("--out", type=_path, default="tpunlearn-out", help="output folder (default ./tpunlearn-out)")
    prune.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    prune.add_argument("--onnx", action="store_true", help="also export model.onnx with a parity check")
    prune.add_argument("--eval", action="store_true", help="evaluate every target before and after")
    prune.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    prune.add_argument("--graph", type=_path, metavar="CACHE", help="use the scores of `tpunlearn graph` (no scoring)")
    prune.add_argument("--align", type=_int_at_least(1), default=None, metavar="N",
                       help=f"keep pruned widths at multiples of N by removing a few more flagged-adjacent channels "
                            f"or keeping a few back (default {DEFAULTS.align}, which ONNX Runtime's CPU convolutions "
                            "need to stay fast, or the family's; 1 turns it off; report.json's removal says how many)")
    prune.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                       help="after pruning, refit the output layer's rows of the retained targets so their "
                            "scores match the original's on the scoring samples (forward passes, no training; "
                            "default: on for yolov5 and timm classifiers, off for DeepLab; the forget targets' "
                            "rows stay as pruned)")
    prune.add_argument("--repair-epochs", type=_int_at_least(0), default=0, metavar="N",
                       help="fine-tune the pruned model for N epochs on the retained targets (default 0: no "
                            "fine-tuning); with --auto, the repair budget: it repairs only where pruning and "
                            "calibration miss the goal")
    prune.add_argument("--repair-lr", type=_positive, default=None, metavar="LR",
                       help="repair learning rate (default: the family's measured one: 1e-3 for DeepLab, "
                            "1e-4 for yolov5 and timm)")
    prune.add_argument("--erase", nargs="?", const="", default=None, metavar="METHOD",
                       help="after pruning, erase what is left of the forget targets from the surviving channels "
                            "(distill, project, salun or features; no METHOD: the family's default, features for timm "
                            "classifiers, distill for the others; timm runs all four, DeepLab all but features, "
                            "yolov5 distill and project; report.json's erase says what changed)")
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
    prune.add_argument("--audit", action="store_true",
                       help="run the attacks and probes of `eval --mia` on the original and the unlearned model "
                            "(after repair), write report.json's audit and its report.html section, and for "
                            "classifiers inversion.png (the input that maximises the forget target's logit)")
    prune.add_argument("--reference", type=_path, metavar="PATH",
                       help="with --audit: a checkpoint of the model retrained without the forget targets (any the "
                            "family loads); the audit judges the unlearned model's gap to it (implies --audit)")
    prune.add_argument("--seed", type=int, default=0, help=HELP["seed"])
    _device_arg(prune)
    _verdict_args(prune)
    prune.set_defaults(func=_cmd_prune, data_parallel=True)

    graph = sub.add_parser("graph", help="score every target once and save the cache `prune --graph` reads")
    _model_args(graph)
    graph.add_argument("--out", type=_path, required=True, metavar="CACHE", help="cache file to write (JSON)")
    graph.add_argument("--sigma", type=_int_at_least(1), default=None,
                       help=f"last prunable convs to score (default {DEFAULTS.sigma}, or the model family's)")
    graph.add_argument("--samples", type=_int_at_least(1), default=None,
                       help=f"instances scored per target (default {DEFAULTS.n_per_target})")
    graph.add_argument("--seed", type=int, default=0, help=HELP["seed"])
    _device_arg(graph)
    graph.set_defaults(func=_cmd_graph, data_parallel=True)

    export = sub.add_parser("export", help="export a model to ONNX with a parity check")
    _model_args(export)
    export.add_argument("--onnx", type=_path, required=True, metavar="FILE", help="ONNX file to write")
    export.set_defaults(func=_cmd_export)

    ev = sub.add_parser("eval", help="per-target metrics of a model")
    _model_args(ev)
    ev.add_argument("--json", type=_path, help="also write the metrics to this JSON file")
    ev.add_argument("--mia", action="store_true",
                    help="also run the privacy checks of the --forget targets: classifiers, the entropy (SSD) and "
                         "confidence-SVM (SalUn's MIA-efficacy) membership attacks on their training samples "
                         "(members: retained training samples; non-members: test) and refitted linear and k-NN "
                         "probes on the penultimate features; segmentation and detection, the probes on features "
                         "pooled over the targets' mask pixels or boxes")
    ev.add_argument("--forget", nargs="+", metavar="NAME",
                    help="with --mia: the targets whose training samples to attack")
    _device_arg(ev)
    _conf_arg(ev)
    ev.set_defaults(func=_cmd_eval)

    zoo = sub.add_parser("zoo", help="list the bundled models")
    zoo.set_defaults(func=_cmd_zoo)
    return p


def _verdict_args(p: argparse.ArgumentParser) -> None:
    """``prune``'s verdict flags: the detection confidence, the two goals, and ``--strict``.

    The goals' defaults are ``--auto``'s bound and budget (one constant each, in settings).
    """
    from tpunlearn.settings import GOAL_DROP, GOAL_FORGET

    _conf_arg(p)
    p.add_argument("--goal-forget", type=_unit, default=GOAL_FORGET, metavar="F",
                   help="--eval's verdict is met only when every forget target's metric (recall, or IoU for "
                        f"segmentation) is at most F after (default {GOAL_FORGET})")
    p.add_argument("--goal-drop", type=_unit, default=GOAL_DROP, metavar="F",
                   help="... and no retained target's metric drops by more than F (default "
                        f"{GOAL_DROP})")
    p.add_argument("--strict", action="store_true",
                   help="with --eval: exit with status 3 when the verdict is not met (outputs are still written)")
    p.set_defaults(auto_bound=GOAL_FORGET, auto_budget=GOAL_DROP)  # --auto searches for the same goals


def _conf_arg(p: argparse.ArgumentParser) -> None:
    from tpunlearn.settings import DEFAULT_CONF

    p.add_argument("--conf", type=_unit, default=None, metavar="F",
                   help="detectors: the deployment confidence at which recall and precision are counted "
                        f"(box IoU 0.5; default {DEFAULT_CONF}, ultralytics' predict default)")


def _unit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _eval_kwargs(args: argparse.Namespace, info: Any) -> dict[str, Any]:
    """The keywords of ``adapter.evaluate``: ``conf`` for a detector; ``--conf`` elsewhere is refused."""
    if args.conf is None:
        return {}
    if info.task != "detection":
        raise UsageError(f"--conf is the confidence of a detector; {args.arch} is a {info.task} model: drop --conf")
    return {"conf": args.conf}


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help="architecture or zoo name (see `tpunlearn zoo`)")
    p.add_argument("--weights", type=_path, help="checkpoint to load (never modified)")
    p.add_argument("--data", type=_path, default=None,
                   help=HELP["data"])
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint that names code outside tpunlearn's allow-list of model classes "
                        "(full unpickling: it can run any code; only for files you trust)")
    p.add_argument("--num-classes", type=_int_at_least(1), default=None, metavar="N",
                   help="classes of the model's head, where the checkpoint does not say")
    p.add_argument("--imgsz", type=_int_at_least(1), default=None, metavar="S",
                   help="input size S x S, where the checkpoint does not say")
    p.add_argument("--names", type=_names, default=None, metavar="A,B,C",
                   help="the model's class names in output order, where neither checkpoint nor data says")
    p.add_argument("--mean", type=_channel_values(False), default=None, metavar="R,G,B",
                   help="timm classifiers: the per-channel mean the model was trained to expect (with --std; "
                        "default: the checkpoint's record, else timm's pretrained config); the pruned model.pt "
                        "records it")
    p.add_argument("--std", type=_channel_values(True), default=None, metavar="R,G,B",
                   help="timm classifiers: the per-channel std (each > 0) that goes with --mean")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", type=_device_text, metavar="DEVICE",
                   help="cpu, cuda or cuda:N (default cpu); under torchrun, cuda is each rank's own GPU")


def _device_text(text: str) -> str:
    try:
        return check_device(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    from tpunlearn.models import load_model

    options = {k: getattr(args, k, None) for k in ("num_classes", "imgsz")}
    options["class_names"] = getattr(args, "names", None)
    options.update(_normalisation(args))
    adapter, model, info = load_model(args.arch, args.weights, trust_checkpoint=args.trust_checkpoint,
                                      **{k: v for k, v in options.items() if v is not None})
    bind = getattr(adapter, "bind_data", None)  # class names and task from the user's data (timm)
    if callable(bind):
        info = bind(model, info, getattr(args, "data", None))
    return adapter, model, info


def _normalisation(args: argparse.Namespace) -> dict[str, list[float]]:
    """``--mean`` / ``--std`` as the timm adapter's ``mean`` / ``std`` build options (its data config);
    the other families normalise otherwise and refuse them before anything is built."""
    given: dict[str, list[float]] = {k: v for k in ("mean", "std") if (v := getattr(args, k, None)) is not None}
    if not given:
        return {}
    from tpunlearn.models import adapter_for

    family = adapter_for(args.arch).name
    if family != "timm":
        raise UsageError(f"--mean/--std set a timm classifier's input normalisation; {args.arch} is a {family} "
                         "model: drop them")
    return given


def _settings(args: argparse.Namespace, adapter: Any) -> UnlearnSettings:
    """The request's settings: the library's defaults, over them the family's (``adapter.defaults``),
    over those the flags the user gave (a flag left out is None)."""
    given = {name: getattr(args, flag.lstrip("-").replace("-", "_"), None) for name, flag in CLI_FLAGS.items()}
    return DEFAULTS.override(**{**adapter.defaults, **{k: v for k, v in given.items() if v is not None}})


def resolve_targets(names: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Class names (or indices) to indices, per model; unknown names list the valid ones."""
    out = []
    for name in names:
        if name in class_names:
            out.append(list(class_names).index(name))
        elif name.isdigit() and int(name) < len(class_names):
            out.append(int(name))
        else:
            raise UsageError(f"unknown target {name!r}; valid: {listed(class_names)}")
    return out


def _cmd_prune(args: argparse.Namespace) -> int:
    with _ranks(args) as device:
        return _prune(args, device)


@dataclasses.dataclass
class _PruneInputs:
    """What ``tpunlearn prune`` checked and built before any scoring: the family, the model (on the
    device), the targets, the reference model, the erase method, the example input and the out folder."""

    adapter: Any
    model: Any
    info: Any
    out: Path
    forget: list[int]
    retain: list[int] | None
    reference: Any
    erase_method: str | None
    example: Any


def _prune(args: argparse.Namespace, device: Any) -> int:
    """``tpunlearn prune`` on ``device``; under torchrun every rank scores, rank 0 alone does the rest."""
    from tpunlearn.distributed import is_main

    if not is_main() and args.graph:
        return 0  # cached scores: nothing to share
    run = _prune_inputs(args, device)
    t0 = time.perf_counter()
    scores, samples = _prune_samples(args, run)
    with _named_targets(run.info, args.data, run.forget, samples):
        res, auto = _request(args, run.adapter, run.model, run.info, samples, scores, run.forget, run.retain,
                             run.example, device)
    if res is None:
        return 0  # another rank plans, prunes and writes
    print(res.plan.dry_run())
    if args.dry_run:
        return 0
    stages = _after_pruning(args, run, res, auto)
    report = _prune_report(args, run, res, auto, stages, t0)
    # a pruned checkpoint carries its own history: the new pruning replays after it
    run.info.extra["history"] = [list(h) for h in run.info.extra.get("history") or []] + res.plan.history
    _write_outputs(args, run.out, run.adapter, run.model, run.info, res, run.example, report,
                   inversion=stages["inversion"])
    _announce_prune(args, run.out, report, stages, list(run.info.class_names))
    verdict = report.get("verdict")
    return 3 if args.strict and verdict is not None and not verdict["met"] else 0


def _prune_inputs(args: argparse.Namespace, device: Any) -> _PruneInputs:
    """The checks that fail before any work (options, the out folder, targets, the erase method) and the
    model on ``device``, in the order prune has always made them (the seed is set before the build)."""
    import torch

    from tpunlearn.distributed import is_main
    from tpunlearn.torchutils import to_device

    if args.strict and not args.eval:
        raise UsageError("--strict judges the verdict of --eval; add --eval")
    _check_reference(args)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if not args.dry_run and is_main():
        _check_out(out, args)
    adapter, model, info = _build(args)
    _eval_kwargs(args, info)  # a --conf the model cannot use fails before any work
    model.to(device)
    reference = _reference(args, info, device) if args.reference and not args.dry_run else None
    forget, retain = _targets(args, info)
    erase_method = _erase_method(args, adapter)  # a bad method or a family without the stage fails before any work
    example = to_device(adapter.example_inputs(info), device)
    return _PruneInputs(adapter, model, info, out, forget, retain, reference, erase_method, example)


def _prune_samples(args: argparse.Namespace, run: _PruneInputs) -> tuple[Any, Any]:
    """The cached scores of ``--graph`` (None without it) and the samples to score or calibrate on
    (None when cached scores need no calibration)."""
    from tpunlearn.io import sha256

    scores, samples = None, None
    if args.graph:
        from tpunlearn.cache import load_cache

        scores, _meta = load_cache(args.graph, run.model, sha256(run.info.weights) if run.info.weights else None)
    if not args.graph or _calibration(args, run.adapter, run.model, run.info) is not None:
        samples = run.adapter.samples(run.model, run.info, args.data)  # calibration runs on them after cached scores
    return scores, samples


def _after_pruning(args: argparse.Namespace, run: _PruneInputs, res: Any, auto: dict[str, Any] | None
                   ) -> dict[str, Any]:
    """The stages after the pruning itself: ``--erase``, ``--repair-epochs`` (or ``--auto``'s own repair)
    and ``--audit``; their report entries (None: the stage did not run) and the audit's inversion image."""
    adapter, model, info = run.adapter, run.model, run.info
    erased = None if run.erase_method is None else adapter.erase(
        res.model, info, args.data, run.forget, original=model, method=run.erase_method, plan=res.plan,
        seed=args.seed, progress=_progress())
    repaired = _repair(args, adapter, model, info, res, run.forget) if args.repair_epochs and auto is None else None
    if auto is not None:  # --auto repaired its choice itself, when repair was the stage that served
        repaired = auto.pop("repair", None)
    audited, inversion = (_audit(args, adapter, model, info, res.model, run.reference, run.forget) if args.audit
                          else (None, None))
    return {"erase": erased, "repair": repaired, "audit": audited, "inversion": inversion}


def _prune_report(args: argparse.Namespace, run: _PruneInputs, res: Any, auto: dict[str, Any] | None,
                  stages: dict[str, Any], t0: float) -> dict[str, Any]:
    """report.json: the request's report, then ``auto``, ``data`` and each stage that ran."""
    from tpunlearn.report import prune_report

    report = prune_report(res, run.model, run.example, args, run.info.class_names, run.adapter.library, t0)
    if auto is not None:
        report["auto"] = auto
        if "try" in report["outcome"]:  # the search ran: what is left to try is the rest
            report["outcome"]["try"] = [t for t in report["outcome"]["try"] if t != "--auto"]
    if "data_split" in run.info.extra:  # the user's data: its format, splits and how the validation split was made
        report["data"] = run.info.extra["data_split"]
    for key in ("erase", "repair", "audit"):
        if stages[key] is not None:
            report[key] = stages[key]
    return report


def _announce_prune(args: argparse.Namespace, out: Path, report: dict[str, Any], stages: dict[str, Any],
                    names: list[str]) -> None:
    """The lines prune prints after writing: the files, the audit's summary and the result's."""
    onnx = ", model.onnx" if args.onnx else ""
    metrics = ", metrics.png" if "metrics" in report else ""
    metrics += ", inversion.png" if stages["inversion"] else ""
    print(f"wrote {out}/ (model.pt, plan.json, graph.json, graph.png{metrics}, report.html, report.json{onnx})")
    if stages["erase"] is not None:
        print(_erase_line(stages["erase"], names))
    if stages["audit"] is not None:
        _audit_summary(stages["audit"])
    _summary(report)


def _erase_line(erased: dict[str, Any], names: list[str]) -> str:
    """What the erase stage did, in one line; a guard that stopped it early says why."""
    def name(t: int) -> str:
        return repr(names[t]) if t < len(names) else str(t)

    where = f" from {erased['trained_from']}" if "trained_from" in erased else ""
    line = (f"erase ({erased['method']}): {erased.get('steps', 0)} steps{where}, {erased['weights_touched']:,} "
            f"weights touched, {erased['seconds']:.1f} s")
    if "mean_gap_before" in erased:
        line += (f"; the forget target's whitened mean gap {erased['mean_gap_before']:.2f} -> "
                 f"{erased['mean_gap_after']:.2f}")
    guard = erased.get("guard") or {}
    if guard.get("stopped_at") is not None:
        line += (f"; stopped at step {guard['stopped_at']} (the weights of its last passing check kept): retained "
                 f"{name(guard['worst'])} fell {100 * guard['worst_fall']:.1f} points below the pruned model's "
                 f"agreement with the original (budget {100 * guard['budget']:g})")
    return line


def _calibration(args: argparse.Namespace, adapter: Any, model: Any, info: Any) -> Any:
    """The family's :class:`~tpunlearn.calibrate.Calibration` when ``--calibrate`` (or the family's
    default) asks for one; a family that cannot calibrate refuses an explicit ``--calibrate``."""
    given = getattr(args, "calibrate", None)
    wanted = adapter.calibrates if given is None else given
    if not wanted:
        return None
    spec = adapter.calibration(model, info)
    if spec is None and given:
        raise UsageError(f"the {adapter.name} adapter cannot calibrate {info.arch}; drop --calibrate")
    return spec


def _targets(args: argparse.Namespace, info: Any) -> tuple[list[int], list[int] | None]:
    """The ``--forget`` and ``--retain`` indices (None: retain every other target)."""
    forget = list(dict.fromkeys(resolve_targets(args.forget, info.class_names)))
    retain = list(dict.fromkeys(resolve_targets(args.retain, info.class_names))) if args.retain else None
    both = [info.class_names[t] for t in forget if retain and t in retain]
    if both:
        raise UsageError(f"target(s) {', '.join(both)} are in both --forget and --retain; drop them from one")
    return forget, retain


def _erase_method(args: argparse.Namespace, adapter: Any) -> str | None:
    """``--erase [METHOD]``: the method to run (None: no erase stage); unknown ones and families
    without the stage are one line."""
    if args.erase is None:
        return None
    from tpunlearn.erase import METHODS

    method = args.erase or adapter.erase_default
    if method not in METHODS:
        raise UsageError(f"unknown --erase method {method!r}; known: {', '.join(METHODS)}")
    if not getattr(adapter, "erases", False):
        raise UsageError(f"the {adapter.name} adapter has no erase stage; drop --erase")
    runs = adapter.erase_methods()
    if method not in runs:
        raise UsageError(f"the {adapter.name} adapter's erase stage runs {', '.join(runs)}, not {method!r}")
    return method


def _repair(args: argparse.Namespace, adapter: Any, model: Any, info: Any, res: Any,
            forget: list[int]) -> dict[str, Any]:
    """``--repair-epochs``: fine-tune the pruned model in place on data without the forget targets."""
    return adapter.repair(res.model, info, args.data, forget, original=model, epochs=args.repair_epochs,
                          lr=_repair_lr(args, adapter), plan=res.plan, seed=args.seed, progress=_progress())



def _repair_lr(args: argparse.Namespace, adapter: Any) -> float:
    """``--repair-lr``, else the family's measured repair learning rate (recorded for ``reproduce``)."""
    if args.repair_lr is None:
        args.repair_lr = float(adapter.repair_lr)
    return float(args.repair_lr)

def _check_reference(args: argparse.Namespace) -> None:
    """``--reference`` implies ``--audit`` and must name a file, checked before any work."""
    from tpunlearn.errors import WeightsError

    if args.reference is None:
        return
    args.audit = True
    if not Path(args.reference).is_file():
        raise WeightsError(f"--reference {args.reference}: no such checkpoint (give the retrained model's file)")


def _reference(args: argparse.Namespace, info: Any, device: Any) -> Any:
    """The retrained reference model, built as ``--arch`` with ``--reference`` as its weights; its
    classes must be the model's."""
    from tpunlearn.errors import WeightsError

    _adapter, ref, ref_info = _build(argparse.Namespace(**{**vars(args), "weights": args.reference}))
    if list(ref_info.class_names) != list(info.class_names):
        raise WeightsError(f"--reference {args.reference} has classes {listed(ref_info.class_names)}, the model "
                           f"{listed(info.class_names)}: give a reference retrained on the same classes")
    return ref.to(device)


def _audit(args: argparse.Namespace, adapter: Any, model: Any, info: Any, unlearned: Any, reference: Any,
           forget: list[int]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``--audit``: report.json's ``audit`` and, for classifiers, the inversion picture's tensors."""
    from tpunlearn.audit import CLASSIFIER_TASKS, audit, constant_logits, inversions
    from tpunlearn.io import sha256

    models = {"original": model, "unlearned": unlearned, **({"reference": reference} if reference is not None else {})}
    entry = audit(adapter, models, info, args.data, forget, seed=args.seed)
    entry["reference"] = ({"path": str(args.reference), "sha256": sha256(args.reference)}
                          if reference is not None else None)
    if info.task not in CLASSIFIER_TASKS:
        entry["inversion"] = None
        entry["not_run"]["inversion"] = f"the inversion picture maximises a classifier's logit; {info.task} has none"
        return entry, None
    bounds = _data_bounds(adapter, model, info, args.data)
    target = forget[0]
    t0 = time.perf_counter()
    pictures = inversions(models, target, info.input_size, bounds, seed=args.seed)
    constant = constant_logits(models, target, pictures)
    entry["inversion"] = {"file": "inversion.png", "target": info.class_names[target], "seed": args.seed,
                          "bounds": list(bounds) if bounds else None, "constant_logit": constant,
                          "seconds": round(time.perf_counter() - t0, 2)}
    return entry, {"pictures": pictures, "target": info.class_names[target], "bounds": bounds, "constant": constant}


def _data_bounds(adapter: Any, model: Any, info: Any, spec: str | None) -> tuple[float, float] | None:
    """The value range of the model's inputs, from one batch of its data (None when it has none)."""
    for images, *_ in adapter.samples(model, info, spec):
        return float(images.min()), float(images.max())
    return None


def _audit_summary(audited: dict[str, Any]) -> None:
    """The audit's table as printed lines: each check on each model, the gap, and the plain verdict."""
    from tpunlearn.audit import verdict

    for name, c in audited["checks"].items():
        def shown(v: Any, mia: bool = c["kind"] == "mia") -> str:
            return "-" if v is None else f"{100 * v:.1f} %" if mia else f"{v:.3f}"

        said = verdict(c) if c["within"] is not None else ""
        print(f"audit {name}: original {shown(c['original'])}, unlearned {shown(c['unlearned'])}, reference "
              f"{shown(c['reference'])} {said}".rstrip())
    for name, why in audited["not_run"].items():
        print(f"audit {name}: not run ({why})")
    print(audited["line"])


def _request(args: argparse.Namespace, adapter: Any, model: Any, info: Any, samples: Any, scores: Any,
             forget: list[int], retain: list[int] | None, example: Any,
             device: Any) -> tuple[Any, dict[str, Any] | None]:
    """One unlearning request: the given settings, or with ``--auto`` the searched ones.

    Under torchrun the result is None on every rank but 0 (they only score).
    """
    import tpunlearn as tu
    from tpunlearn.distributed import world

    common = dict(adapter.unlearn_kwargs(model, info, example), retain=retain, device=device,
                  settings=_settings(args, adapter), progress=_progress(),
                  calibrate=_calibration(args, adapter, model, info))
    if not args.auto:
        return tu.unlearn(model, samples, forget=forget, scores=scores, **common), None
    if scores is not None:
        raise UsageError("--auto scores the model for every sigma it tries; drop --graph")
    if world()[1] > 1:
        raise UsageError("--auto evaluates every setting it tries on one process; run it without torchrun")
    from tpunlearn.auto import DELTAS, SIGMAS, auto_unlearn

    judged: dict[str, Any] = {}  # what the validation evaluations say about themselves

    def evaluate(m: Any) -> dict[int, float]:
        result = adapter.validate(m, info, args.data, **_eval_kwargs(args, info))
        judged.update(validation_data=result.extra.get("split"), operating_point=result.operating_point or None)
        values = result.primary_values()
        return {info.class_names.index(k): v for k, v in values.items() if k in info.class_names}

    baseline = evaluate(model)
    unjudged = [info.class_names[t] for t in forget if t not in baseline]
    if unjudged:
        raise DataError(f"--auto judges forgetting on the validation split, and it holds no instance of "
                        f"{', '.join(unjudged)}; classes it holds: {listed([info.class_names[t] for t in baseline])}")
    space = adapter.auto_space

    def repair(res: Any) -> dict[str, Any]:
        return _repair(args, adapter, model, info, res, forget)

    found = auto_unlearn(model, samples, forget, evaluate, baseline=baseline, forget_bound=args.auto_bound,
                         retain_budget=args.auto_budget, sigmas=args.auto_sigmas or space.get("sigmas", SIGMAS),
                         deltas=args.auto_deltas or space.get("deltas", DELTAS),
                         repair=repair if args.repair_epochs else None, **common)
    _print_tried(found)
    return found.result, {**found.to_dict(), "bound": args.auto_bound, "budget": args.auto_budget,
                          "split": "validation", "metric": adapter.metric_name, "repair": found.repair,
                          "repair_budget_epochs": args.repair_epochs, **judged}


def _print_tried(found: Any) -> None:
    """One line per ``--auto`` request tried (stage, setting, result, seconds), the chosen one marked."""
    for row in found.tried:
        chosen = (row["stage"], row["sigma"], row["delta"]) == (found.stage, found.sigma, found.delta)
        mark = "  <- chosen" if chosen else ""
        print(f"auto: {row['stage']:9s} sigma {row['sigma']:2d} delta {row['delta']:.2f}: forget "
              f"{row['forget_metric']:.3f}, worst retained drop {row['worst_retained_drop']:.3f}, "
              f"{row['removed_channels']} channels, {row['seconds']:.1f} s{mark}")
    if not found.met:
        how = "" if "repair" in {r["stage"] for r in found.tried} else " (--repair-epochs N lets it repair too)"
        print(f"auto: no setting tried met the goal{how}; the closest is {found.stage}, sigma {found.sigma}, "
              f"delta {found.delta}", file=sys.stderr)


def _write_outputs(args: argparse.Namespace, out: Path, adapter: Any, model: Any, info: Any, res: Any,
                   example: Any, report: dict[str, Any], inversion: dict[str, Any] | None = None) -> None:
    """Write every output into a staging folder, then move them into ``out`` (report last).

    A run that fails or is interrupted here leaves ``out`` as it was: no half-written
    model.pt and no report claiming success.
    """
    from tpunlearn.io import staged_folder, write_json
    from tpunlearn.report import draw_graph, draw_metrics, metrics_entry, onnx_entry, output_hashes, write_html
    from tpunlearn.verdict import judge

    with staged_folder(out) as stage:
        if args.eval:
            kw = _eval_kwargs(args, info)
            report["metrics"] = metrics_entry(adapter.evaluate(model, info, args.data, **kw),
                                              adapter.evaluate(res.model, info, args.data, **kw), report["forget"])
            report["verdict"] = judge(report["metrics"], report["removed_channels"], report["params"],
                                      report["macs"], args.goal_forget, args.goal_drop,
                                      report.get("outcome")).to_dict()
        adapter.save(res.model, info, stage / "model.pt")
        res.plan.save(stage / "plan.json")
        res.graph.save(stage / "graph.json")
        drawn = draw_graph(res.graph, stage / "graph.png", plan=res.plan,
                           title=f"{args.arch}: forget {', '.join(args.forget)}")
        report["pictures"] = {"graph.png": {"removed": drawn["removed"], "caption": drawn["caption"]}}
        if report.get("metrics"):
            charted = draw_metrics(report["metrics"], stage / "metrics.png", report["forget"])
            report["pictures"]["metrics.png"] = {"caption": charted["caption"], "worst": charted["worst"]}
        if inversion:
            from tpunlearn.report import draw_inversion

            drawn_inv = draw_inversion(inversion["pictures"], stage / "inversion.png", inversion["target"],
                                       inversion["bounds"], constant=inversion["constant"])
            report["audit"]["inversion"] = {**report["audit"]["inversion"], "caption": drawn_inv["caption"]}
            report["pictures"]["inversion.png"] = {"caption": drawn_inv["caption"]}
        if args.onnx:
            from tpunlearn.export import compare_latency, to_onnx

            diff = to_onnx(res.model, stage / "model.onnx", example_inputs=example,
                           output_transform=adapter.output_transform, metadata=adapter.onnx_metadata(res.model, info))
            original = stage / ".original.onnx"
            to_onnx(model, original, example_inputs=example, output_transform=adapter.output_transform)
            before, after = compare_latency([original, stage / "model.onnx"], example)
            original.unlink()
            report["onnx"] = onnx_entry(out / "model.onnx", diff, (before, after))
        report["sha256"] = output_hashes(info.weights, stage / "model.pt", args.data, args.graph)
        write_html(report, stage)
        write_json(stage / "report.json", report)


@contextlib.contextmanager
def _named_targets(info: Any, spec: str | None, forget: Sequence[int] = (), samples: Any = None) -> Iterator[None]:
    """Turn the core's "no sample holds target(s) [3]" into class names, the classes the data
    holds (when the samples can say: ``samples.classes_found()``) and a fix."""
    from tpunlearn.errors import DataError, TargetNotInDataError

    try:
        yield
    except TargetNotInDataError as exc:
        names = ", ".join(repr(info.class_names[t]) for t in exc.targets)
        where = f"--data {spec}" if spec else "the model's default data"
        retained = [repr(info.class_names[t]) for t in exc.targets if t not in forget]
        hint = f" (or leave {', '.join(retained)} out of --retain)" if retained else ""
        held = ([info.class_names[t] for t in exc.found] or list(info.extra.get("data_present") or [])
                or _classes_found(samples))
        holds = f"; its labels hold {listed(held, most=40)}" if held else ""
        raise DataError(f"no sample in {where} holds target(s) {names}{holds}: cannot score them; pass --data "
                        f"with instances of them{hint}") from None


def _classes_found(samples: Any) -> list[str]:
    """The class names a data reader says its labels hold (``samples.classes_found()``), else none."""
    found = getattr(samples, "classes_found", None)
    return list(found() or []) if callable(found) else []


def _progress() -> bool:
    """Progress bars only on a terminal (a log file gets the one-line results)."""
    return sys.stderr.isatty()


def _cmd_graph(args: argparse.Namespace) -> int:
    with _ranks(args) as device:
        return _graph(args, device)


def _graph(args: argparse.Namespace, device: Any) -> int:
    """``tpunlearn graph`` on ``device``; under torchrun every rank scores, rank 0 alone writes."""
    import torch

    from tpunlearn.api import score_targets
    from tpunlearn.cache import save_cache
    from tpunlearn.distributed import is_main, world
    from tpunlearn.io import sha256
    from tpunlearn.report import data_sha256
    from tpunlearn.torchutils import to_device

    torch.manual_seed(args.seed)
    _check_output_file("--out", args.out, args)
    adapter, model, info = _build(args)
    model.to(device)
    settings = _settings(args, adapter)
    t0 = time.perf_counter()
    with _named_targets(info, args.data):
        scores = score_targets(model, adapter.samples(model, info, args.data), target=adapter.target_factory(info),
                               example_inputs=to_device(adapter.example_inputs(info), device), settings=settings,
                               ignored_layers=adapter.ignored_layers(model, info), num_targets=len(info.class_names),
                               output_transform=adapter.output_transform, progress=_progress(), device=device)
    seconds = time.perf_counter() - t0
    if not is_main():
        return 0
    meta = {"arch": args.arch, "weights_sha256": sha256(info.weights) if info.weights else None,
            "data": args.data, "data_sha256": data_sha256(args.data), "sigma": settings.sigma,
            "n_per_target": settings.n_per_target, "seed": args.seed, "seconds": round(seconds, 3),
            "device": str(device), "ranks": world()[1],
            "targets": [info.class_names[t] for t in sorted(scores.targets)],
            "stability": {info.class_names[t]: round(v, 4) for t, v in scores.stability(0.05).items()}}
    save_cache(args.out, scores, model, meta)
    print(f"scored {len(scores.targets)} targets over {len(scores.layers)} layers in {seconds:.1f}s; wrote {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tpunlearn.export import to_onnx

    _check_output_file("--onnx", args.onnx, args)
    adapter, model, info = _build(args)
    example = adapter.example_inputs(info)
    diff = to_onnx(model, args.onnx, example_inputs=example, output_transform=adapter.output_transform,
                   metadata=adapter.onnx_metadata(model, info))
    print(f"wrote {args.onnx}; max |onnxruntime - torch| = {diff:.2e}")
    return 0


def _inputs(args: argparse.Namespace) -> dict[str, str]:
    """The user's input files and folders, by what they are."""
    named = {"the input checkpoint": args.weights, "the graph cache": getattr(args, "graph", None),
             "the data": args.data, "the reference checkpoint": getattr(args, "reference", None)}
    return {what: path for what, path in named.items() if path and Path(path).exists()}


def _check_out(out: Path, args: argparse.Namespace) -> None:
    """Refuse an output folder that holds an input, is a file, or is not empty (without --force)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose a folder")
    if out.exists():
        folders = {out.absolute(), out.resolve()}
        for what, path in _inputs(args).items():
            for p in {Path(path).absolute(), Path(path).resolve()}:  # the path given, and the file it links to
                if p in folders or p.parent in folders:
                    raise UsageError(f"--out {out} holds {what} ({path}); choose another output folder")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {out} is not empty; pass --force to write into it, or choose another folder")


def _check_output_file(flag: str, path: str, args: argparse.Namespace) -> None:
    """Refuse an output file that is one of the inputs, or a folder."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    for what, given in _inputs(args).items():
        if target.exists() and Path(given).is_file() and target.resolve() == Path(given).resolve():
            raise UsageError(f"{flag} {path} is {what}; choose another file (inputs are never overwritten)")


def _summary(report: dict[str, Any]) -> None:
    """The run's result: channels and params, with --eval the per-target table, warnings on stderr, and
    the verdict line last."""
    from tpunlearn.verdict import nothing_removed_line

    params = report["params"]
    unchanged = " (nothing removed: the model is unchanged)" if report["removed_channels"] == 0 else ""
    print(f"removed {report['removed_channels']} channels; params {params['before']:,} -> {params['after']:,}"
          + unchanged)
    metrics, verdict = report.get("metrics"), report.get("verdict")
    if metrics:
        for line in metrics_table(metrics["before"], metrics["after"], metrics["forgotten"]):
            print(line)
        for line in _metrics_notes(metrics):
            print(line)
    warnings_ = verdict["warnings"] if verdict else []
    if not verdict and report["removed_channels"] == 0:
        warnings_ = [nothing_removed_line(report.get("outcome"))]
    for warning in warnings_:
        print(f"tpunlearn: warning: {warning}", file=sys.stderr)
    if verdict:
        sys.stderr.flush()
        print(verdict["line"])


def metrics_table(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]] | None,
                  forgotten: Sequence[str] = ()) -> list[str]:
    """Rows of every per-target metric (``before -> after`` when ``after`` is given), forgotten rows
    marked, and a ``retained mean`` row that leaves the forgotten targets out."""
    from tpunlearn.evaluate import METRIC_ORDER

    keys = [k for k in METRIC_ORDER if any(k in m for m in before.values())]
    width = 14 if after is not None else 9
    name_w = max([13 if forgotten else 6, *(len(n) for n in before)])
    lines = [f"{'target':<{name_w}s} " + " ".join(f"{k:>{width}s}" for k in keys) + f" {'n':>6s}"]

    def cell(key: str, b: float | None, a: float | None) -> str:
        text = "" if b is None else f"{b:.3f}" if after is None else f"{b:.3f} -> {'-' if a is None else f'{a:.3f}'}"
        return f"{text:>{width}s}"

    for name, row in before.items():
        arow = (after or {}).get(name, {})
        mark = "  forgotten" if name in forgotten else ""
        lines.append(f"{name:<{name_w}s} " + " ".join(cell(k, row.get(k), arow.get(k)) for k in keys)
                     + f" {int(row.get('instances', 0)):>6d}{mark}")
    kept = [n for n in before if n not in forgotten]
    if forgotten and kept:
        def mean(table: dict[str, dict[str, float]], key: str) -> float | None:
            values = [table[n][key] for n in kept if n in table and key in table[n]]
            return sum(values) / len(values) if values else None
        lines.append(f"{'retained mean':<{name_w}s} " + " ".join(
            cell(k, mean(before, k), mean(after, k) if after is not None else None) for k in keys))
    return lines


def _metrics_notes(metrics: dict[str, Any]) -> list[str]:
    """The lines under the table: the operating point, the worst retained target, the all-class summary,
    where the forgotten classes' pixels go."""
    out = [f"({metrics['primary']} at {_operating_point(metrics['operating_point'])})"]
    worst = (metrics.get("retained") or {}).get("worst")
    if worst:
        out.append(f"worst retained: {worst['target']} ({metrics['primary']} {worst['before']:.3f} -> "
                   f"{worst['after']:.3f}, drop {worst['drop']:.3f})")
    b, a = metrics["summary"]["before"], metrics["summary"]["after"]
    if b:
        out.append("all classes, forgotten included: " + ", ".join(
            f"{k} {b[k]:.3f} -> {a.get(k, float('nan')):.3f}" for k in b))
    for name, shares in (metrics.get("pixels_to") or {}).items():
        out.append(f"pixels of {name} now predicted as: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items()))
    return out


def _operating_point(point: dict[str, Any]) -> str:
    if "conf" in point:
        return f"confidence {point['conf']:g}, box IoU {point['iou']:g}"
    return str(point.get("rule", point))


def _cmd_eval(args: argparse.Namespace) -> int:
    from tpunlearn.distributed import resolve_device
    from tpunlearn.io import write_json

    if args.forget and not args.mia:
        raise UsageError("--forget on eval names the targets of --mia; add --mia")
    if args.mia and not args.forget:
        raise UsageError("--mia needs --forget NAME: the target whose training samples to attack")
    if args.json:
        _check_output_file("--json", args.json, args)
    device = resolve_device(args.device)
    adapter, model, info = _build(args)
    evaluation = adapter.evaluate(model.to(device), info, args.data, **_eval_kwargs(args, info))
    for line in metrics_table(evaluation.per_target, None):
        print(line)
    print(f"({evaluation.primary} at {_operating_point(evaluation.operating_point)}"
          + "".join(f"; {k} {v:.3f}" for k, v in evaluation.summary.items()) + ")")
    result: dict[str, Any] = {"arch": args.arch, "name": evaluation.primary, "metrics": evaluation.to_dict()}
    if "data_split" in info.extra:
        result["data"] = info.extra["data_split"]
    if args.mia:
        result.update(_eval_privacy(args, adapter, model, info))
    if args.json:
        write_json(args.json, result)
    return 0


def _eval_privacy(args: argparse.Namespace, adapter: Any, model: Any, info: Any) -> dict[str, Any]:
    """``eval --mia``: every attack and probe that applies to the family, printed, and for the JSON
    ``privacy`` (each check's result, what did not run and why) and, for classifiers, ``mia`` (the
    entropy attack, as before)."""
    from tpunlearn.audit import check_lines, privacy_checks

    forget = list(dict.fromkeys(resolve_targets(args.forget, info.class_names)))
    names = [info.class_names[t] for t in forget]
    with _named_targets(info, args.data, forget):
        results, not_run = privacy_checks(adapter, model, info, args.data, forget, seed=0)
    for line in check_lines(results, not_run):
        print(line)
    out: dict[str, Any] = {"privacy": {"forget": names, "checks": {k: r.to_dict() for k, r in results.items()},
                                       "not_run": not_run}}
    entropy = results.get("entropy_mia")
    if entropy is not None:
        out["mia"] = {"forget": names, "score": entropy.value, **entropy.detail, "n_forget": entropy.n["forget"],
                      "n_retain": entropy.n["retain"], "n_test": entropy.n["test"]}
    return out


def _cmd_zoo(args: argparse.Namespace) -> int:
    from tpunlearn import zoo

    for name in zoo.names():
        e = zoo.entry(name)
        state = "ready" if zoo.weights_path(name).is_file() else "not trained (scripts/train_zoo.py)"
        print(f"{name:24s} {e.family:6s} {e.task:12s} {state:10s} {e.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
