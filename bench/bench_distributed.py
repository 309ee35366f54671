"""Embedding throughput: the local path vs Ray Data with 1 and 2 workers (numbers for docs/scaling.md).

    python bench/bench_distributed.py --image_dir /work/shared/datasets/flowers_large --limit 600

Each configuration embeds the same images into a fresh, empty cache (so nothing is cached); one local Ray
cluster (ray.init(num_cpus=cores)) serves all Ray configurations, so its start-up (~5 s) is reported apart.
"images/s" counts embedding only (decode + backbone), the hashing pass separately.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.features.embeddings import EmbeddingStore  # noqa: E402
from engine.features.ray_embed import embed_local, embed_with_ray, list_images  # noqa: E402


def subset(image_dir: str, limit: int, dest: Path) -> str:
    _, paths = list_images(image_dir)
    step = max(1, len(paths) // limit) if limit else 1
    for p in paths[::step][:limit or None]:
        rel = Path(p).relative_to(Path(image_dir).resolve())
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest / rel)
    return str(dest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image_dir", required=True)
    ap.add_argument("--limit", type=int, default=600, help="images to use (spread over the folder); 0 = all")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--configs", default="local1,local2,ray1x1,ray2x1,ray1x2,ray2x1fused",
                    help="localT (T LiteRT threads) and rayAxT[fused] (A actors x T threads)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_distributed."))
    try:
        folder = subset(args.image_dir, args.limit, work / "images") if args.limit else args.image_dir
        n = len(list_images(folder)[1])
        rows = []
        ray_started = None
        for cfg in args.configs.split(","):
            store = EmbeddingStore(work / f"{cfg}.sqlite")
            shards = str(work / f"{cfg}-shards")
            t0 = time.perf_counter()
            if cfg.startswith("local"):
                rep = embed_local(folder, store=store, shard_dir=shards, threads=int(cfg[5:]))
            else:
                if ray_started is None:
                    import ray

                    t = time.perf_counter()
                    ray.init(address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
                    ray_started = time.perf_counter() - t
                fused = cfg.endswith("fused")
                a, t_ = cfg[3:].removesuffix("fused").split("x")
                rep = embed_with_ray(folder, store=store, shard_dir=shards, actors=int(a),
                                     threads_per_actor=int(t_), fuse_decode=fused,
                                     decode_cpus=max(0, args.cores - int(a) * int(t_)))
            wall = time.perf_counter() - t0
            row = {"config": cfg, "images": n, "computed": rep.computed, "embed_s": round(rep.seconds, 2),
                   "images_per_s": round(rep.images_per_s, 1), "wall_s": round(wall, 2),
                   "images_per_s_per_core": round(rep.images_per_s / args.cores, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if ray_started is not None:
            print(json.dumps({"ray_init_s": round(ray_started, 2)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
