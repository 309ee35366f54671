"""Command line: `python -m engine train|predict|backbones|serve|embed|inspect|check|prepare|export-extra`.

Each command is a thin adapter in its own module of this package (flags in, engine call, what the user sees out);
the table below is the one list of them. A command line that starts with a flag is treated as `train`, so
`python -m engine --image_dir flowers ...` works as a drop-in for make_image_classifier. `predict` follows TF's
label_image example.

Every command module imports only argparse-level code at the top; the engine behind a command loads when it runs,
so `python -m engine --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NamedTuple

from engine.cli import backbones, check, embed, export_extra, inspect, predict, prepare, serve, train

log = logging.getLogger("engine")


class Command(NamedTuple):
    help: str
    add_args: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], int]
    show_defaults: bool = True


COMMANDS: dict[str, Command] = {
    "train": Command("Retrain a classifier on an image folder (make_image_classifier flags).", train.add_train_args,
                     train.run_train),
    "predict": Command("Classify images with an exported model (label_image flags).", predict.add_predict_args,
                       predict.run_predict, show_defaults=False),
    "backbones": Command("List the built-in offline backbones.", None, backbones.run_backbones),
    "serve": Command("Serve an exported bundle over HTTP (POST /classify, /v1/predict).", serve.add_serve_args,
                     serve.run_serve),
    "embed": Command("Compute backbone features for a folder into the cache (--ray: on a cluster).",
                     embed.add_embed_args, embed.run_embed),
    "inspect": Command("Find label issues, near-duplicates and outliers in an image folder.",
                       inspect.add_inspect_args, inspect.run_inspect, show_defaults=False),
    "check": Command("Check a project's folders against its index (--repair fixes what it can).",
                     check.add_check_args, check.run_check, show_defaults=False),
    "prepare": Command("Make a backbone's one-time parts on this machine now (ported weights, TFLite variants).",
                       prepare.add_prepare_args, prepare.run_prepare),
    "export-extra": Command("Make a TensorFlow.js or Core ML model from a finished run (after its bundle).",
                            export_extra.add_export_extra_args, export_extra.run_export_extra),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="Show debug logging.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        formatter = argparse.ArgumentDefaultsHelpFormatter if command.show_defaults else argparse.HelpFormatter
        p = sub.add_parser(name, help=command.help, formatter_class=formatter)
        if command.add_args is not None:
            command.add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "--verbose"):
        argv.insert(0, "train")  # make_image_classifier-style command line
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # tf_keras warns about uncompiled metrics of the loaded hub module: noise for users
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return COMMANDS[args.command].run(args)
