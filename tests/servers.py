"""Servers the tests start for real on a free loopback port, the app (`streamlit run app.py`) and a bundle's own
serve.py, each handed out once it answers its health endpoint; and plain HTTP requests to them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment less PYTHONPATH, so nothing from the repo is importable unless the command is run from it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def start(cmd: list[str], cwd: Path, log: Path, port: int, env: dict[str, str] | None = None,
          timeout: float = 60) -> Server:
    """A bundle server (serve.py or `python -m engine serve`), once it answers /healthz."""
    fh = open(log, "wb")  # noqa: SIM115 - the child writes it; closed below
    proc = subprocess.Popen(cmd, cwd=cwd, env=env or clean_env(), stdout=fh, stderr=subprocess.STDOUT)
    fh.close()
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{server.output()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.stop(signal.SIGKILL)
    pytest.fail(f"server did not answer /healthz in {timeout} s:\n{server.output()[-3000:]}")


def start_bundle_server(folder: Path, log: Path, *args: str, timeout: float = 60) -> Server:
    """An unpacked bundle's own serve.py, run from its folder with nothing of the repo importable."""
    port = free_port()
    return start([sys.executable, "serve.py", "--port", str(port), *args], folder, log, port, timeout=timeout)


@contextmanager
def app_server(workspace_root: Path) -> Iterator[str]:
    """`streamlit run app.py` on the shipped .streamlit/config.toml (only the port given) over `workspace_root`."""
    port = free_port()
    env = dict(os.environ, RETRAIN_STUDIO_WORKSPACE=str(workspace_root), PYTHONUNBUFFERED="1")
    env.pop("RETRAIN_STUDIO_TRAIN_CMD", None)
    log_path = workspace_root / "streamlit.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# ------------------------------------------------------------------------------------------------------------------
# HTTP with the standard library only (and curl, where the machine has it)
# ------------------------------------------------------------------------------------------------------------------
def multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for field, (filename, data) in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(url: str, body: bytes | None = None, content_type: str | None = None,
            method: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("content-type", "")
    assert ctype.startswith("application/json"), (status, ctype, raw[:200])
    return status, json.loads(raw)


def curl_upload(url: str, path: Path) -> dict:
    if shutil.which("curl"):
        proc = subprocess.run(["curl", "-sS", "-F", f"upload=@{path}", url], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
    return request(url, *multipart({"upload": (path.name, path.read_bytes())}))[1]
