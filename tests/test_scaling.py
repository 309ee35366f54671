"""Scaling out (docs/scaling.md): engine.features.ray_embed (Ray Data embedding against the local path, resume, bad
files) and engine.learn.strategy (tf.distribute fine-tuning), in one module so both run at once.

The Ray tests run a real local cluster (ray.init(num_cpus=2), shared by the module) and skip with the reason when
Ray is not installed (requirements-ray.txt). The strategy tests run tests/strategy_worker.py in fresh processes:
one with two logical CPU devices (`mirrored`) and two workers talking over loopback ports (`multi_worker`); all
three start together, while the Ray tests run, to keep the module's wall time down.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.features.ray_embed import embed_local, embed_with_ray, list_images, merge_shards

REPO = Path(__file__).resolve().parents[1]
N_GOOD = 14  # per class, two classes; one extra exact copy


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray_images")
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (root / label).mkdir()
        for i in range(N_GOOD):
            h, w = rng.integers(40, 260, size=2)
            img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)
            cv2.imwrite(str(root / label / f"{label}{i}.{'png' if i % 3 == 0 else 'jpg'}"), img)
    (root / "cats" / "copy.jpg").write_bytes((root / "cats" / "cats1.jpg").read_bytes())
    # The local path's bad-file corpus in miniature: text, empty, truncated, an SVG named .png.
    (root / "cats" / "notes.jpg").write_text("not an image at all\n")
    (root / "dogs" / "empty.png").write_bytes(b"")
    data = (root / "dogs" / "dogs1.jpg").read_bytes()
    (root / "dogs" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "dogs" / "drawing.png").write_text('<svg xmlns="http://www.w3.org/2000/svg"></svg>')
    (root / ".hidden.jpg").write_bytes(data)  # hidden files are not listed, as in the dataset scanner
    return root


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-ray.txt)")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(image_dir, tmp_path_factory):
    from engine.features.embeddings import EmbeddingStore

    folder = tmp_path_factory.mktemp("local_cache")
    store = EmbeddingStore(folder / "embeddings.sqlite")
    return store, embed_local(image_dir, store=store, shard_dir=str(folder / "shards"))


def _vectors(store, report):
    from engine.features.backbones import resolve
    from engine.features.embeddings import preprocess_id

    resolved = resolve("efficientnet-lite0")
    return store.get_many([s for s in report.shas if s], resolved.backbone_id, preprocess_id(224, False))


def test_listing_skips_hidden_and_non_images(image_dir):
    _, paths = list_images(image_dir)
    names = {Path(p).name for p in paths}
    assert ".hidden.jpg" not in names and "copy.jpg" in names and "drawing.png" in names
    assert len(paths) == 2 * N_GOOD + 1 + 4


@pytest.mark.slow
def test_ray_embeds_like_the_local_path(strategy_runs, ray_cluster, image_dir, local_run, tmp_path):
    # strategy_runs only starts the fine-tuning processes here, so they run while the Ray tests do.
    import pyarrow.parquet as pq

    from engine.features.embeddings import EmbeddingStore

    local_store, local = local_run
    store = EmbeddingStore(tmp_path / "embeddings.sqlite")
    remote = embed_with_ray(image_dir, store=store, shard_dir=str(tmp_path / "shards"), actors=1, batch_size=8)
    assert remote.paths == local.paths and remote.shas == local.shas
    # Bad files: the same files, the same words.
    assert remote.failed == local.failed
    reasons = dict(remote.failed)
    assert {Path(p).name for p in reasons} == {"notes.jpg", "empty.png", "truncated.jpg", "drawing.png"}
    assert reasons[str(image_dir / "dogs" / "empty.png")] == "empty.png: empty file (0 bytes)"
    assert remote.computed == local.computed == 2 * N_GOOD + 1 and remote.cached == 0
    a, b = _vectors(local_store, local), _vectors(store, remote)
    assert len(a) == len(b) == 2 * N_GOOD  # the copy shares its original's vector
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6
    # Shards carry the cache key; a fresh store fed only from them finds every vector.
    shards = sorted((tmp_path / "shards").glob("*.parquet"))
    assert len(shards) == 4  # 28 unique good images + 4 bad, 8 per block; bad rows never reach a shard
    table = pq.read_table(shards[0])
    assert table.column_names == ["sha256", "backbone", "image_size", "preprocess", "dim", "vector"]
    row = table.slice(0, 1).to_pylist()[0]
    assert row["backbone"].startswith("efficientnet-lite0-") and row["image_size"] == 224
    assert row["preprocess"] == "tflite-f32-1|224|stretch" and row["dim"] == len(row["vector"]) == 1280
    fresh = EmbeddingStore(tmp_path / "fresh.sqlite")
    assert merge_shards(str(tmp_path / "shards"), fresh) == 2 * N_GOOD
    assert merge_shards(str(tmp_path / "shards"), fresh) == 0  # idempotent


@pytest.mark.slow
def test_interrupted_ray_run_resumes_with_only_the_missing(ray_cluster, image_dir, local_run, tmp_path):
    from engine.features.embeddings import EmbeddingStore

    store = EmbeddingStore(tmp_path / "embeddings.sqlite")
    shard_dir = str(tmp_path / "shards")
    written: list[str] = []

    def stop_after_two(path: str) -> None:
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does to the driver

    with pytest.raises(KeyboardInterrupt):
        embed_with_ray(image_dir, store=store, shard_dir=shard_dir, actors=1, batch_size=5, on_shard=stop_after_two)
    kept = store.count()
    assert 0 < kept < 2 * N_GOOD
    again = embed_with_ray(image_dir, store=store, shard_dir=shard_dir, actors=1, batch_size=5)
    assert again.cached + again.computed + len(again.failed) == len(again.paths)
    assert again.cached >= kept and again.computed == 2 * N_GOOD + 1 - again.cached
    assert len(again.failed) == 4
    # The resumed cache equals the local path's.
    a, b = _vectors(local_run[0], local_run[1]), _vectors(store, again)
    assert set(a) == set(b) and max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6
    # A store that lost everything (another machine) gets it all back from the shards, with nothing to embed.
    other = EmbeddingStore(tmp_path / "other.sqlite")
    last = embed_with_ray(image_dir, store=other, shard_dir=shard_dir, actors=1)
    assert last.merged == 2 * N_GOOD and last.computed == 0


@pytest.mark.slow
def test_embed_command(ray_cluster, image_dir, tmp_path, capsys):
    from engine.cli.main import main

    assert main(["embed", "--image_dir", str(image_dir), "--cache_dir", str(tmp_path), "--ray", "--actors", "1"]) == 0
    out = capsys.readouterr()
    assert "Embedded 33 images (ray): 29 new, 0 cached, 4 unreadable" in out.out
    assert f"warning: Skipped {image_dir / 'dogs' / 'empty.png'}: empty file (0 bytes)" in out.err
    assert main(["embed", "--image_dir", str(image_dir), "--cache_dir", str(tmp_path)]) == 0
    assert "Embedded 33 images (local): 0 new, 29 cached, 4 unreadable" in capsys.readouterr().out
    assert main(["embed", "--image_dir", str(tmp_path / "nowhere"), "--cache_dir", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# tf.distribute: mirrored on two logical CPUs, multi_worker with two local processes
# ----------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def strategy_runs(tmp_path_factory):
    """Start the three fine-tuning processes at once; tests wait for theirs."""
    from engine.core.tfcompat import keras
    from engine.features.port import save_hub_module

    root = tmp_path_factory.mktemp("strategies")
    rng = np.random.default_rng(1)
    for label, colour in (("blue", (220, 0, 0)), ("red", (0, 0, 220))):
        (root / "images" / label).mkdir(parents=True)
        for i in range(8):
            img = np.clip(np.array(colour) + rng.normal(0, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / "images" / label / f"{i}.png"), img)
    # A tiny TF Hub-format backbone: fine-tuning through it costs milliseconds, the code path is the real one.
    tiny = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                             keras.layers.GlobalAveragePooling2D()])
    save_hub_module(tiny, root / "backbone")
    env = {**os.environ, "RETRAIN_STUDIO_CACHE": str(root / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    ports = [_free_port(), _free_port()]

    def start(strategy: str, name: str, tf_config: dict | None = None) -> subprocess.Popen:
        run_env = {**env, "TF_CONFIG": json.dumps(tf_config)} if tf_config else env
        args = [sys.executable, str(REPO / "tests" / "strategy_worker.py"), strategy, str(root / "images"),
                str(root / "backbone"), str(root / name), str(root / "cache")]
        log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process below
        return subprocess.Popen(args, env=run_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = {"mirrored": start("mirrored", "mirrored"),
             "worker0": start("multi_worker", "worker0", {"cluster": cluster, "task": {"type": "worker", "index": 0}}),
             "worker1": start("multi_worker", "worker1", {"cluster": cluster, "task": {"type": "worker", "index": 1}})}
    yield root, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finished(root: Path, procs: dict, name: str) -> dict:
    proc = procs[name]
    try:
        rc = proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = "timeout"
    log = (root / f"{name}.log").read_text()
    assert rc == 0, f"{name} failed ({rc}):\n{log[-3000:]}"
    result = json.loads(log.strip().splitlines()[-1])
    run = root / name
    assert "fine_tune epoch 1:" in log
    assert (run / "bundle.zip").exists() and (run / "saved_model" / "saved_model.pb").exists()
    assert not (run / "fine_tune_checkpoint").exists()  # a finished run leaves no backup behind
    config = json.loads((run / "config.json").read_text())
    assert config["distribution_strategy"] in ("mirrored", "multi_worker")
    return result


@pytest.mark.slow
def test_mirrored_fine_tuning_on_two_logical_cpus(strategy_runs):
    result = _finished(*strategy_runs, "mirrored")
    assert result == {"replicas": 2, "predict_rc": 0}


@pytest.mark.slow
def test_multi_worker_fine_tuning_with_two_local_workers(strategy_runs):
    root, procs = strategy_runs
    results = [_finished(root, procs, name) for name in ("worker0", "worker1")]
    assert results == [{"replicas": 2, "predict_rc": 0}] * 2
    # Synchronous training: both workers end with the same weights, so their exported models predict alike.
    predictions = [[line for line in (root / f"{name}.log").read_text().splitlines()
                    if line.endswith((": red", ": blue"))] for name in ("worker0", "worker1")]
    assert predictions[0] and predictions[0] == predictions[1]


def test_strategy_errors_are_worded_for_the_user(monkeypatch):
    from engine.features.ray_embed import DistributedError
    from engine.learn.strategy import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    make_strategy.cache_clear()
    with pytest.raises(DistributedError, match="needs TF_CONFIG"):
        make_strategy("multi_worker")
    with pytest.raises(DistributedError, match="Unknown --distribution_strategy"):
        make_strategy("parameter_server")
    assert make_strategy("none") is None


def test_bundle_dockerfile_serves_what_the_bundle_holds():
    """The image builds from the bundle's own files and starts serve.py with flags it accepts (building it needs
    Docker Hub, which CI cannot reach; the commands were also run by hand on an unpacked bundle)."""
    import shlex

    from engine.bundle import serve as bundle_serve

    text = (REPO / "engine" / "bundle" / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    from engine.inference.bundle_files import BUNDLE_PAGES, BUNDLE_WEB

    bundle_files = {"requirements.txt", "requirements-serve.txt", "model_card.json", "labels.txt", "predict.py",
                    "serve.py", "model_*.tflite", BUNDLE_PAGES, BUNDLE_WEB}  # what engine.export puts in every bundle
    optional = {"model*.onnx"}  # a glob that may match nothing: fine-tuned runs have no model.onnx
    copied = [name for ln in lines if ln.startswith("COPY ") for name in ln.split()[1:-1]]
    assert set(copied) <= bundle_files | optional
    assert {"serve.py", "predict.py", "model_*.tflite", BUNDLE_PAGES, BUNDLE_WEB} <= set(copied)
    assert not any("tensorflow" in ln.lower() for ln in lines if ln.startswith("RUN"))
    health = next(ln for ln in lines if ln.startswith("HEALTHCHECK"))
    assert "/healthz" in health
    cmd = json.loads(next(ln for ln in lines if ln.startswith("CMD "))[4:])
    argv = shlex.split(cmd[-1].replace('"$PORT"', "8080").replace('"$WORKERS"', "2"))
    assert argv[:3] == ["exec", "python", "serve.py"]
    args = bundle_serve.build_parser().parse_args(argv[3:])
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 8080, 2)
