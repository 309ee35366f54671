"""`python -m engine train`: TF Hub make_image_classifier's flags, generated from TrainConfig, so the CLI, the app
and the trainer share one set of names, defaults, bounds and help texts."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, get_args, get_origin, get_type_hints

from engine.cli.progress import ConsoleProgress
from engine.config import runfiles
from engine.config.training import ConfigError, TrainConfig, check_option, option_bounds
from engine.data.dataset import DatasetError
from engine.features.backbones import BackboneError
from engine.features.ray_embed import DistributedError


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "y", "on"):
        return True
    if value in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _base_type(hint: Any) -> Any:
    """int | None -> int; list[str] -> list."""
    if get_origin(hint) in (types.UnionType, typing.Union):
        hint = next(a for a in get_args(hint) if a is not type(None))
    return get_origin(hint) or hint


def _checked(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type= for a TrainConfig flag: parse the text, then refuse a value TrainConfig would refuse, while
    argparse still parses the command line (exit 2, usage shown, before any engine module loads)."""

    def convert(text: str) -> Any:
        value = parse(text)  # a ValueError here is argparse's own "invalid int value: 'x'"
        try:
            check_option(name, value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from exc
        return value

    convert.__name__ = getattr(parse, "__name__", name)  # argparse names the type in its "invalid ..." message
    return convert


def _split_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _help(f: dataclasses.Field, default: Any) -> str:
    """The field's help text, its default and its bounds (the ones TrainConfig enforces)."""
    lo, hi = option_bounds(f.name)
    span = ""
    if lo is not None:
        span = f"; {lo:g} to {hi:g}" if hi is not None else f"; at least {lo:g}"
    elif hi is not None:
        span = f"; at most {hi:g}"
    return f"{f.metadata.get('help', '')} (default: {default}{span})"


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON file with TrainConfig fields; flags given here override it.")
    # config_from_args reports a bad --config file argparse-style too, after parsing: it needs this parser for that
    parser.set_defaults(train_parser_error=parser.error)
    add_config_args(parser)


def add_config_args(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """A flag per TrainConfig field (or the named ones: other commands share train's meaning of them), with its
    help, default and bounds; a flag not given stays out of the namespace, so TrainConfig's default applies."""
    hints = get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if names is not None and f.name not in names:
            continue
        kind, default = _base_type(hints[f.name]), getattr(defaults, f.name)
        text = _help(f, default)
        flag = f"--{f.name}"
        if kind is bool:
            # absl style, as make_image_classifier: --flag, --noflag, --flag=true|false
            parser.add_argument(flag, nargs="?", const=True, type=parse_bool, default=argparse.SUPPRESS, help=text)
            parser.add_argument(f"--no{f.name}", dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
        elif kind is list:
            parser.add_argument(flag, type=_checked(f.name, _split_list), default=argparse.SUPPRESS, help=text)
        elif kind in (int, float):
            parser.add_argument(flag, type=_checked(f.name, kind), default=argparse.SUPPRESS, help=text)
        else:  # text: argparse checks the choices itself ("invalid choice: ... (choose from ...)")
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                                help=text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    try:
        base = TrainConfig.load(args.config).to_dict() if getattr(args, "config", None) else {}
        cfg = TrainConfig.from_dict({**base, **given})
    except ConfigError as exc:  # a bad value in --config: refused like a bad flag (exit 2), before any work
        error = getattr(args, "train_parser_error", None)
        if error is None:
            raise
        error(str(exc))
    if not cfg.image_dir:
        raise SystemExit("error: --image_dir is required (a folder with one subfolder of images per class)")
    return cfg


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # first: a bad --config value is refused before the training stack loads
    from engine.runs.prepare import template_ahead  # why: before the training stack loads (~1.5 s), on a new machine

    template_ahead(cfg.tfhub_module, cfg.image_size, cfg.do_fine_tuning)
    # The training stack (SciPy, scikit-learn, LiteRT) loads once the flags are known to be good: --help stays fast
    from engine.learn.train import AccuracyError
    from engine.runs.pipeline import Cancelled, RunError, execute

    if cfg.set_memory_growth:  # before make_strategy below puts the GPUs to use
        from engine.core.tfcompat import set_memory_growth  # TensorFlow: only when asked for GPUs

        set_memory_growth()
    if cfg.distribution_strategy == "multi_worker":  # TF allows collective ops only if set up before anything runs
        from engine.learn.strategy import make_strategy  # TensorFlow: only for this strategy

        try:
            make_strategy(cfg.distribution_strategy)
        except DistributedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Cancelled("the training process was asked to stop")

    signal.signal(signal.SIGTERM, stop)
    progress = ConsoleProgress()
    try:
        result = execute(cfg, progress)
    except (DatasetError, BackboneError, AccuracyError, RunError, ValueError) as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (Cancelled, KeyboardInterrupt):
        progress.close()
        print("cancelled", file=sys.stderr)
        return 130
    progress.close()
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    acc = result.val_accuracy
    print(f"Classes: {', '.join(result.labels)}")
    print(f"Validation accuracy: {acc:.4f} ({result.metrics.get('evaluation', 'validation')})" if acc is not None
          else "Validation accuracy: n/a (no validation split)")
    threshold = result.metrics.get("threshold") or {}
    if threshold.get("value") is not None:
        how = result.metrics.get("evaluation", "validation")
        if threshold["value"] <= 0:  # every answer already reaches the target precision
            print(f"Unknown threshold: none needed (precision {threshold['precision']:.3f} on every answer in {how})")
        else:
            print(f"Unknown below {threshold['value']:.3f} confidence (precision {threshold['precision']:.3f}, "
                  f"coverage {threshold['coverage']:.3f} in {how})")
    for row in result.metrics.get("backbone_comparison") or []:  # features of both backbones were cached
        loss = f", log-loss {row['log_loss']:.4f}" if row.get("log_loss") is not None else ""
        print(f"  {row['backbone']}: cross-validated accuracy {row['accuracy']:.4f}{loss}"
              + ("  (this run)" if row["backbone"] == result.data.resolved.handle else ""))
    t = result.timings
    print(f"Time: {t['total_s']:.1f} s (features {t['embed_s']:.1f} s for {t['embedded_new']} new images, "
          f"head {t['head_s']:.2f} s)")
    print(f"Run folder: {result.run_dir}  (bundle: {result.run_dir / runfiles.BUNDLE})")
    cfg = result.config
    for flag, path in (("saved_model_dir", cfg.saved_model_dir), ("labels_output_file", cfg.labels_output_file),
                       ("tflite_output_file", cfg.tflite_output_file)):
        if path:
            print(f"--{flag}: {path}")
