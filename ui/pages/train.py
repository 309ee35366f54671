"""Train: the TrainConfig form, one click to start a background job, live progress and charts, run history."""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine.config import runfiles as rf
from engine.config.training import TrainConfig, option_bounds
from engine.core.events import EventKind
from engine.core.fileio import read_json
from engine.data.dataset import training_problem
from engine.runs import history, jobs
from engine.runs import status as run_status
from engine.runs.history import RunSummary
from engine.runs.status import RunState, RunStatus
from engine.store.names import INBOX
from ui import common

project = common.require_project()
st.title(f"Train · {common.literal(project.name)}")
common.show_flash()

# the head is fitted to convergence with a cross-validated L2: epochs, rates and batch sizes only matter when
# fine-tuning, so they wait under "Advanced options"
BASIC = ["preset", "tfhub_module", "validation_split", "cv_folds", "target_precision", "do_fine_tuning"]
HIDDEN = {"image_dir", "run_dir", "saved_model_dir", "labels_output_file", "tflite_output_file", "cache_dir",
          "assert_accuracy_at_least", "summaries_dir"}  # paths on this machine: command-line options
# multi_worker needs one process per machine started with TF_CONFIG: a command-line feature (docs/scaling.md)
NOT_IN_APP = {"distribution_strategy": ("multi_worker",)}
# The bounds of every number are TrainConfig's (engine.config.training: the field's min/max, also enforced there
# and by the CLI); only the arrow-key step is the form's own.
STEPS: dict[str, float] = {
    "validation_split": 0.05, "cv_folds": 1, "target_precision": 0.01, "train_epochs": 10, "batch_size": 8,
    "learning_rate": 0.001, "fine_tune_learning_rate": 0.0001, "momentum": 0.05, "dropout_rate": 0.05,
    "label_smoothing": 0.05, "l1_regularizer": 0.0001, "l2_regularizer": 0.0001, "early_stopping_patience": 1,
    "fine_tune_epochs": 1, "rotation_range": 5.0, "zoom_range": 0.05, "width_shift_range": 0.05,
    "height_shift_range": 0.05, "shear_range": 1.0, "seed": 1, "image_size": 8,
}
LIVE_EVERY_S = 1.0  # how often a running job's view refreshes
# A warm retrain is over in a few seconds: poll faster while a run is young, so Review and the bundle show up the
# moment they exist; after FAST_FOR_S (fine-tuning, a first run) the slower pace spares the CPU training needs.
FAST_EVERY_S, FAST_FOR_S = 0.4, 20.0
LABELS = {"tfhub_module": "Backbone", "train_epochs": "Max iterations", "do_fine_tuning": "Fine-tune the backbone",
          "cv_folds": "Cross-validation folds", "target_precision": "Precision for the 'unknown' threshold"}

class_counts = project.class_counts()
n_inbox = project.count(INBOX)
problem = training_problem(class_counts)
ready = problem is None
active = jobs.active_run(project)


# --- data check ----------------------------------------------------------------------------------------------------
def _data_check() -> None:
    n_train = sum(class_counts.values())
    if not class_counts or n_train == 0:
        st.warning("This project has no sorted images yet. Add images and sort them into at least two classes on "
                   "the Data page — or create the demo project on the Projects page.")
        st.page_link(common.DATA, label="Go to Data", icon=":material/photo_library:")
    elif not ready:
        st.warning(common.literal(problem))  # it names the classes
        st.page_link(common.DATA, label="Go to Data", icon=":material/photo_library:")
    else:
        st.caption(f"{n_train} images in {len(class_counts)} classes: "
                   + ", ".join(f"{common.literal(c)} ({n})" for c, n in class_counts.items()))
    if n_inbox:
        st.info(f"{n_inbox} unsorted image(s) in the inbox are not used for training.")


# --- config form ---------------------------------------------------------------------------------------------------
def _field_widget(f: dataclasses.Field, hint: Any, default: Any) -> Any:
    label = LABELS.get(f.name, f.name.replace("_", " ").capitalize())
    help_text = f.metadata.get("help")
    key = f"cfg_{f.name}"
    if f.name == "tfhub_module":
        names = common.backbone_names()
        return st.selectbox(label, names, index=names.index(default) if default in names else 0, key=key,
                            help=help_text)
    if f.metadata.get("choices"):
        choices = [c for c in f.metadata["choices"] if c not in NOT_IN_APP.get(f.name, ())]
        return st.selectbox(label, choices, index=choices.index(default) if default in choices else 0, key=key,
                            help=help_text)
    base = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        base = next(a for a in typing.get_args(hint) if a is not type(None))
    if base is bool:
        return st.checkbox(label, value=bool(default), key=key, help=help_text)
    if typing.get_origin(base) is list or base is list:
        options = list(default or [])
        return st.multiselect(label, options, default=options, key=key, help=help_text)
    lo, hi = option_bounds(f.name)
    limits = {k: v for k, v in (("min_value", lo), ("max_value", hi), ("step", STEPS.get(f.name))) if v is not None}
    if base is int:
        limits = {k: int(v) for k, v in limits.items()}
        return st.number_input(label, value=default, key=key, help=help_text, placeholder="backbone default",
                               **limits)
    if base is float:
        limits = {k: float(v) for k, v in limits.items()}
        return st.number_input(label, value=None if default is None else float(default), format="%g", key=key,
                               help=help_text, **limits)
    return st.text_input(label, value="" if default is None else str(default), key=key, help=help_text) or default


def _config_form() -> None:
    defaults = TrainConfig()
    hints = typing.get_type_hints(TrainConfig)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    with st.form("train_form"):
        cols = st.columns(3)
        for i, name in enumerate(BASIC):
            with cols[i % 3]:
                values[name] = _field_widget(fields[name], hints[name], getattr(defaults, name))
        with st.expander("Advanced options"):
            adv = [n for n in fields if n not in BASIC and n not in HIDDEN]
            acols = st.columns(3)
            for i, name in enumerate(adv):
                with acols[i % 3]:
                    values[name] = _field_widget(fields[name], hints[name], getattr(defaults, name))
            custom = st.text_input("Custom backbone (overrides the choice above)", key="cfg_custom_module",
                                   placeholder="a local TF Hub SavedModel folder, or a TF Hub URL when online")
        label = "Training is running…" if active else "Start training"
        submitted = st.form_submit_button(label, type="primary", disabled=bool(active) or not ready,
                                          icon=":material/play_arrow:")
    if submitted:
        if custom.strip():
            values["tfhub_module"] = custom.strip()
        if not values.get("quantize"):
            values["quantize"] = ["float32"]
        with common.user_errors("Starting training"):
            cfg = TrainConfig.from_dict({**defaults.to_dict(), **values})
            run_id = jobs.start_training(project, cfg)
            st.session_state["run_id"] = run_id
            st.session_state["live_running"] = True
            st.rerun()


# --- live view -----------------------------------------------------------------------------------------------------
def _history_frame(events: list[dict]) -> pd.DataFrame:
    rows = [e for e in events if e.get("type") == EventKind.EPOCH]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df["step"] = range(1, len(df) + 1)
    return df.set_index("step")


def _history_note(hist: pd.DataFrame, events: list[dict], state: RunState) -> str:
    """What the chart shows: the steps so far, which one was kept and why the numbers differ, and whether it was
    too fast to watch."""
    n = len(hist)
    last = hist.iloc[-1]
    # a step is an epoch, or (head fitted in closed form with cross-validation) one regularisation strength tried
    grid = "l2" in hist and hist["l2"].notna().all()
    text = (f"{n} training step(s) ({'regularisation strengths tried' if grid else 'epochs'}) · "
            f"last step: accuracy {common.fmt_pct(last.get('accuracy'))}, validation accuracy "
            f"{common.fmt_pct(last.get('val_accuracy'))}.")
    result = next((e for e in reversed(events) if e.get("type") == EventKind.RESULT), None)
    if grid and result is not None and result.get("l2") is not None:
        # the kept L2 follows the one-standard-error rule (engine.learn.crossval), not the lowest loss on the chart
        steps = hist.index[hist["l2"].astype(float) == float(result["l2"])]
        text += (f" The model kept uses L2 {float(result['l2']):g}" + (f" (step {steps[0]})" if len(steps) else "")
                 + ": the strongest whose cross-validated loss is within one standard error of the lowest, so it "
                 "can sit next to the lowest point rather than on it. It is then trained on every image.")
    elif "val_loss" in hist and hist["val_loss"].notna().any() and n > 1:
        best = hist["val_loss"].astype(float).idxmin()
        kept = f"step {best}" + (f", L2 {float(hist.loc[best, 'l2']):g}" if grid else "")
        text += (f" The model kept is the one from {kept} (lowest validation loss, validation accuracy "
                 f"{common.fmt_pct(hist.loc[best].get('val_accuracy'))}), not necessarily the last one, so the "
                 "final accuracy can differ from the last point of the chart.")
    times = [float(e["time"]) for e in events if e.get("type") == EventKind.EPOCH and e.get("time") is not None]
    if state is not RunState.RUNNING and len(times) >= 2 and times[-1] - times[0] < 2 * LIVE_EVERY_S:
        text += (f" Training took {times[-1] - times[0]:.1f} s — faster than this page refreshes, so the chart "
                 "appeared complete at once instead of growing live.")
    return text


def _render_run(run_dir: Path) -> RunStatus:
    status = jobs.job_status(run_dir)
    events = history.events(run_dir)
    state = status.state
    icon = {RunState.RUNNING: ":material/progress_activity:", RunState.SUCCEEDED: ":material/check_circle:",
            RunState.FAILED: ":material/error:", RunState.CANCELLED: ":material/stop_circle:"}.get(state, "")
    st.markdown(f"**Run `{run_dir.name}`** — {icon} {state}")
    stages = [e for e in events if e.get("type") == EventKind.STAGE]
    if state is RunState.RUNNING:
        c1, c2 = st.columns([4, 1], vertical_alignment="center")
        with c1:
            st.caption(common.literal(stages[-1]["message"] if stages else (status.message or "starting…")))
            embed = next((e for e in reversed(events) if e.get("type") == EventKind.EMBED), None)
            if embed and embed.get("total"):
                done, total = int(embed["done"]), int(embed["total"])
                ips = embed.get("images_per_s")
                text = f"Computing features: {done}/{total} images"
                if ips:
                    text += f" · {ips:.1f} images/s"
                if embed.get("cached"):
                    text += f" · {embed['cached']} from cache"
                st.progress(min(1.0, done / max(1, total)), text=text)
            export = next((e for e in reversed(events) if e.get("type") == EventKind.EXPORT), None)
            if export and export.get("total"):
                st.progress(min(1.0, int(export["done"]) / int(export["total"])),
                            text=f"Exporting: {export.get('file')} written ({export['done']}/{export['total']})")
            result = next((e for e in reversed(events) if e.get("type") == EventKind.RESULT), None)
            if result is not None and status.downloadable:
                # bundle.zip is written; the job only adds a side report (engine.runs.pipeline: backbone comparison)
                st.info(f"Trained: validation accuracy {common.fmt_pct(result.get('val_accuracy'))}. The bundle "
                        "is ready; the run is still comparing backbones on these images.")
                r1, r2 = st.columns(2)
                r1.page_link(common.REVIEW, label="Review mistakes", icon=":material/fact_check:")
                r2.page_link(common.EXPORT, label="Download & try the model", icon=":material/download:")
            elif result is not None:
                st.info(f"Trained: validation accuracy {common.fmt_pct(result.get('val_accuracy'))}. The models are "
                        "being exported; the mistakes can be reviewed already.")
                st.page_link(common.REVIEW, label="Review mistakes now", icon=":material/fact_check:")
        with c2:
            if st.button("Cancel", key="cancel_run", icon=":material/stop:"):
                with st.spinner("Stopping…"):
                    jobs.cancel(run_dir)
                st.rerun(scope="app")
    hist = _history_frame(events)
    if not hist.empty:
        left, right = st.columns(2)
        loss_cols = [c for c in ("loss", "val_loss") if c in hist and hist[c].notna().any()]
        acc_cols = [c for c in ("accuracy", "val_accuracy") if c in hist and hist[c].notna().any()]
        # a chart without a single number draws an empty scale (Vega warns "Infinite extent"): skip it
        for col, title, cols in ((left, "Loss (train / validation)", loss_cols),
                                 (right, "Accuracy (train / validation)", acc_cols)):
            data = hist[cols].astype(float).dropna(how="all") if cols else pd.DataFrame()
            with col:
                st.caption(title)
                if data.empty:
                    st.caption("No values yet.")
                else:
                    common.line_chart(data, height=260, y_title=title.split(" ")[0].lower())
        st.caption(_history_note(hist, events, state))
    warnings = [e for e in events if e.get("type") == EventKind.WARNING]
    if warnings:
        with st.expander(f"{len(warnings)} warning(s)"):
            for w in warnings[:200]:
                # a file name in a code span could close it with a backtick of its own: escaped instead
                st.markdown(f"- {common.literal(w.get('message'))}"
                            + (f" ({common.literal(w['path'])})" if w.get("path") else ""))
    if state is RunState.SUCCEEDED:
        metrics = history.load_metrics(run_dir) or {}
        how = " (cross-validated: each image judged by a model that never saw it)" \
            if metrics.get("cross_validated") else ""
        st.success(f"Done: validation accuracy {common.fmt_pct(metrics.get('val_accuracy'))}{how}."
                   + ("" if status.downloadable else " The bundle is still being written."))
        c1, c2 = st.columns(2)
        c1.page_link(common.REVIEW, label="Review mistakes", icon=":material/fact_check:")
        c2.page_link(common.EXPORT, label="Download & try the model", icon=":material/download:")
    elif state in (RunState.FAILED, RunState.CANCELLED, RunState.UNKNOWN):
        message = common.literal(status.message or state)  # an engine error: it may quote a file name
        if state is RunState.FAILED and status.cause == run_status.MACHINE:  # the message says what to do
            st.error(f"Training failed. {message}")
        elif state is RunState.FAILED:
            st.error(f"Training failed: {message}. Check the data on the Data page and the options above, then "
                     "start again. The log below has the details.")
        else:
            st.warning(f"Training {state}: {message}.")
        tail = history.log_tail(run_dir)
        if tail:
            with st.expander("Log (last lines)"):
                st.code(tail, language=None)
    return status


_data_check()
jobs.warm_worker()  # the process that starts training jobs, imported ahead of the click
_config_form()

watched = active or st.session_state.get("run_id") or history.latest_run(project, state=None)
if watched and not jobs.run_path(project, watched).is_dir():
    watched = active or history.latest_run(project, state=None)
if watched:
    st.divider()
    watched_status = jobs.job_status(jobs.run_path(project, watched))
    running_now = watched_status.running
    young = time.time() - float(watched_status.started or 0) < FAST_FOR_S
    every = (FAST_EVERY_S if young else LIVE_EVERY_S) if running_now else None

    @st.fragment(run_every=every)
    def live() -> None:
        status = _render_run(jobs.run_path(project, watched))
        if running_now and not status.running:
            st.rerun(scope="app")  # the job ended: re-render the whole page (form enabled, history updated)
        elif every == FAST_EVERY_S and time.time() - float(status.started or 0) >= FAST_FOR_S:
            st.rerun(scope="app")  # a long run: switch to the slower refresh

    live()

# --- history -------------------------------------------------------------------------------------------------------
def _progress(run_id: str) -> str:
    """A running job's progress in a few words, from its events."""
    evs = history.events(jobs.run_path(project, run_id))
    result = next((e for e in reversed(evs) if e.get("type") == EventKind.RESULT), None)
    if result is not None:
        return f"trained ({common.fmt_pct(result.get('val_accuracy'))}), exporting…"
    last = next((e for e in reversed(evs) if e.get("type") in (EventKind.STAGE, EventKind.EMBED, EventKind.EPOCH)),
                None)
    if last is None:
        return "starting…"
    if last["type"] == EventKind.EMBED and last.get("total"):
        return f"features {last.get('done', 0)}/{last['total']}"
    if last["type"] == EventKind.EPOCH:
        return f"training, step {sum(1 for e in evs if e.get('type') == EventKind.EPOCH)}"
    return str(last.get("message") or last.get("stage") or "running…")


def _history_table(runs: list[RunSummary]) -> pd.DataFrame:
    rows = []
    for r in runs:
        running = r.state is RunState.RUNNING
        duration = r.duration
        rows.append({
            "run_id": r.run_id, "started": r.started_text, "state": r.state.value,
            "result": _progress(r.run_id) if running else (
                f"val accuracy {common.fmt_pct(r.val_accuracy)}" if r.val_accuracy is not None else "–"),
            "backbone": r.backbone, "images": r.n_images,
            "duration": "–" if duration is None else (f"{duration:.0f} s so far" if running else f"{duration:.1f} s"),
        })
    return pd.DataFrame(rows)


runs = history.list_runs(project)
if runs:
    st.divider()
    st.subheader("Run history")

    @st.fragment(run_every=LIVE_EVERY_S if active else None)
    def history_table() -> None:
        st.dataframe(_history_table(history.list_runs(project)), hide_index=True, width="stretch")

    history_table()
    ids = [r.run_id for r in runs]
    shown = watched if watched in ids else ids[0]

    def _pick() -> None:
        st.session_state["run_id"] = st.session_state[f"run_pick_{shown}"]

    st.selectbox("Show run", ids, index=ids.index(shown), key=f"run_pick_{shown}", on_change=_pick,
                 help="The run shown above and used on the Review and Export pages.")
    if not next(r for r in runs if r.run_id == shown).status.running:
        with st.popover("Delete this run", icon=":material/delete:"):
            st.caption(f"Deletes run {shown}: its models, metrics and log. The project's images stay as they are.")
            if st.button("Delete the run", key=f"delete_run_{shown}", type="primary"):
                with common.user_errors("Deleting the run"):
                    jobs.delete_run(project, shown)
                    st.session_state.pop("run_id", None)
                    common.flash("success", f"Deleted run {shown}.")
                    st.rerun()

    # --- compare -----------------------------------------------------------------------------------------------------
    done = [r.run_id for r in common.runs_newest_first(project) if r.reviewable]
    if len(done) >= 2:
        st.subheader("Compare two runs")
        c1, c2 = st.columns(2)
        older = c1.selectbox("Earlier run", done, index=1, key="compare_a")
        newer = c2.selectbox("Later run", done, index=0, key="compare_b")
        if older == newer:
            st.info("Pick two different runs.")
        else:
            from engine.runs.compare import diff_runs

            def _json(run_id: str, name: str) -> dict:
                return read_json(jobs.run_path(project, run_id) / name)

            ma, mb = _json(older, rf.METRICS), _json(newer, rf.METRICS)
            common.show_run_diff(project, diff_runs(ma, mb, _json(older, rf.CONFIG), _json(newer, rf.CONFIG)),
                                 older, newer, key="compare")
            st.markdown("**Confusion matrices** (rows: true class, columns: predicted class)")
            m1, m2 = st.columns(2)
            for col, rid, m in ((m1, older, ma), (m2, newer, mb)):
                with col:
                    st.caption(rid)
                    if m.get("confusion_matrix") and m.get("labels"):
                        st.dataframe(common.confusion_styler(m["confusion_matrix"], m["labels"]), width="stretch")
                    else:
                        st.caption("No confusion matrix in this run.")
