"""Benchmark the HTTP server: requests/s and p50/p99 latency of `POST /classify` with one image per request.

    python bench/bench_serve.py --bundle runs/<run>/bundle.zip            # a bundle you trained
    python bench/bench_serve.py                                          # trains a small demo bundle first (~1 min)
    python bench/bench_serve.py --bundle b.zip --workers 2 --threads 1 --clients 1,4,8 --requests 400

The server is the bundle's own serve.py, started as a deployment would start it (its own process, on a free
loopback port); the clients are threads with one keep-alive connection each, in this process. On a small machine
the clients share the CPU cores with the server, so the numbers are a floor.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGE_DIR = REPO.parent / "shared" / "datasets" / "text_nontext"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_bundle(work: Path) -> Path:
    """Train a float32-only bundle on the engine's demo dataset through the CLI."""
    sys.path.insert(0, str(REPO))
    from engine.data.demo import make_demo_dataset

    data = make_demo_dataset(work / "demo", per_class=24)
    print("Training a demo bundle (float32 only) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "engine", "train", "--image_dir", str(data), "--run_dir",
                    str(work / "run"), "--quantize", "float32"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return work / "run" / "bundle.zip"


def pick_image(arg: str | None, work: Path) -> Path:
    if arg:
        return Path(arg)
    if SHARED_IMAGE_DIR.is_dir():
        return sorted((SHARED_IMAGE_DIR / "text").iterdir())[0]
    from PIL import Image

    path = work / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def start_server(folder: Path, port: int, workers: int, threads: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, "serve.py", "--port", str(port), "--workers", str(workers), "--threads",
                             str(threads), "--log_level", "warning"], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start in 60 s")


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def load(port: int, body: bytes, ctype: str, clients: int, total: int) -> tuple[float, list[float], int]:
    """total requests over `clients` keep-alive connections: (seconds, latencies in s, errors)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    per = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for _ in range(n):
            t = time.perf_counter()
            try:
                conn.request("POST", "/classify", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine.append(time.perf_counter() - t)
            if not ok:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in per]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, errors[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle .zip or unpacked folder (default: train a demo bundle)")
    parser.add_argument("--image", help="image to send (default: one of shared/datasets/text_nontext, else noise)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="inference threads per worker (0: cores / workers)")
    parser.add_argument("--clients", default="1,2,8", help="concurrency levels, comma separated")
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else demo_bundle(work)
        if bundle.is_dir():
            folder = bundle
        else:
            folder = work / "bundle"
            zipfile.ZipFile(bundle).extractall(folder)
        image = pick_image(args.image, work)
        data = image.read_bytes()
        body, ctype = multipart(image.name, data)
        port = free_port()
        proc = start_server(folder, port, args.workers, args.threads)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model") as r:
                info = json.loads(r.read())
            from PIL import Image

            with Image.open(image) as im:
                size = f"{im.width}x{im.height} {im.format}"
            print(f"model {info['model_file']} ({info['num_classes']} classes, {info['image_size']} px) via "
                  f"{info['runtime']['interpreter']}; {args.workers} worker(s) x {info['runtime']['threads']} "
                  f"inference thread(s); {os.cpu_count()} CPU cores shared with the clients")
            print(f"image {image.name}: {size}, {len(data) / 1024:.0f} KiB; POST /classify, keep-alive connections")
            load(port, body, ctype, 2, 20)  # warm-up
            print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
            for clients in [int(c) for c in args.clients.split(",") if c.strip()]:
                seconds, lat, errors = load(port, body, ctype, clients, args.requests)
                ms = np.percentile(np.array(lat) * 1000, [50, 99])
                print(f"{clients:>7} {len(lat):>8} {len(lat) / seconds:>7.1f} {ms[0]:>7.1f} {ms[1]:>7.1f} "
                      f"{errors:>6}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
