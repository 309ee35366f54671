"""Export & try: download the bundle or each file alone, try the model on an image, and how to serve it."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import common

project = common.require_project()
st.title(f"Export & try · {project.name}")
common.show_flash()

run_dir = common.pick_run(project)
if run_dir is None:
    st.info("No finished training run yet. Train a model first; then you can download it here.")
    st.page_link(common.TRAIN, label="Go to Train", icon=":material/model_training:")
    st.stop()

FILES = [
    ("model_float32.tflite", "TFLite, float32", "application/octet-stream"),
    ("model_dynamic.tflite", "TFLite, dynamic-range quantized (smaller)", "application/octet-stream"),
    ("model_int8.tflite", "TFLite, full int8 (microcontrollers, Edge TPU)", "application/octet-stream"),
    ("labels.txt", "Labels (line i = output i)", "text/plain"),
    ("model_card.json", "Model card", "application/json"),
]


def _reader(path: Path):
    return lambda: path.read_bytes()  # deferred: read only when the button is clicked


def _saved_model_zip() -> bytes:
    """saved_model/ as a zip, built once and kept next to it."""
    target = run_dir / "saved_model.zip"
    if not target.exists():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted((run_dir / "saved_model").rglob("*")):
                if f.is_file():
                    zf.write(f, Path("saved_model") / f.relative_to(run_dir / "saved_model"))
        fd, tmp = tempfile.mkstemp(dir=run_dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, target)
    return target.read_bytes()


def _size(path: Path) -> str:
    if path.is_dir():
        total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    else:
        total = path.stat().st_size
    if total >= 2**20:
        return f"{total / 2**20:.1f} MB"
    return f"{total / 1024:.0f} KB" if total >= 1024 else f"{total} bytes"


# --- downloads -----------------------------------------------------------------------------------------------------
st.subheader("Download")
bundle = run_dir / "bundle.zip"
slug = project.slug
if bundle.exists():
    st.download_button(f"Download everything (bundle.zip, {_size(bundle)})", data=_reader(bundle),
                       file_name=f"{slug}-{run_dir.name}.zip", mime="application/zip", type="primary",
                       icon=":material/download:", on_click="ignore", key="dl_bundle")
    st.caption("The bundle holds the SavedModel, the TFLite models, labels, the model card and a README.")
else:
    st.warning("This run has no bundle.zip (it is written last; the export may have failed). Single files that "
               "exist are offered below.")

cols = st.columns(3)
i = 0
if (run_dir / "saved_model").is_dir():
    cols[i % 3].download_button(f"SavedModel (zip, {_size(run_dir / 'saved_model')})", data=_saved_model_zip,
                                file_name=f"{slug}-saved_model.zip", mime="application/zip", on_click="ignore",
                                key="dl_saved_model", width="stretch")
    i += 1
for name, text, mime in FILES:
    path = run_dir / name
    if path.exists():
        cols[i % 3].download_button(f"{name} ({_size(path)})", data=_reader(path), file_name=name, mime=mime,
                                    help=text, on_click="ignore", key=f"dl_{name}", width="stretch")
        i += 1
if i == 0 and not bundle.exists():
    st.error("No exported files in this run. Train again; if it keeps failing, the log on the Train page says why.")

card_path = run_dir / "model_card.json"
if card_path.exists():
    with st.expander("Model card"):
        try:
            st.json(json.loads(card_path.read_text()))
        except ValueError:
            st.code(card_path.read_text()[:20000], language=None)

# --- try -----------------------------------------------------------------------------------------------------------
st.divider()
st.subheader("Try an image")
models = [p for p in ("model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite", "saved_model")
          if (run_dir / p).exists()]
if importlib.util.find_spec("engine.predict") is None:
    st.warning("Predictions are not available in this installation (engine.predict is missing). The downloads above "
               "work; update Retrain Studio to try images here.")
elif not models:
    st.warning("This run has no exported model to try.")
else:
    c1, c2 = st.columns([1, 2], gap="large")
    with c1:
        model_name = st.selectbox("Model", models, key="try_model")
        up = st.file_uploader("Image", type=common.IMAGE_UPLOAD_TYPES, key="try_image")
    with c2:
        if up is not None:
            with common.user_errors("Predicting"):
                from engine.images import load_image

                pixels = load_image(up.getvalue(), name=up.name)
                labels_path = run_dir / "labels.txt"
                predictor = common.predictor(run_dir / model_name, labels_path if labels_path.exists() else None)
                top = predictor.predict(pixels, top_k=5)
                i1, i2 = st.columns([1, 1])
                i1.image(up.getvalue(), caption=up.name, width="stretch")
                with i2:
                    if top:
                        st.metric("Prediction", top[0][0])
                        st.caption(f"{top[0][1]:.1%} confident · top {len(top)} below")
                    st.dataframe(pd.DataFrame(top, columns=["label", "probability"]), hide_index=True,
                                 width="stretch",
                                 column_config={"probability": st.column_config.ProgressColumn(
                                     "probability", min_value=0.0, max_value=1.0, format="percent")})

# --- serve ---------------------------------------------------------------------------------------------------------
st.divider()
st.subheader("Use it elsewhere")
st.code(f"python -m engine serve --bundle {bundle}", language="bash")
st.caption("The bundle's README explains how to run the .tflite models on phones and microcontrollers.")
