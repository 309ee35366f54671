"""One fine-tuning run under a tf.distribute strategy, then export and predict, in a process of its own.

tests/test_scaling.py starts this script because TensorFlow fixes logical devices (two CPUs for `mirrored`)
and collective ops (`multi_worker`, from TF_CONFIG) when it starts: a pytest process that already ran TF cannot.

    python tests/strategy_worker.py STRATEGY IMAGE_DIR BACKBONE_DIR RUN_DIR CACHE_DIR
Prints one JSON line {"replicas": n, "predict_rc": rc} and exits with the train command's status.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(strategy: str, image_dir: str, backbone: str, run_dir: str, cache_dir: str) -> int:
    from engine.core.tfcompat import tf

    if strategy == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from engine.cli.main import main as cli
    from engine.learn.strategy import make_strategy

    rc = cli(["train", "--image_dir", image_dir, "--tfhub_module", backbone, "--image_size", "32",
              "--do_fine_tuning", "--fine_tune_epochs", "1", "--batch_size", "8", "--validation_split", "0.25",
              "--distribution_strategy", strategy, "--run_dir", run_dir, "--cache_dir", cache_dir,
              "--quantize", "float32"])
    if rc:
        return rc
    replicas = make_strategy(strategy).num_replicas_in_sync
    image = next(p for p in sorted(Path(image_dir).rglob("*.png")))
    predict_rc = cli(["predict", "--image", str(image), "--model_file", str(Path(run_dir) / "model_float32.tflite"),
                      "--label_file", str(Path(run_dir) / "labels.txt")])
    print(json.dumps({"replicas": replicas, "predict_rc": predict_rc}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
