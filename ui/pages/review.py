"""Review: per-class metrics, the confusion matrix, and the validation images the model got wrong or was unsure of,
each with one click to relabel it in the project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine import jobs
from ui import common

project = common.require_project()
st.title(f"Review · {project.name}")
common.show_flash()

run_dir = common.pick_run(project, while_exporting=True)
if run_dir is None:
    st.info("No finished training run yet. Train a model first; then its mistakes show up here.")
    st.page_link(common.TRAIN, label="Go to Train", icon=":material/model_training:")
    st.stop()
metrics = jobs.load_metrics(run_dir)
if not metrics or not metrics.get("labels"):
    st.error(f"This run has no readable metrics.json ({run_dir}). Pick another run or train again.")
    st.stop()

labels: list[str] = list(metrics["labels"])
predictions: list[dict[str, Any]] = list(metrics.get("predictions") or [])
classes = project.classes()
PER_PAGE = 24

# --- summary -------------------------------------------------------------------------------------------------------
c1, c2, c3 = st.columns(3)
c1.metric("Validation accuracy", common.fmt_pct(metrics.get("val_accuracy")))
c2.metric("Validation images", len(predictions))
c3.metric("Mistakes", sum(1 for p in predictions if p.get("true") != p.get("predicted")))

left, right = st.columns(2, gap="large")
with left:
    st.subheader("Per class")
    per_class = pd.DataFrame.from_dict(metrics.get("per_class") or {}, orient="index")
    if per_class.empty:
        st.caption("No per-class metrics in this run.")
    else:
        cols = [c for c in ("precision", "recall", "f1", "support") if c in per_class]
        st.dataframe(per_class[cols], width="stretch", column_config={
            "precision": st.column_config.NumberColumn(format="%.3f"),
            "recall": st.column_config.NumberColumn(format="%.3f"),
            "f1": st.column_config.NumberColumn(format="%.3f"),
            "support": st.column_config.NumberColumn(format="%d"),
        })
with right:
    st.subheader("Confusion matrix")
    cm = metrics.get("confusion_matrix")
    cell: tuple[str, str] | None = None
    if cm:
        cm_df = pd.DataFrame(cm, index=[f"true: {lb}" for lb in labels], columns=labels)
        event = st.dataframe(cm_df, width="stretch", on_select="rerun", selection_mode="single-cell", key="cm")
        cells = event.selection.cells if event is not None else []
        if cells:
            row, col = cells[0]
            if 0 <= int(row) < len(labels) and col in labels:
                cell = (labels[int(row)], str(col))
        st.caption("Rows: true class · columns: predicted class. Click a cell to see its images below.")
    else:
        st.caption("No confusion matrix in this run.")

# --- images --------------------------------------------------------------------------------------------------------
st.divider()
modes = ["Mistakes", "Low confidence", "Confusion-matrix cell"]
if cell is not None and st.session_state.get("_review_cell") != cell:
    st.session_state["review_mode"] = "Confusion-matrix cell"
st.session_state["_review_cell"] = cell
if st.session_state.get("review_mode") not in modes:
    st.session_state["review_mode"] = "Mistakes"
mode = st.segmented_control("Show", modes, key="review_mode", required=True)
if mode == "Low confidence":
    threshold = st.slider("Confidence below", 0.3, 1.0, 0.7, 0.05, key="review_threshold")
    items = sorted((p for p in predictions if float(p.get("probability", 0)) < threshold),
                   key=lambda p: float(p.get("probability", 0)))
    st.caption(f"{len(items)} validation image(s) predicted with less than {threshold:.0%} confidence, least sure "
               "first.")
elif mode == "Confusion-matrix cell":
    if cell is None:
        st.info("Click a cell of the confusion matrix above.")
        items = []
    else:
        items = sorted((p for p in predictions if (p.get("true"), p.get("predicted")) == cell),
                       key=lambda p: -float(p.get("probability", 0)))
        st.caption(f"{len(items)} image(s) of class '{cell[0]}' predicted as '{cell[1]}'.")
else:
    items = sorted((p for p in predictions if p.get("true") != p.get("predicted")),
                   key=lambda p: -float(p.get("probability", 0)))
    st.caption(f"{len(items)} misclassified validation image(s), most confident mistakes first — often these are "
               "labelling errors. Moving an image changes the project; retrain to update these numbers.")

if items:
    n_pages = max(1, -(-len(items) // PER_PAGE))
    page = st.number_input("Page", 1, n_pages, 1, key=f"review_page_{mode}") if n_pages > 1 else 1
    shown = items[(int(page) - 1) * PER_PAGE: int(page) * PER_PAGE]

    def _move(sha: str, cls: str, name: str) -> None:
        if common.guarded("Moving", project.move, [sha], cls) is not None:
            common.flash("success", f"Moved {name} to '{cls}'.")

    def _move_picked(sha: str, key: str, name: str) -> None:
        _move(sha, st.session_state[key], name)

    def _trash(sha: str, name: str) -> None:
        if common.guarded("Deleting", project.delete_images, [sha]):
            common.flash("success", f"Moved {name} to the project's trash/ folder.")

    per_row = 4
    for start in range(0, len(shown), per_row):
        cols = st.columns(per_row)
        for col, p in zip(cols, shown[start:start + per_row], strict=False):
            with col, st.container(border=True):
                name = Path(str(p.get("path", ""))).name
                rec = project.find_by_filename(name)
                data = common.thumbnail(project, rec.sha256) if rec else None
                if data is not None:
                    st.image(data, width="stretch")
                elif Path(str(p.get("path", ""))).is_file():
                    st.image(str(p["path"]), width="stretch")
                else:
                    st.caption("(image no longer available)")
                st.markdown(f"true **{p.get('true')}** → predicted **{p.get('predicted')}** "
                            f"({float(p.get('probability', 0)):.0%})")
                if rec is None:
                    st.caption("Not in this project any more.")
                    continue
                now = rec.class_name
                if now != p.get("true"):
                    st.caption(f"now in: {common.class_label(now)}")
                pred = p.get("predicted")
                key = rec.sha256[:16]
                if pred in classes and pred != now:
                    st.button(f"Move to {pred}", key=f"rv_pred_{key}", type="primary", width="stretch",
                              on_click=_move, args=(rec.sha256, pred, name))
                others = [c for c in classes if c != now]
                if others:
                    b1, b2 = st.columns([3, 2], vertical_alignment="bottom")
                    b1.selectbox("Move to", others, key=f"rv_to_{key}", label_visibility="collapsed")
                    b2.button("Move", key=f"rv_move_{key}", on_click=_move_picked,
                              args=(rec.sha256, f"rv_to_{key}", name))
                st.button("Trash", key=f"rv_trash_{key}", icon=":material/delete:", on_click=_trash,
                          args=(rec.sha256, name))
elif mode != "Confusion-matrix cell":
    st.success("Nothing to review here.")
