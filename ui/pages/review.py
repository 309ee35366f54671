"""Review: per-class metrics, the confusion matrix, and the validation images the model got wrong or was unsure of
(a clicked cell's right under the matrix), each with one click to relabel it, trash it, or say its label is right;
the last action says what it did on its card and can be undone."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine.config import runfiles as rf
from engine.config.training import TrainConfig
from engine.core.events import EventKind
from engine.core.fileio import read_json
from engine.curate.decisions import CORRECT, Decisions, label_confirmed, label_key
from engine.runs import history, jobs
from engine.runs.compare import diff_runs
from engine.runs.status import RunState
from engine.store.names import TRASH
from ui import common

project = common.require_project()
st.title(f"Review · {common.literal(project.name)}")
common.show_flash()

run_dir = common.pick_run(project, while_exporting=True)
if run_dir is None:
    st.info("No finished training run yet. Train a model first; then its mistakes show up here.")
    st.page_link(common.TRAIN, label="Go to Train", icon=":material/model_training:")
    st.stop()
metrics = history.load_metrics(run_dir)
if not metrics or not metrics.get("labels"):
    st.error(f"This run has no readable metrics.json ({common.literal(run_dir)}). Pick another run or train again.")
    st.stop()


def _retrain() -> None:
    known = {f.name for f in dataclasses.fields(TrainConfig)}  # a setting an older version wrote is dropped
    data = {k: v for k, v in read_json(run_dir / rf.CONFIG).items() if k in known}
    cfg = common.guarded("Reading the run's settings", TrainConfig.from_dict, data)
    run_id = common.guarded("Starting training", jobs.start_training, project, cfg,
                            retrained_from=run_dir.name) if cfg is not None else None
    if run_id:
        st.session_state["retrain_id"] = run_id
        st.session_state["run_id"] = run_id  # shown here as soon as its metrics are written


def _retrain_and_changes() -> None:
    """A "Retrain now" button (the shown run's settings); while that runs, its progress; after it, what changed."""
    active = jobs.active_run(project)
    pending = st.session_state.get("retrain_id")
    if pending and not (jobs.run_path(project, pending) / rf.METRICS).exists() \
            and jobs.job_status(jobs.run_path(project, pending)).running:
        _watch_retrain(pending)
        return
    if pending:
        st.session_state.pop("retrain_id", None)
        state = jobs.job_status(jobs.run_path(project, pending)).state
        if state is not RunState.SUCCEEDED and not (jobs.run_path(project, pending) / rf.METRICS).exists():
            st.error(f"Retraining ({pending}) {state}: the Train page shows why.")
    c1, c2 = st.columns([1, 3], vertical_alignment="center")
    c1.button("Retrain now", key="review_retrain", type="primary", icon=":material/replay:", on_click=_retrain,
              disabled=active is not None, width="stretch",
              help="Train again with this run's settings on the project's current labels.")
    with c2:
        if active:
            _wait_for(active)
        else:
            changed = project.changed_since(run_dir)  # against the run's snapshot.json
            st.caption(f"Same settings as {run_dir.name}, on the current labels: "
                       + (f"**{changed} image(s) changed since this run** (sorted, moved, added or deleted); "
                          "retrain to include them." if changed else "after moving images, retrain to see what "
                          "changed."))
    found = history.baseline(project, run_dir.name)
    if found is None:
        return
    previous, why = found[0].run_dir, found[1]
    before = history.load_metrics(previous) or {}
    diff = diff_runs(before, metrics, read_json(previous / rf.CONFIG), read_json(run_dir / rf.CONFIG))
    with st.expander(f"What changed since run {previous.name} ({why})", expanded=True):
        common.show_run_diff(project, diff, previous.name, run_dir.name, key="review_diff")


@st.fragment(run_every=1.5)
def _watch_retrain(run_id: str) -> None:
    run = jobs.run_path(project, run_id)
    status = jobs.job_status(run)
    if (run / rf.METRICS).exists() or not status.running:
        st.rerun(scope="app")
    events = history.events(run)
    stage = next((e.get("message") for e in reversed(events) if e.get("type") == EventKind.STAGE), None)
    st.info(f"Retraining ({run_id}): {common.literal(stage or status.message or 'starting…')} The new result "
            "appears here when training is done.", icon=":material/progress_activity:")


@st.fragment(run_every=2.0)
def _wait_for(run_id: str) -> None:
    """While another job runs (or the last one still exports), say so; redraw the page when it ends."""
    if not jobs.job_status(jobs.run_path(project, run_id)).running:
        st.rerun(scope="app")
    st.caption(f"A training job ({run_id}) is running; retraining is possible when it is done.")


labels: list[str] = list(metrics["labels"])
predictions: list[dict[str, Any]] = list(metrics.get("predictions") or [])
classes = project.classes()
PER_PAGE = 24

# --- summary -------------------------------------------------------------------------------------------------------
c1, c2, c3 = st.columns(3)
_cross_validated = bool(metrics.get("cross_validated"))  # every labelled image judged by a model that never saw it
c1.metric("Cross-validated accuracy" if _cross_validated else "Validation accuracy",
          common.fmt_pct(metrics.get("val_accuracy")), help=metrics.get("evaluation"))
c2.metric("Images judged" if _cross_validated else "Validation images", len(predictions))
c3.metric("Mistakes", sum(1 for p in predictions if p.get("true") != p.get("predicted")))
_comparison = metrics.get("backbone_comparison") or []  # added after the bundle, when another backbone is cached
if len(_comparison) > 1:
    _own = str(read_json(run_dir / rf.CONFIG).get("tfhub_module") or "")
    _best = str(_comparison[0]["backbone"])
    st.caption("Backbones on these images, best first (each image judged by a model that never saw it): " + " · ".join(
        f"{r['backbone']}{' (this run)' if r['backbone'] == _own else ''} {common.fmt_pct(r.get('accuracy'))}"
        for r in _comparison) + "." + ("" if _best == _own else f" {_best} got more of them right: choose it as "
                                       "the backbone on the Train page and train again."))

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
        event = st.dataframe(common.confusion_styler(cm, labels), width="stretch", on_select="rerun",
                             selection_mode="single-cell", key="cm")
        cells = event.selection.cells if event is not None else []
        if cells:
            row, col = cells[0]
            if 0 <= int(row) < len(labels) and col in labels:
                cell = (labels[int(row)], str(col))
        st.caption("Rows: true class · columns: predicted class; the darker, the larger the share of the row (blue: "
                   "right, red: mistaken). Click a cell to see its images right below.")
    else:
        st.caption("No confusion matrix in this run.")

# --- images: first after the matrix, so a clicked cell's images appear where the click was ---------------------
st.divider()
modes = ["Mistakes", "Low confidence", "Confusion-matrix cell"]
if cell is not None and st.session_state.get("_review_cell") != cell:
    st.session_state["review_mode"] = "Confusion-matrix cell"
st.session_state["_review_cell"] = cell
if st.session_state.get("review_mode") not in modes:
    st.session_state["review_mode"] = "Mistakes"
UNDO_KEY = f"review_undo::{project.slug}"  # this page's own steps, per project, newest last
NOTE_KEY = f"review_note::{project.slug}"  # what the last action did: shown on its card
note: dict[str, str] | None = st.session_state.get(NOTE_KEY)
if note and note.get("run") != run_dir.name:  # said about another run's list: stale here
    note = None
_images = project.images()
now_in = {r.sha256: r.class_name for r in _images}
_by_name = {r.filename: r.sha256 for r in _images}  # runs older than the sha256 key name the file only
kept = Decisions(project.path).kept()


def _sha(p: dict[str, Any]) -> str | None:
    return p.get("sha256") or _by_name.get(Path(str(p.get("path") or "")).name)


def _hidden(p: dict[str, Any]) -> bool:
    """A person said this image's current label is right; the card just acted on stays, with its note."""
    sha = _sha(p)
    return bool(sha) and sha in now_in and label_confirmed(kept, sha, now_in[sha]) \
        and not (note and note.get("sha") == sha)


mode = st.segmented_control("Show", modes, key="review_mode", required=True)
if mode == "Low confidence":
    threshold = st.slider("Confidence below", 0.3, 1.0, 0.7, 0.05, key="review_threshold")
    candidates = [p for p in predictions if float(p.get("probability", 0)) < threshold]
    items = sorted((p for p in candidates if not _hidden(p)), key=lambda p: float(p.get("probability", 0)))
    st.caption(f"{len(items)} validation image(s) predicted with less than {threshold:.0%} confidence, least sure "
               "first.")
elif mode == "Confusion-matrix cell":
    if cell is None:
        st.info("Click a cell of the confusion matrix above.")
        candidates, items = [], []
    else:
        candidates = [p for p in predictions if (p.get("true"), p.get("predicted")) == cell]
        items = sorted((p for p in candidates if not _hidden(p)), key=lambda p: -float(p.get("probability", 0)))
        st.caption(f"{len(items)} image(s) of class '{common.literal(cell[0])}' predicted as "
                   f"'{common.literal(cell[1])}'.")
else:
    candidates = [p for p in predictions if p.get("true") != p.get("predicted")]
    items = sorted((p for p in candidates if not _hidden(p)), key=lambda p: -float(p.get("probability", 0)))
    st.caption(f"{len(items)} misclassified validation image(s), most confident first. Each is a wrong label (move "
               "the image) or the model's mistake (the label is right: say so, and it is not listed again). Moving "
               "an image changes the project; retrain to update these numbers.")
if len(candidates) > len(items):
    st.caption(f"{len(candidates) - len(items)} more whose label you said is correct are not shown.")

# Each action carries the class the image had on this screen: if someone moved it meanwhile, it is refused
# with where it went, instead of silently undoing their change.
session_id = st.session_state.setdefault("data_session_id", uuid.uuid4().hex[:16])


def _tell(sha: str, kind: str, text: str) -> None:
    """What an action did (plain text, names as they are), for the card of image `sha`."""
    st.session_state[NOTE_KEY] = {"sha": sha, "kind": kind, "text": text, "run": run_dir.name}


def _step(step: dict[str, Any]) -> None:
    stack = st.session_state.setdefault(UNDO_KEY, [])
    stack.append(step)
    del stack[:-20]


def _move(sha: str, cls: str, name: str, seen: str | None) -> None:
    res = common.guarded("Moving", project.act, [sha], cls, expected={sha: seen}, session=session_id,
                         on_error=lambda kind, text: _tell(sha, kind, text))
    if res is None:
        return
    if res.conflicts:
        _tell(sha, "warning", res.conflict_message() or "Nothing was changed.")
    elif res.changes:
        _step({"sha": sha, "name": name, "changes": res.changes})
        _tell(sha, "success", f"Moved {name} to the project's trash/ folder." if cls == TRASH
              else f"Moved {name} to '{cls}'.")


def _move_picked(sha: str, key: str, name: str, seen: str | None) -> None:
    _move(sha, st.session_state[key], name, seen)


def _confirm(sha: str, label: str, name: str) -> None:
    if common.guarded("Saving", Decisions(project.path).confirm_label, sha, label,
                      on_error=lambda kind, text: _tell(sha, kind, text)):
        _step({"sha": sha, "name": name, "label": label})
        _tell(sha, "success", f"Noted: '{label}' is the right label of {name}. It is no longer listed as a "
                              f"mistake (in later runs too, while it stays in '{label}').")


def _undo() -> None:
    stack = st.session_state.get(UNDO_KEY) or []
    if not stack:
        return
    step = stack.pop()
    sha, name = step["sha"], step["name"]

    def err(kind: str, text: str) -> None:
        _tell(sha, kind, text)

    if "label" in step:
        if common.guarded("Undo", Decisions(project.path).forget, CORRECT, label_key(sha, step["label"]),
                          on_error=err) is not None:
            _tell(sha, "info", f"Undone: {name} is listed as a mistake again.")
        return
    res = common.guarded("Undo", project.undo, step["changes"], session_id, on_error=err)
    if res is None:
        return
    if res.conflicts:
        _tell(sha, "warning", res.conflict_message() or "Nothing was undone.")
    else:
        back = common.class_label(step["changes"][0].before)
        _tell(sha, "info", f"Undone: {name} is back in '{back}'.")


def _show_note() -> None:
    """The last action's result, and the way back, where the person clicked."""
    if not note:
        return
    show = {"success": st.success, "warning": st.warning, "error": st.error}.get(note["kind"], st.info)
    show(common.literal(note["text"]))
    stack = st.session_state.get(UNDO_KEY) or []
    if stack and stack[-1]["sha"] == note["sha"]:
        st.button("Undo", key="rv_undo", icon=":material/undo:", on_click=_undo, width="stretch",
                  help="Take the last action on this page back; an image someone changed since is left alone.")


if items:
    n_pages = max(1, -(-len(items) // PER_PAGE))
    page = st.number_input("Page", 1, n_pages, 1, key=f"review_page_{mode}") if n_pages > 1 else 1
    shown = items[(int(page) - 1) * PER_PAGE: int(page) * PER_PAGE]
    if note and not any(_sha(p) == note["sha"] for p in shown):
        _show_note()  # the card is on another page or in another list: the result still shows near the list

    per_row = 4
    for start in range(0, len(shown), per_row):
        cols = st.columns(per_row)
        for col, p in zip(cols, shown[start:start + per_row], strict=False):
            with col, st.container(border=True):
                name = Path(str(p.get("path", ""))).name
                rec = common.prediction_record(project, p)
                data = common.thumbnail(project, rec.sha256) if rec else None
                if data is not None:
                    st.image(data, width="stretch")
                elif Path(str(p.get("path", ""))).is_file():
                    st.image(str(p["path"]), width="stretch")
                else:
                    st.caption("(image no longer available)")
                st.markdown(f"true **{common.literal(p.get('true'))}** → predicted "
                            f"**{common.literal(p.get('predicted'))}** "
                            f"({float(p.get('probability', 0)):.0%})")
                if note and note["sha"] == (rec.sha256 if rec else _sha(p)):  # a trashed image's card too
                    _show_note()
                if rec is None:
                    st.caption("Not in this project any more.")
                    continue
                now = rec.class_name
                if now != p.get("true"):
                    st.caption(f"now in: {common.literal(common.class_label(now))}")
                pred = p.get("predicted")
                key = rec.sha256[:16]
                # neither answer is the default: a confident mistake is as often the model's as the label's
                if now is not None and not label_confirmed(kept, rec.sha256, now):
                    st.button("Label is correct", key=f"rv_ok_{key}", icon=":material/check:", width="stretch",
                              on_click=_confirm, args=(rec.sha256, now, name),
                              help=f"The image is {common.literal(now)}; the model is wrong. It is not listed as a "
                                   "mistake again.")
                if pred in classes and pred != now:
                    st.button(f"Move to {common.literal(pred)}", key=f"rv_pred_{key}", width="stretch",
                              on_click=_move, args=(rec.sha256, pred, name, now))
                others = [c for c in classes if c != now]
                if others:
                    b1, b2 = st.columns([3, 2], vertical_alignment="bottom")
                    b1.selectbox("Move to", others, key=f"rv_to_{key}", label_visibility="collapsed")
                    b2.button("Move", key=f"rv_move_{key}", on_click=_move_picked,
                              args=(rec.sha256, f"rv_to_{key}", name, now))
                st.button("Trash", key=f"rv_trash_{key}", icon=":material/delete:", on_click=_move,
                          args=(rec.sha256, TRASH, name, now))
else:
    _show_note()
    if mode != "Confusion-matrix cell":
        st.success("Nothing to review here.")

# --- retrain, and what changed since the previous run (after the list: fix labels, then retrain) -------------------
st.divider()
_retrain_and_changes()
