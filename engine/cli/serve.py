"""`python -m engine serve`: serve an exported bundle over HTTP with the engine's copy of the bundle's server, on the
bundle's model files (engine.inference.serve runs it; a serve.py inside the bundle is never run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.inference.serve import ServeError, serve_bundle

# The bundle server's flags this command passes on when given; the server's own defaults apply to the rest (they are
# declared once, in engine/bundle/serve.py, which is not imported here: it needs FastAPI).
FORWARDED = ("host", "port", "workers", "max_upload_mb", "top_k")


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True,
                        help="the exported bundle: model_bundle.zip, its unpacked folder, or a run folder")
    server = "default: the bundle server's"
    parser.add_argument("--host", default=argparse.SUPPRESS,
                        help=f"interface to listen on; 0.0.0.0 for every interface ({server})")
    parser.add_argument("--port", type=int, default=argparse.SUPPRESS, help=f"TCP port ({server})")
    parser.add_argument("--workers", type=int, default=argparse.SUPPRESS,
                        help=f"server processes, each with its own model ({server})")
    parser.add_argument("--max_upload_mb", type=float, default=argparse.SUPPRESS,
                        help=f"largest request body in MiB ({server})")
    parser.add_argument("--top_k", type=int, default=argparse.SUPPRESS,
                        help=f"classes per image in /classify ({server})")


def forwarded_args(args: argparse.Namespace) -> list[str]:
    """The server flags the user gave, for serve.py's command line; the ones not given are left to its defaults."""
    return [item for name in FORWARDED if hasattr(args, name) for item in (f"--{name}", str(getattr(args, name)))]


def run_serve(args: argparse.Namespace) -> int:
    """The server's exit code; 1 with one `error:` line when the bundle cannot be served."""
    try:
        return serve_bundle(Path(args.bundle), forwarded_args(args))
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
