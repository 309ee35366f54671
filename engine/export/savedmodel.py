"""The exported TF SavedModel: traced and saved with TensorFlow (a fine-tuned model), or a cached template with this
run's head written into it (engine.export.tfbundle: no TensorFlow), and the folder as a zip for downloads.

    saved_model/   `serving_default`: images float32 [None,S,S,3] in [0,1] -> probabilities; also loads with
                   tf_keras (labels.txt and model_card.json in its assets/, written by engine.export.artefacts)

The template is traced once per backbone, image size and class count and cached beside the backbones; its head
tensors are found by value (a marker head), so a run only copies the folder and rewrites two tensors.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from engine.config import runfiles as rf
from engine.config.backbones import ResolvedBackbone
from engine.core.fileio import atomic_write_text, made_once, read_json
from engine.export import tfbundle
from engine.features.backbones import cache_root
from engine.features.embeddings import Embedder
from engine.learn.head import Head

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "1"  # part of the template cache key: bump when the cached templates change
SIGNATURE, INPUT_NAME, OUTPUT_NAME = "serving_default", "images", "probabilities"


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temporary folder in; a folder cannot be os.replace'd over a non-empty one."""
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)


def save_saved_model(model, path: Path, image_size: int) -> None:
    """tf_keras SavedModel (so keras.models.load_model works) with an explicit `serving_default` signature."""
    from engine.core.tfcompat import tf  # why: only a fine-tuned model or a new template is traced

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)])
    def serve(images):
        return {OUTPUT_NAME: model(images, training=False)}

    tmp = Path(tempfile.mkdtemp(prefix=".saved_model.", dir=path.parent))
    try:
        try:
            model.save(str(tmp), save_format="tf", include_optimizer=False, signatures={SIGNATURE: serve})
        except (TypeError, ValueError, NotImplementedError) as exc:
            # A layer Keras cannot serialize must not cost the user the model: the serving signature is what
            # TF Serving, TFLite and engine.inference.predict use; only keras.models.load_model is lost.
            log.warning("Keras could not save this model (%s); writing a plain TF SavedModel instead", exc)
            shutil.rmtree(tmp)
            tf.saved_model.save(model, str(tmp), signatures={SIGNATURE: serve})
        _replace_dir(tmp, path)  # its assets (labels, card) are written by the exporter, for every way of exporting
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def saved_model_zip(run_dir: str | Path) -> bytes:
    """The run's saved_model/ folder as a zip, built in memory when asked for: nothing is written into the run
    folder by its readers. Stored, not deflated: the weights do not compress and copying ~10 MB takes milliseconds."""
    folder = Path(run_dir) / rf.SAVED_MODEL
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, Path(rf.SAVED_MODEL) / f.relative_to(folder))
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# The cached template
# ----------------------------------------------------------------------------------------------------------------
def _template_dir(resolved: ResolvedBackbone, n_classes: int) -> Path:
    return (cache_root() / "composed" /
            f"{resolved.backbone_id}-{resolved.image_size}-k{n_classes}-savedmodel-v{TEMPLATE_VERSION}")


def has_template(resolved: ResolvedBackbone, n_classes: int) -> bool:
    return (_template_dir(resolved, n_classes) / "template.json").exists()


def ensure_template(resolved: ResolvedBackbone, n_classes: int) -> Path:
    """A classifier SavedModel for this backbone and class count, traced once; its head tensors are found by value."""
    folder = _template_dir(resolved, n_classes)
    with made_once(folder, folder / "template.json") as to_make:
        if to_make:
            log.info("Tracing a %d-class SavedModel template for %s (once)", n_classes, resolved.handle)
            _trace_template(resolved, n_classes, folder)
    return folder


def _trace_template(resolved: ResolvedBackbone, n_classes: int, folder: Path) -> None:
    from engine.learn.classifier import build_classifier  # why: TensorFlow, once per backbone and class count

    rng = np.random.default_rng(0)
    marker = Head(rng.normal(size=(resolved.feature_size or _feature_size(resolved), n_classes)),
                  rng.normal(size=n_classes))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        save_saved_model(build_classifier(resolved, marker), tmp / "saved_model", resolved.image_size)
        prefix = tmp / "saved_model" / "variables" / "variables"
        keys = {}
        for key, entry in tfbundle.read_index(prefix.with_name("variables.index")).items():
            if entry.dtype != 1 or entry.size not in (marker.kernel.nbytes, marker.bias.nbytes):
                continue
            values = tfbundle.read_tensor(prefix, key)
            for name, ref in (("kernel", marker.kernel), ("bias", marker.bias)):
                if values.size == ref.size and np.array_equal(values, ref.ravel()):
                    keys[name] = key
        if set(keys) != {"kernel", "bias"}:
            raise RuntimeError("could not find the head's tensors in the SavedModel template")
        (tmp / "saved_model" / "fingerprint.pb").unlink(missing_ok=True)  # its checkpoint hash goes stale per run
        atomic_write_text(tmp / "template.json", json.dumps({**keys, "n_classes": n_classes}))
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "template.json").exists():
                raise
            shutil.rmtree(tmp)  # made meanwhile where file locks are missing: identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _feature_size(resolved: ResolvedBackbone) -> int:
    return Embedder(resolved, num_threads=1).feature_size


def saved_model_from_template(resolved: ResolvedBackbone, head: Head, out_dir: Path) -> Path:
    """Copy the template and write this head into it (temperature included); atomic, no TensorFlow."""
    template = ensure_template(resolved, head.n_classes)
    keys = read_json(template / "template.json")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saved_model.", dir=out_dir.parent))
    try:
        shutil.copytree(template / "saved_model", tmp, dirs_exist_ok=True)
        w, b = head.calibrated()
        tfbundle.overwrite_tensors(tmp / "variables" / "variables", {keys["kernel"]: w, keys["bias"]: b})
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
