"""Fine-tuning across devices with tf.distribute (make_image_classifier's --distribution_strategy; docs/scaling.md).

This module imports TensorFlow: a head-only retrain never imports it (fine-tuning and a multi_worker command line
do).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os

from engine.core.tfcompat import tf
from engine.features.ray_embed import DistributedError

log = logging.getLogger(__name__)

STRATEGIES = ("none", "mirrored", "multi_worker")


# ----------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def make_strategy(name: str | None):
    """None for 'none'; MirroredStrategy over all local GPUs (or every logical CPU device when there is no GPU);
    MultiWorkerMirroredStrategy configured from TF_CONFIG. Cached: TF allows one collective setup per process.

    The batch size stays global: each of the strategy's `num_replicas_in_sync` replicas gets batch/replicas
    images per step, so scale --batch_size (and usually the learning rate) with the replicas to keep per-replica
    work constant.
    """
    if not name or name == "none":
        return None
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    elif name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise DistributedError("--distribution_strategy multi_worker needs TF_CONFIG on every worker, e.g. "
                                   '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                                   '"task": {"type": "worker", "index": 0}} (docs/scaling.md)')
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as exc:
            raise DistributedError(f"TF_CONFIG is not valid JSON ({exc})") from exc
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:  # "Collective ops must be configured at program startup"
            raise DistributedError("multi_worker must be set up before TensorFlow runs anything: start training "
                                   "with `python -m engine train --distribution_strategy multi_worker` on each "
                                   f"worker ({exc})") from exc
    else:
        raise DistributedError(f"Unknown --distribution_strategy '{name}'; use one of {', '.join(STRATEGIES)}")
    log.info("Fine-tuning with %s on %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def strategy_scope(name: str | None):
    """`with strategy_scope(cfg.distribution_strategy):` around building, compiling and fitting a keras model."""
    strategy = make_strategy(name)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()
