"""Export & try: download the bundle or each file alone, use it where the product runs (one tab per target, with
its files alone: ui/export_targets.py), and try the model on an image."""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from engine.config import runfiles as rf
from engine.config import variants
from engine.core.fileio import read_json
from engine.data.images import load_image
from engine.export.savedmodel import saved_model_zip
from engine.runs import history, jobs
from ui import common, export_targets
from ui.export_targets import fmt_bytes

project = common.require_project()
st.title(f"Export & try · {common.literal(project.name)}")
common.show_flash()

run_dir = common.pick_run(project, while_exporting=True)
if run_dir is None:
    st.info("No finished training run yet. Train a model first; then you can download it here.")
    st.page_link(common.TRAIN, label="Go to Train", icon=":material/model_training:")
    st.stop()
exporting = jobs.job_status(run_dir).running

FILES = [
    *((v.file, f"{v.label}. Input: {v.input}. Runs on: {', '.join(v.runtimes)}.", "application/octet-stream")
      for v in variants.TABLE),
    (rf.LABELS, "Labels (line i = output i)", "text/plain"),
    (rf.MODEL_CARD, "Model card", "application/json"),
]


def _reader(path: Path):
    return lambda: path.read_bytes()  # deferred: read only when the button is clicked


def _saved_model_zip() -> bytes:
    return saved_model_zip(run_dir)


def _size(path: Path) -> str:
    if path.is_dir():
        return fmt_bytes(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))
    return fmt_bytes(path.stat().st_size)


def _variants_table(card: dict) -> None:
    """The TFLite variants side by side: what each costs in size and accuracy (from the model card)."""
    rows = []
    for variant, s in (card.get("tflite") or {}).items():
        if not isinstance(s, dict):
            continue
        path = run_dir / str(s.get("file") or variants.file_name(variant))
        size = s.get("bytes") or (path.stat().st_size if path.exists() else None)
        rows.append({"model": path.name, "size": fmt_bytes(size),
                     "same answer as the SavedModel": s.get("agreement_top1_vs_keras"),
                     "accuracy on the checked images": s.get("val_accuracy"),
                     "images checked": s.get("n_validation"), "input": s.get("input")})
    if not rows:
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
        "accuracy on the checked images": st.column_config.NumberColumn(format="percent"),
        "same answer as the SavedModel": st.column_config.NumberColumn(format="percent"),
    })
    st.caption("Each exported file run on a few labelled images: how often it gives the full model's answer "
               "(smaller, quantized files may lose a little) and its accuracy there. Those images may have been "
               "used for training; the accuracy to expect on new photos is the one on the Review page.")


# --- downloads -----------------------------------------------------------------------------------------------------
bundle = run_dir / rf.BUNDLE
slug = project.slug
bundle_name = f"{slug}-{run_dir.name}.zip"


@st.fragment(run_every=2.0 if exporting else None)
def downloads() -> None:
    """Each file as soon as it exists (the export writes them one by one, atomically; bundle.zip comes last)."""
    still_exporting = jobs.job_status(run_dir).running
    if exporting and not still_exporting:
        st.rerun(scope="app")  # the export finished: redraw the whole page (models to try, bundle)
    st.subheader("Download")
    if bundle.exists():
        st.download_button(f"Download everything (bundle.zip, {_size(bundle)})", data=_reader(bundle),
                           file_name=bundle_name, mime="application/zip", type="primary",
                           icon=":material/download:", on_click="ignore", key="dl_bundle")
        st.caption("The bundle holds the SavedModel, the TFLite models, labels, the model card, predict.py, "
                   "serve.py and a README.")
    elif still_exporting:
        st.info("The models are being exported. Each file appears below as soon as it is ready; the complete "
                "bundle.zip is written last.", icon=":material/hourglass_top:")
    else:
        st.warning("This run has no bundle.zip (it is written last; the export may have failed). Single files "
                   "that exist are offered below.")

    cols = st.columns(3)
    i = 0
    # the SavedModel folder is written file by file: offer it once the run is complete
    if (run_dir / rf.SAVED_MODEL).is_dir() and not still_exporting:
        cols[i % 3].download_button(f"SavedModel (zip, {_size(run_dir / rf.SAVED_MODEL)})", data=_saved_model_zip,
                                    file_name=f"{slug}-saved_model.zip", mime="application/zip",
                                    on_click="ignore", key="dl_saved_model", width="stretch")
        i += 1
    for name, text, mime in FILES:
        path = run_dir / name
        if path.exists():
            cols[i % 3].download_button(f"{name} ({_size(path)})", data=_reader(path), file_name=name, mime=mime,
                                        help=text, on_click="ignore", key=f"dl_{name}", width="stretch")
            i += 1
    if i == 0 and not bundle.exists() and not still_exporting:
        st.error("No exported files in this run. Train again; if it keeps failing, the log on the Train page says "
                 "why.")

    card = read_json(run_dir / rf.MODEL_CARD)  # {} while the export has not written it yet
    if card:
        _variants_table(card)
        with st.expander("Model card (JSON)"):
            st.json(card, expanded=1)


downloads()

# --- use it elsewhere: one tab per place the product runs -------------------------------------------------------------
st.divider()
export_targets.show(export_targets.load_run(run_dir, slug, exporting), bundle, bundle_name)


def _threshold_chart() -> None:
    """Precision against coverage of the cross-validated predictions, with the model's "unknown" threshold."""
    thr = (history.load_metrics(run_dir) or {}).get("threshold") or {}
    curve = [p for p in thr.get("curve") or [] if p.get("precision") is not None]
    if not curve or thr.get("value") is None:
        return
    import altair as alt

    pct = alt.Axis(format="%")
    # the axis spans the coverages there are (answering 72-100% of images), not 0-100% with the curve in a corner
    lowest = min(float(p["coverage"]) for p in curve)
    x_domain = [max(0.0, np.floor((lowest - 0.02) * 20) / 20), 1.0]
    line = alt.Chart(pd.DataFrame(curve)).mark_line().encode(
        x=alt.X("coverage", title="answered (coverage)", axis=pct, scale=alt.Scale(domain=x_domain)),
        y=alt.Y("precision", title="right when answered (precision)", axis=pct, scale=alt.Scale(zero=False)),
        tooltip=["threshold", "coverage", "precision"])
    chosen = pd.DataFrame([{"coverage": thr["coverage"], "precision": thr["precision"], "threshold": thr["value"]}])
    dot = alt.Chart(chosen).mark_point(size=140, filled=True, color="#d62728").encode(
        x="coverage", y="precision", tooltip=["threshold", "coverage", "precision"])
    st.subheader("Unknown threshold")
    st.altair_chart(line + dot, height=240)
    target = f"target {thr.get('target_precision', 0):.0%}"
    if not thr["value"]:
        st.caption(f"No \"unknown\" threshold needed: {thr['precision']:.0%} of all cross-validated answers were "
                   f"right ({target}).")
    else:
        st.caption(f"Below {thr['value']:.0%} confidence the model answers \"unknown\" (predict.py, the server): "
                   f"chosen so that {thr['precision']:.0%} of the answers it gives were right in cross-validation "
                   f"({target}), answering {thr['coverage']:.0%} of the images.")


_threshold_chart()

# --- try -----------------------------------------------------------------------------------------------------------
st.divider()
st.subheader("Try an image")
models = [p for p in rf.MODEL_PREFERENCE if (run_dir / p).exists() and not (p == rf.SAVED_MODEL and exporting)]


def _add_to_data(data: bytes, name: str, class_key: str, done_key: str) -> None:
    choice = st.session_state.get(class_key)
    target = None if choice in (None, common.INBOX_LABEL) else choice
    report = common.guarded("Adding the photo", project.add_files, [(name, data)], target)
    if report is not None:
        where = common.class_label(target)
        if report.added:
            st.session_state[done_key] = ("success", f"Added {name} to '{where}'. Retrain to use it.")
        else:
            st.session_state[done_key] = ("warning", f"{name} was not added: {report.summary()}")


def _try(up, label: str) -> None:
    """Predict one uploaded/captured image; offer to add it to the project under the predicted class."""
    with common.user_errors("Predicting"):
        data = up.getvalue()
        pixels = load_image(data, name=label)
        labels_path = run_dir / rf.LABELS
        predictor = common.predictor(run_dir / model_name, labels_path if labels_path.exists() else None)
        top = predictor.predict(pixels, top_k=5)
        i1, i2 = st.columns([1, 1])
        i1.image(data, caption=common.literal(label), width="stretch")
        with i2:
            if top:
                st.metric("Prediction", common.literal(top[0][0]))
                st.caption(f"{top[0][1]:.1%} confident · top {len(top)} below")
            st.dataframe(pd.DataFrame(top, columns=["label", "probability"]), hide_index=True,
                         width="stretch",
                         column_config={"probability": st.column_config.ProgressColumn(
                             "probability", min_value=0.0, max_value=1.0, format="percent")})
            # a photo the model gets wrong (or a new kind of photo) is the most useful one to add
            options = [*project.classes(), common.INBOX_LABEL]
            predicted = top[0][0] if top else None
            ident = hashlib.sha256(data).hexdigest()[:16]
            class_key, done_key = f"try_add_cls_{ident}", f"try_added_{ident}"
            st.selectbox("Add this photo to the data as", options,
                         index=options.index(predicted) if predicted in options else len(options) - 1,
                         key=class_key, help="Preselected: the predicted class. Correct it if the model is wrong.")
            st.button("Add this photo to the data", key=f"try_add_{ident}", icon=":material/add_photo_alternate:",
                      on_click=_add_to_data, args=(data, label, class_key, done_key),
                      disabled=done_key in st.session_state, width="stretch")
            if done_key in st.session_state:
                kind, message = st.session_state[done_key]
                (st.success if kind == "success" else st.warning)(common.literal(message))  # names the photo


if importlib.util.find_spec("engine.inference.predict") is None:
    st.warning("Predictions are not available in this installation (engine.inference.predict is missing). The "
               "downloads above work; update Retrain Studio to try images here.")
elif not models:
    st.warning("This run has no exported model to try yet." if exporting else "This run has no exported model to "
               "try.")
else:
    c1, c2 = st.columns([1, 2], gap="large")
    with c1:
        model_name = st.selectbox("Model", models, key="try_model")
        source = st.segmented_control("Image from", ["File", "Camera"], default="File", key="try_source",
                                      required=True)
        if source == "Camera":
            up = st.camera_input("Take a photo", key="try_camera")
            label = f"camera-{time.strftime('%Y%m%d-%H%M%S')}.jpg"
        else:
            up = st.file_uploader("Image", type=common.IMAGE_UPLOAD_TYPES, key="try_image")
            label = up.name if up is not None else ""
    with c2:
        if up is not None:
            if source == "Camera":  # one name per photo, not per rerun
                label = st.session_state.setdefault(f"camera_name_{up.file_id}", label)
            _try(up, label)
