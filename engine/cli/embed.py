"""`python -m engine embed`: fill the feature cache for a folder, on this machine or on a Ray cluster."""

from __future__ import annotations

import sys

from engine.cli.progress import ConsoleProgress
from engine.config.training import TrainConfig
from engine.features.backbones import BackboneError
from engine.features.ray_embed import DistributedError, embed_local, embed_with_ray, file_name


# ----------------------------------------------------------------------------------------------------------------
def add_embed_args(parser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--image_dir", required=True,
                        help="Folder of images (searched recursively): a local path, or with --ray any path "
                             "pyarrow/fsspec reads (s3://bucket/photos, gs://..., hdfs://...).")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="Embed on Ray: 'auto' (the cluster this node belongs to), 'ray://head:10001', "
                             "host:6379, or no value for a one-machine Ray cluster. Without it: this machine, "
                             "the training code path.")
    parser.add_argument("--actors", type=int, default=None,
                        help="Ray: embedding actors, one LiteRT interpreter each (default: the cluster's CPUs "
                             "minus --decode_cpus, divided by --threads_per_actor).")
    parser.add_argument("--threads_per_actor", type=int, default=1, help="Ray: LiteRT threads (and CPUs) per actor.")
    parser.add_argument("--decode_cpus", type=float, default=1.0, help="Ray: CPUs each read+decode task reserves.")
    parser.add_argument("--fuse_decode", action="store_true",
                        help="Ray: read and decode inside the actors instead of separate tasks (CPU-only clusters).")
    parser.add_argument("--batch_size", type=int, default=32, help="Ray: images per block, actor call and shard.")
    parser.add_argument("--threads", type=int, default=None, help="Local: LiteRT threads (default: all cores).")
    parser.add_argument("--tfhub_module", default=defaults.tfhub_module, help="Backbone, as for train.")
    parser.add_argument("--image_size", type=int, default=None, help="Input size (default: the backbone's).")
    parser.add_argument("--center_crop", action="store_true", help="As train's --center_crop (part of the cache key).")
    parser.add_argument("--cache_dir", default=None,
                        help="Embedding cache folder, as train's --cache_dir (default: ~/.cache/retrain-studio).")
    parser.add_argument("--shard_dir", default=None,
                        help="Where Parquet shards go (default: <cache>/shards; any pyarrow/fsspec path).")


def run_embed(args) -> int:
    progress = ConsoleProgress()
    common = dict(center_crop=args.center_crop, cache_dir=args.cache_dir, shard_dir=args.shard_dir,
                  progress=progress)
    try:
        if args.ray:
            report = embed_with_ray(args.image_dir, args.tfhub_module, args.image_size,
                                    address=None if args.ray == "local" else args.ray, actors=args.actors,
                                    threads_per_actor=args.threads_per_actor, decode_cpus=args.decode_cpus,
                                    fuse_decode=args.fuse_decode, batch_size=args.batch_size, **common)
        else:
            report = embed_local(args.image_dir, args.tfhub_module, args.image_size, threads=args.threads, **common)
    except (DistributedError, BackboneError) as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print("cancelled: what was embedded is kept; run the same command again to finish", file=sys.stderr)
        return 130
    progress.close()
    for path, reason in report.failed:  # reasons start with the file name; the path says where it is
        print(f"warning: Skipped {path}: {reason.removeprefix(file_name(path) + ': ')}", file=sys.stderr)
    print(f"Embedded {len(report.paths)} images ({report.backend}): {report.computed} new, {report.cached} cached"
          f"{f', {report.merged} merged from shards' if report.merged else ''}, {len(report.failed)} unreadable; "
          f"{report.images_per_s:.1f} images/s")
    ok = len(report.paths) - len(report.failed)
    return 0 if ok or not report.paths else 1
