"""`python -m engine embed`: fill the feature cache for a folder, on this machine or on a Ray cluster."""

from __future__ import annotations

import sys

from engine.cli.progress import ConsoleProgress
from engine.cli.train import add_config_args
from engine.config.training import TrainConfig
from engine.features.backbones import BackboneError
from engine.features.ray_embed import DistributedError, embed_local, embed_with_ray, file_name

# ----------------------------------------------------------------------------------------------------------------
# Flags with train's meaning (a cache filled here is the cache training reads), declared once, by TrainConfig
SHARED_WITH_TRAIN = ("tfhub_module", "image_size", "center_crop", "cache_dir")


def add_embed_args(parser) -> None:
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
    add_config_args(parser, SHARED_WITH_TRAIN)
    parser.add_argument("--shard_dir", default=None,
                        help="Where Parquet shards go (default: <cache>/shards; any pyarrow/fsspec path).")


def run_embed(args) -> int:
    # the flags shared with train are left out of `args` when not given: TrainConfig's defaults apply, as in train
    cfg = TrainConfig.from_dict({name: getattr(args, name) for name in SHARED_WITH_TRAIN if hasattr(args, name)})
    progress = ConsoleProgress()
    common = dict(center_crop=cfg.center_crop, cache_dir=cfg.cache_dir, shard_dir=args.shard_dir,
                  progress=progress)
    try:
        if args.ray:
            report = embed_with_ray(args.image_dir, cfg.tfhub_module, cfg.image_size,
                                    address=None if args.ray == "local" else args.ray, actors=args.actors,
                                    threads_per_actor=args.threads_per_actor, decode_cpus=args.decode_cpus,
                                    fuse_decode=args.fuse_decode, batch_size=args.batch_size, **common)
        else:
            report = embed_local(args.image_dir, cfg.tfhub_module, cfg.image_size, threads=args.threads, **common)
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
