"""Benchmark: our cached-embedding recipe against a make_image_classifier-style baseline, in one run.

    python bench/bench.py                          # ../shared/datasets/flowers
    python bench/bench.py --image_dir my_photos --seeds 3

Prints: backbone-only TFLite images/s, our end-to-end embedding images/s (decode included), head retrain seconds
(on this dataset and on 1,000 cached feature rows), validation accuracy; and, as baselines in the same run,
(a) make_image_classifier-style training (the backbone runs on every decoded image every epoch, same backbone,
its defaults: SGD lr 0.005 momentum 0.9, label smoothing 0.1, dropout 0.2, L2 1e-4, batch 32, 5 epochs) and
(b) a converged logistic-regression probe on our cached embeddings. Accuracy is averaged over --seeds splits.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config.training import TrainConfig  # noqa: E402
from engine.core.tfcompat import keras, set_seed, tf  # noqa: E402
from engine.data import images  # noqa: E402
from engine.data.dataset import scan_image_dir, split_dataset  # noqa: E402
from engine.features.backbones import resolve  # noqa: E402
from engine.features.embeddings import Embedder, EmbeddingStore, embed_files  # noqa: E402
from engine.features.port import load_feature_layer  # noqa: E402
from engine.learn.prepare import PreparedData  # noqa: E402
from engine.learn.train import train, train_head  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers"


def backbone_only_rate(embedder: Embedder, imgs: np.ndarray, repeats: int = 2) -> float:
    embedder(imgs[0])  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        for img in imgs:
            embedder(img)
    return repeats * len(imgs) / (time.perf_counter() - t0)


def baseline_make_image_classifier(paths, y, train_idx, val_idx, resolved, n_classes, seed,
                                   export_dir: Path | None = None) -> tuple[float, float]:
    """The backbone on every image every epoch, make_image_classifier's default hyperparameters; with export_dir,
    also its outputs: a SavedModel and a float32 .tflite converted from it (what its --saved_model_dir and
    --tflite_output_file write)."""
    set_seed(seed)
    size = resolved.image_size
    model = keras.Sequential([
        keras.Input((size, size, 3)), load_feature_layer(resolved, trainable=False), keras.layers.Dropout(0.2),
        keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=keras.regularizers.l2(1e-4)),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.005, momentum=0.9),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])

    def dataset(idx, shuffle):
        def load(i):
            return images.prepare(paths[int(i)], size, False).astype(np.float32) / 255.0

        ds = tf.data.Dataset.from_tensor_slices(np.asarray(idx))
        if shuffle:
            ds = ds.shuffle(len(idx), seed=seed)
        ds = ds.map(lambda i: (tf.numpy_function(load, [i], tf.float32), tf.one_hot(tf.gather(y, i), n_classes)),
                    num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(lambda x, t: (tf.ensure_shape(x, (size, size, 3)), t))
        return ds.batch(32).prefetch(2)

    t0 = time.perf_counter()
    model.fit(dataset(train_idx, True), epochs=5, verbose=0)
    seconds = time.perf_counter() - t0
    _, acc = model.evaluate(dataset(val_idx, False), verbose=0)
    if export_dir is not None:
        model.save(str(export_dir / "saved_model"), save_format="tf", include_optimizer=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(export_dir / "saved_model"))
        (export_dir / "model.tflite").write_bytes(converter.convert())
    return seconds, float(acc)


def logistic_probe(x_tr, y_tr, x_val, y_val) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000).fit(x_tr, y_tr)
    return float((clf.predict(x_val) == y_val).mean())


def head_seconds_on(n_rows: int, features: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> float:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(y), n_rows)
    x = features[idx] + rng.normal(0, 0.01, (n_rows, features.shape[1])).astype(np.float32)
    cut = int(n_rows * 0.8)
    t0 = time.perf_counter()
    train_head(x[:cut], y[idx][:cut], x[cut:], y[idx][cut:], int(y.max()) + 1, cfg)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image_dir", default=str(DEFAULT_DIR))
    ap.add_argument("--tfhub_module", default="efficientnet-lite0")
    ap.add_argument("--seeds", type=int, default=3, help="validation splits to average accuracy over")
    ap.add_argument("--skip_baseline", action="store_true", help="skip (a), the slow baseline")
    ap.add_argument("--fine_tune", action="store_true", help="also time --do_fine_tuning (5 epochs) on each split")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not Path(args.image_dir).is_dir():
        print(f"no such folder: {args.image_dir}", file=sys.stderr)
        return 2

    ds = scan_image_dir(args.image_dir, check_images=False)
    paths, shas, y = [it.path for it in ds.items], [it.sha256 for it in ds.items], ds.y
    resolved = resolve(args.tfhub_module)
    embedder = Embedder(resolved)
    sample = np.stack([images.prepare(p, resolved.image_size, False) for p in paths[:100]])
    rate_backbone = backbone_only_rate(embedder, sample)

    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore(Path(tmp) / "cold.sqlite")
        t0 = time.perf_counter()
        cold = embed_files(paths, shas, resolved, store=store, embedder=embedder)
        cold_embed_s = time.perf_counter() - t0
        rows = []
        for seed in range(args.seeds):
            # a held-out fifth, as make_image_classifier does (the default, 0, cross-validates: bench_cv.py)
            cfg = TrainConfig(image_dir=args.image_dir, tfhub_module=args.tfhub_module, seed=seed, validation_split=0.2)
            tr, va = split_dataset(ds, cfg.validation_split, seed)
            data = PreparedData(ds, resolved, cold.features, tr, va)
            t0 = time.perf_counter()
            ours = train(cfg, data=data)
            head_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            warm = train(cfg, store=store)  # a retrain after a label change: scan + cached features + head
            retrain_s = time.perf_counter() - t0
            probe = logistic_probe(cold.features[tr], y[tr], cold.features[va], y[va])
            base_s, base_acc = (np.nan, np.nan) if args.skip_baseline else baseline_make_image_classifier(
                paths, tf.constant(y), tr, va, resolved, len(ds.labels), seed)
            tuned_s, tuned_acc = np.nan, np.nan
            if args.fine_tune:
                t0 = time.perf_counter()
                tuned_acc = train(TrainConfig(image_dir=args.image_dir, tfhub_module=args.tfhub_module, seed=seed,
                                              validation_split=0.2, do_fine_tuning=True), data=data).val_accuracy
                tuned_s = time.perf_counter() - t0
            rows.append(dict(seed=seed, ours=ours.val_accuracy, warm=warm.val_accuracy, probe=probe, base=base_acc,
                             head_s=head_s, retrain_s=retrain_s, base_s=base_s, tuned=tuned_acc, tuned_s=tuned_s))
        head_1000_s = head_seconds_on(1000, cold.features, y, TrainConfig())

    report(args, ds, resolved, rate_backbone, cold, cold_embed_s, rows, head_1000_s)
    return 0


def report(args, ds, resolved, rate_backbone, cold, cold_embed_s, rows, head_1000_s) -> None:
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "seed"}
    first = rows[0]
    embed_rate = len(ds.items) / cold_embed_s
    cold_total = cold_embed_s + first["head_s"]
    print(f"\nDataset: {args.image_dir}  ({len(ds.items)} images, {len(ds.labels)} classes)  backbone: "
          f"{resolved.handle} @ {resolved.image_size}px  seeds: {len(rows)}")
    print(f"{'measure':58s} {'value':>10s}")
    lines = [
        ("backbone-only TFLite, images/s (pre-decoded)", rate_backbone),
        ("ours: end-to-end embedding, images/s (decode included)", embed_rate),
        ("ours: head training on this dataset's cached features, s", first["head_s"]),
        ("ours: head training on 1,000 cached feature rows, s", head_1000_s),
        ("ours: cold run (embed all + head), s", cold_total),
        ("ours: retrain after a label change (scan + cache + head), s", first["retrain_s"]),
        ("(a) make_image_classifier-style, 5 epochs, s", first["base_s"]),
        ("ours: validation accuracy (mean over seeds)", mean["ours"]),
        ("(a) make_image_classifier-style accuracy", mean["base"]),
        ("(b) logistic-regression probe on our embeddings, accuracy", mean["probe"]),
    ]
    if not np.isnan(mean["tuned"]):
        lines += [("ours + --do_fine_tuning (5 epochs): accuracy", mean["tuned"]),
                  ("ours + --do_fine_tuning: seconds (head + fine-tuning)", mean["tuned_s"])]
    for name, value in lines:
        print(f"{name:58s} {value:10.3f}")
    print("\nRatios (target):")
    ratios = [
        ("embedding rate / backbone-only rate (>= 0.75)", embed_rate / rate_backbone),
        ("(a) seconds / our cold run seconds (>= 3)", first["base_s"] / cold_total),
        ("(a) seconds / our retrain seconds (>= 20)", first["base_s"] / first["retrain_s"]),
        ("our accuracy - (a) accuracy (>= 0)", mean["ours"] - mean["base"]),
        ("our accuracy - (b) probe accuracy (>= -0.01)", mean["ours"] - mean["probe"]),
    ]
    for name, value in ratios:
        print(f"{name:58s} {value:10.3f}")
    print("\nPer seed: " + "; ".join(f"seed {r['seed']}: ours {r['ours']:.3f} (a) {r['base']:.3f} (b) "
                                      f"{r['probe']:.3f}" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
