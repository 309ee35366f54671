"""Serve an exported model over HTTP (`python -m engine serve --bundle model_bundle.zip`, engine.cli.serve).

The server is the bundle's own serve.py (engine/bundle/serve.py, copied into every bundle by
engine.export), run as `python serve.py` in the bundle's folder, exactly as a deployment without this engine runs
it: no TensorFlow and no engine import in the server process. A zip is unpacked into a temporary folder first,
removed when the server stops. A folder with model_card.json but no serve.py (a run folder, an older bundle) is
served by the engine's copy of the same code.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from engine.config import runfiles as rf
from engine.inference.bundle_files import BUNDLE_SOURCES
from engine.inference.predict import PredictError, unpack_bundle

log = logging.getLogger(__name__)

class ServeError(ValueError):
    """A --bundle that cannot be served, in words the user can act on."""


def unpack(bundle: Path, into: Path) -> Path:
    """Unpack a bundle zip, as `predict` does (engine.inference.predict.unpack_bundle: member names checked first)."""
    try:
        unpack_bundle(bundle, into)
    except PredictError as exc:
        raise ServeError(str(exc)) from exc
    return into


def server_command(folder: Path) -> list[str]:
    if (folder / "serve.py").is_file():
        return [sys.executable, str(folder / "serve.py")]
    if (folder / rf.MODEL_CARD).is_file() and (folder / rf.LABELS).is_file():
        return [sys.executable, str(BUNDLE_SOURCES / "serve.py"), "--bundle_dir", str(folder)]
    raise ServeError(f"{folder} is not an exported bundle: it has no serve.py and no model_card.json/labels.txt")


def default_name(bundle: Path) -> str:
    """The bundle's name: its file or folder name, or its run folder's when it is the generic bundle.zip."""
    path = bundle.resolve()
    stem = path.stem if path.is_file() else path.name
    return path.parent.name if stem == "bundle" and path.parent.name else stem


def serve_bundle(bundle: Path, server_args: list[str]) -> int:
    """Run the bundle's server on a bundle zip, its unpacked folder or a run folder, with the server flags given;
    the server's exit code (1 when the bundle cannot be served, the reason logged)."""
    with ExitStack() as stack:
        try:
            if bundle.is_dir():
                folder = bundle.resolve()
            elif bundle.is_file():
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="retrain-bundle-"))
                folder = unpack(bundle, Path(tmp))
                log.info("Unpacked %s into %s (removed when the server stops)", bundle, folder)
            else:
                raise ServeError(f"{bundle} does not exist")
            cmd = server_command(folder)
        except ServeError as exc:
            log.error("%s", exc)
            return 1
        cmd += [*server_args, "--name", default_name(bundle)]
        log.info("Running %s", " ".join(cmd))
        return _run_forwarding_signals(cmd, cwd=folder)


def _run_forwarding_signals(cmd: list[str], cwd: Path) -> int:
    """Run the server in its own session and pass Ctrl-C / SIGTERM on to it once, so it shuts down gracefully and
    the temporary folder is removed after it has exited."""
    proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True)
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
