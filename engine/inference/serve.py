"""Serve an exported model over HTTP (`python -m engine serve --bundle model_bundle.zip`, engine.cli.serve).

The server is the engine's own copy of the bundle's server (engine/bundle/serve.py and its sibling predict.py, the
files engine.export copies into every bundle), run with `--bundle_dir` on the bundle's model files: no TensorFlow
and no engine import in the server process, exactly as a deployment without this engine runs it. A bundle is data:
the serve.py or predict.py it holds is never run, and the server runs from the engine's folder, not the bundle's,
so nothing in the bundle can be imported in its place. A zip is unpacked into a temporary folder first (with the
limits of engine.inference.predict.unpack_bundle), removed when the server stops.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from engine.bundle import predict as bundle_predict
from engine.config import runfiles as rf
from engine.config import variants
from engine.inference.bundle_files import BUNDLE_SOURCES
from engine.inference.predict import PredictError, unpack_bundle

log = logging.getLogger(__name__)
DEFAULT_MODEL = variants.file_name("float32")  # what the bundle's server loads when the card names no default_model


class ServeError(ValueError):
    """A --bundle that cannot be served, in words the user can act on."""


def unpack(bundle: Path, into: Path) -> Path:
    """Unpack a bundle zip, as `predict` does (engine.inference.predict.unpack_bundle: names and sizes checked)."""
    try:
        unpack_bundle(bundle, into)
    except PredictError as exc:
        raise ServeError(str(exc)) from exc
    return into


def check_bundle(folder: Path, shown: object = None) -> Path:
    """The model file the server will load from the folder, after the checks the server would otherwise fail on
    with a traceback, or not make at all: model_card.json a JSON object, it and labels.txt present, and they and
    the model inside the folder (no absolute path, no '..', no link out of it). ServeError in one line naming the
    bundle (`shown`, default the folder)."""
    shown = shown or folder
    if not (folder / rf.MODEL_CARD).is_file() or not (folder / rf.LABELS).is_file():
        raise ServeError(f"{shown} is not an exported bundle: it has no {rf.MODEL_CARD} and {rf.LABELS}")
    try:
        card = bundle_predict.read_card(folder, shown)
        bundle_predict.read_labels(folder, shown)
        name = card.get("default_model") or DEFAULT_MODEL
        model = bundle_predict.bundle_file(folder, name, shown, "the model ")
    except UnicodeDecodeError as exc:  # read_card says so itself: only labels.txt gets here
        raise ServeError(f"{rf.LABELS} in {shown} is not UTF-8 text ({exc.reason})") from exc
    except ValueError as exc:
        raise ServeError(str(exc)) from exc
    except OSError as exc:
        raise ServeError(f"{shown} cannot be read ({exc})") from exc
    if not model.is_file():
        raise ServeError(f"{shown} holds no model: {name} is not in it")
    return model


def server_command(folder: Path, shown: object = None) -> list[str]:
    """The engine's copy of the server on the bundle's files; never a serve.py the bundle holds."""
    check_bundle(folder, shown)
    return [sys.executable, str(BUNDLE_SOURCES / "serve.py"), "--bundle_dir", str(folder)]


def default_name(bundle: Path) -> str:
    """The bundle's name: its file or folder name, or its run folder's when it is the generic bundle.zip."""
    path = bundle.resolve()
    stem = path.stem if path.is_file() else path.name
    return path.parent.name if stem == "bundle" and path.parent.name else stem


def serve_bundle(bundle: Path, server_args: list[str]) -> int:
    """Run the server on a bundle zip, its unpacked folder or a run folder, with the server flags given; the
    server's exit code. ServeError (one line) when the bundle cannot be served."""
    with ExitStack() as stack:
        if bundle.is_dir():
            folder = bundle.resolve()
        elif bundle.is_file():
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="retrain-bundle-"))
            folder = unpack(bundle, Path(tmp))
            log.info("Unpacked %s into %s (removed when the server stops)", bundle, folder)
        else:
            raise ServeError(f"{bundle} does not exist")
        cmd = server_command(folder, bundle) + [*server_args, "--name", default_name(bundle)]
        if (folder / "serve.py").exists():
            log.info("%s holds a serve.py of its own; it is not run: the engine serves the bundle with its own "
                     "server code", bundle)
        log.info("Running %s", " ".join(cmd))
        return _run_forwarding_signals(cmd, cwd=BUNDLE_SOURCES)


def _run_forwarding_signals(cmd: list[str], cwd: Path) -> int:
    """Run the server in its own session and pass Ctrl-C / SIGTERM on to it once, so it shuts down gracefully and
    the temporary folder is removed after it has exited."""
    # The server runs from the engine's source folder: no __pycache__ may be left there (serve.py sets this for
    # itself too; the environment covers the worker processes it spawns).
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True)
    forwarded: list[int] = []

    def forward(signum, _frame):
        if proc.poll() is None:
            forwarded.append(signum)
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
        # uvicorn shuts down gracefully, then re-raises the signal: being stopped as asked is a clean exit
        if rc < 0:
            return 0 if -rc in forwarded else 128 - rc
        return rc
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
