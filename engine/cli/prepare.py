"""`python -m engine prepare`: make a backbone's one-time parts on this machine now (the app starts this when it
opens, so the first training run does not wait for them)."""

from __future__ import annotations

import argparse
import sys
import time

from engine.config.backbones import DEFAULT_BACKBONE, PREPARED_PARTS
from engine.features.backbones import BackboneError


def add_prepare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tfhub_module", default=DEFAULT_BACKBONE, help="A built-in backbone (python -m engine "
                        "backbones lists them).")
    parser.add_argument("--classes", type=int, default=None,
                        help="Also trace the SavedModel template for this many classes.")
    parser.add_argument("--parts", nargs="+", choices=PREPARED_PARTS, default=list(PREPARED_PARTS),
                        help="Only these parts (default: all).")


def run_prepare(args: argparse.Namespace) -> int:
    from engine.runs.prepare import prepare  # why: its parts import TensorFlow; --help stays fast

    t0 = time.perf_counter()
    try:
        done = prepare(args.tfhub_module, args.classes, parts=args.parts)
    except BackboneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if done:
        print(f"Prepared {args.tfhub_module}: {', '.join(done)} in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"{args.tfhub_module}: everything was prepared already")
    return 0
