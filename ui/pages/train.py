"""Train: what to train (preset, backbone, fine-tuning) and the rest of TrainConfig grouped by what it affects, one
click to start a background job, live progress per phase, run history with names, and two runs compared."""

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
from engine.config.backbones import BACKBONES, DEFAULT_BACKBONE, PRESETS
from engine.config.training import TrainConfig, option_bounds
from engine.core.events import EventKind, Stage
from engine.core.fileio import read_json
from engine.data.dataset import training_problem
from engine.runs import history, jobs
from engine.runs import status as run_status
from engine.runs.history import RunSummary
from engine.runs.status import RunState, RunStatus
from engine.store.names import INBOX
from ui import common, run_notes

project = common.require_project()
st.title(f"Train · {common.literal(project.name)}")
common.show_flash()

# Outside the form, because choosing them changes what the form shows: the backbone a preset trains, and the
# fine-tuning options. Everything else waits in the form until Start.
LIVE = ["preset", "tfhub_module", "do_fine_tuning"]
FINE_TUNING = "Fine-tuning"
# The other options by what they affect, each group with a line saying so. An option in no group still shows, under
# "Other options": a new TrainConfig field is never left out of the form.
GROUPS: dict[str, tuple[str, list[str]]] = {
    "How the model is judged": ("The accuracy you see is measured on images the model did not train on.",
                                ["validation_split", "cv_folds", "seed"]),
    "Confidence and “unknown” answers": ("When the model should rather say it does not know.",
                                         ["target_precision", "calibrate"]),
    "The classifier": ("The small model trained on the backbone's features: seconds, chosen for you by default.",
                       ["l2_regularizer", "class_weights", "train_epochs"]),
    "Images": ("How each image is read before the backbone sees it.", ["image_size", "center_crop"]),
    FINE_TUNING: ("Only used while the backbone itself is trained on the images.",
                  ["fine_tune_epochs", "fine_tune_learning_rate", "batch_size", "optimizer", "momentum",
                   "dropout_rate", "label_smoothing", "l1_regularizer", "do_data_augmentation", "rotation_range",
                   "horizontal_flip", "zoom_range", "width_shift_range", "height_shift_range", "shear_range"]),
    "Export": ("What the download holds.", ["quantize"]),
}
# TensorFlow's own settings and make_image_classifier options that no longer change anything: in a closed group
EXPERT = ["distribution_strategy", "set_memory_growth", "learning_rate", "early_stopping_patience",
          "early_stopping_monitor"]
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
          "cv_folds": "Cross-validation folds", "target_precision": "Precision for the 'unknown' threshold",
          "validation_split": "Share set aside for judging (0: cross-validation)", "seed": "Random seed",
          "l2_regularizer": "Simplicity penalty (L2; empty: chosen for you)", "calibrate": "Calibrate confidences",
          "image_size": "Image size in pixels (empty: the backbone's)", "center_crop": "Crop long images to a square",
          "quantize": "TensorFlow Lite models", "fine_tune_epochs": "Epochs", "fine_tune_learning_rate":
          "Learning rate", "do_data_augmentation": "Augment the images", "learning_rate": "Learning rate (no effect)",
          **{n: f"{n.replace('_', ' ').capitalize()} (no effect)" for n in ("early_stopping_patience",
                                                                             "early_stopping_monitor")}}
# the preset whose backbone is the default: a run shown with the default backbone must not train another one
DEFAULT_PRESET = next(p for p, v in PRESETS.items() if v["tfhub_module"] == DEFAULT_BACKBONE)
DEFAULTS, HINTS = TrainConfig(), typing.get_type_hints(TrainConfig)
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HALF_POINT = 0.005  # two backbones this close in accuracy did "about as well" on a few hundred images

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
def _backbone_text(name: str) -> str:
    """A backbone as Markdown: the table's names as they are, anything else (a folder, a URL) literally."""
    return name if name in BACKBONES else common.literal(name)


def _use_backbone(name: str) -> None:
    """Callback: show `name` in the Backbone field, and the preset that trains it (if one does)."""
    st.session_state["cfg_tfhub_module"] = name
    match = next((p for p, v in PRESETS.items() if v["tfhub_module"] == name), None)
    if match is not None:
        st.session_state["cfg_preset"] = match


def _preset_chosen() -> None:
    st.session_state["cfg_tfhub_module"] = PRESETS[st.session_state["cfg_preset"]]["tfhub_module"]


def _field_widget(f: dataclasses.Field, hint: Any, default: Any, on_change: Any = None) -> Any:
    label = LABELS.get(f.name, f.name.replace("_", " ").capitalize())
    help_text = f"{f.metadata.get('help', '')}\n\nCommand line: `--{f.name}`"
    key = f"cfg_{f.name}"
    live = {"on_change": on_change} if on_change else {}
    if f.name == "tfhub_module":
        names = common.backbone_names()
        return st.selectbox(label, names, index=names.index(default) if default in names else 0, key=key,
                            help=help_text, **live)
    if f.metadata.get("choices"):
        choices = [c for c in f.metadata["choices"] if c not in NOT_IN_APP.get(f.name, ())]
        return st.selectbox(label, choices, index=choices.index(default) if default in choices else 0, key=key,
                            help=help_text, **live)
    base = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        base = next(a for a in typing.get_args(hint) if a is not type(None))
    if base is bool:
        return st.checkbox(label, value=bool(default), key=key, help=help_text, **live)
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
                               help=help_text, placeholder="chosen for you", **limits)
    return st.text_input(label, value="" if default is None else str(default), key=key, help=help_text) or default


def _widgets(names: list[str], values: dict[str, Any]) -> None:
    cols = st.columns(3)
    for i, name in enumerate(names):
        with cols[i % 3]:
            values[name] = _field_widget(FIELDS[name], HINTS[name], getattr(DEFAULTS, name))


def _config_form() -> None:
    values: dict[str, Any] = {}
    for col, name, changed in zip(st.columns(3), LIVE, (_preset_chosen, lambda: _use_backbone(
            st.session_state["cfg_tfhub_module"]), None), strict=True):
        with col:
            values[name] = _field_widget(FIELDS[name], HINTS[name], getattr(DEFAULTS, name), on_change=changed)
    backbone, fine = values["tfhub_module"], values["do_fine_tuning"]
    about = BACKBONES[backbone].description if backbone in BACKBONES else ""
    st.caption(f"Start training trains a classifier on {_backbone_text(backbone)}'s features"
               + (f" ({common.literal(about)})" if about else "")
               + ("; then it fine-tunes the backbone itself on the images, which takes minutes, not seconds."
                  if fine else "; seconds once the features of the images are cached."))
    grouped = {n for _, names in GROUPS.values() for n in names} | set(LIVE) | set(EXPERT) | HIDDEN
    groups = {**GROUPS, "Other options": ("", [n for n in FIELDS if n not in grouped])}
    with st.form("train_form"):
        with st.expander("Advanced options"):
            for title, (about, names) in groups.items():
                if not names or (title == FINE_TUNING and not fine):
                    continue
                st.markdown(f"**{title}**" + (f" · {about}" if about else ""))
                _widgets(names, values)
        with st.expander("For experts / the command line"):
            st.caption("TensorFlow's own settings, and options that only keep old make_image_classifier command "
                       "lines working.")
            _widgets(EXPERT, values)
            custom = st.text_input("Custom backbone (replaces the one chosen above)", key="cfg_custom_module",
                                   placeholder="a local TF Hub SavedModel folder, or a TF Hub URL when online")
        label = "Training is running…" if active else "Start training"
        submitted = st.form_submit_button(label, type="primary", disabled=bool(active) or not ready,
                                          icon=":material/play_arrow:")
    if submitted:
        if custom.strip():
            values["tfhub_module"] = custom.strip()
        elif values["tfhub_module"] == DEFAULT_BACKBONE:
            # TrainConfig reads the default backbone as "the preset's": the one shown is the one that trains
            values["preset"] = DEFAULT_PRESET
        if not values.get("quantize"):
            values["quantize"] = ["float32"]
        with common.user_errors("Starting training"):
            cfg = TrainConfig.from_dict({**DEFAULTS.to_dict(), **values})
            run_id = jobs.start_training(project, cfg)
            st.session_state["run_id"] = run_id
            st.session_state["live_running"] = True
            st.rerun()


# --- live view -----------------------------------------------------------------------------------------------------
def _charts(frame: pd.DataFrame, x_title: str) -> None:
    """Loss and accuracy of one phase, with lines named for a person; a training accuracy that never moves (100%
    on every point of a classifier fitted on features) carries no information and is left out."""
    left, right = st.columns(2)
    acc = frame["accuracy"].astype(float).dropna() if "accuracy" in frame else pd.Series(dtype=float)
    flat = len(acc) > 1 and float(acc.max() - acc.min()) < 1e-9
    for col, title, pairs in ((left, "Loss", (("loss", "train"), ("val_loss", "validation"))),
                              (right, "Accuracy", (() if flat else (("accuracy", "train"),))
                               + (("val_accuracy", "validation"),))):
        named = {label: frame[c] for c, label in pairs if c in frame and frame[c].notna().any()}
        data = pd.DataFrame(named).astype(float).dropna(how="all") if named else pd.DataFrame()
        with col:
            st.caption(f"{title} ({' / '.join(named) or 'none yet'})")
            if data.empty:  # a chart without a single number draws an empty scale (Vega: "Infinite extent")
                st.caption("No values yet.")
            else:
                common.line_chart(data, height=240, y_title=title.lower(), x_title=x_title)
    if flat:
        st.caption(f"Training accuracy: {common.fmt_pct(float(acc.iloc[0]))} at every point (not drawn).")


def _history(events: list[dict], state: RunState, config: dict) -> None:
    # engine.learn.train's rule: cross-validation unless images are set aside or the backbone is fine-tuned
    cross_validated = not config.get("validation_split") and not config.get("do_fine_tuning")
    phases = run_notes.phases(events)
    result = next((e for e in reversed(events) if e.get("type") == EventKind.RESULT), None)
    head, tuned = phases.get("head"), phases.get("fine_tune")
    if head is not None:
        if tuned is not None:
            st.markdown("**Step 1 · choosing the classifier**")
        _charts(head, "strength tried (1: strongest penalty)" if run_notes.is_grid(head) else "training step")
        st.caption(run_notes.head_note(head, result, cross_validated))
    if tuned is not None:
        st.markdown("**Step 2 · fine-tuning the backbone**")
        _charts(tuned, "epoch")
        st.caption(run_notes.fine_tune_note(tuned, result, config.get("fine_tune_epochs")))
    times = [float(e["time"]) for e in events if e.get("type") == EventKind.EPOCH and e.get("time") is not None]
    if state is not RunState.RUNNING and len(times) >= 2 and times[-1] - times[0] < 2 * LIVE_EVERY_S:
        st.caption(f"Training took {times[-1] - times[0]:.1f} s — faster than this page refreshes, so the charts "
                   "appeared complete at once instead of growing live.")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def _progress_bars(events: list[dict], config: dict) -> None:
    """The bar of the stage running now (features, fine-tuning epochs, export); a finished bar goes with its
    stage."""
    stage = next((e.get("stage") for e in reversed(events) if e.get("type") == EventKind.STAGE), None)
    last = {e.get("type"): (i, e) for i, e in enumerate(events)}
    i, embed = last.get(EventKind.EMBED, (-1, None))
    later = events[i + 1:]
    if embed is not None and embed.get("total") and not any(
            e.get("type") in (EventKind.EPOCH, EventKind.RESULT, EventKind.EXPORT)
            or (e.get("type") == EventKind.STAGE and e.get("stage") != Stage.EMBED) for e in later):
        done, total = int(embed["done"]), int(embed["total"])
        text = f"Computing features: {done}/{total} images"
        if embed.get("images_per_s"):
            text += f" · {embed['images_per_s']:.1f} images/s"
        if embed.get("cached"):
            text += f" · {embed['cached']} from cache"
        st.progress(min(1.0, done / max(1, total)), text=text)
    planned = config.get("fine_tune_epochs")
    if stage == Stage.FINE_TUNE and isinstance(planned, int) and planned > 0:
        epochs = [e for e in events if e.get("type") == EventKind.EPOCH and e.get("phase") == "fine_tune"]
        done = len(epochs)
        if done:
            left = float(epochs[-1].get("elapsed") or 0.0) / done * max(0, planned - done)
            text = f"Fine-tuning: epoch {done} of {planned} done · about {_duration(left)} left"
        else:
            text = f"Fine-tuning: epoch 1 of {planned} running · the time left shows after the first epoch"
        st.progress(min(1.0, done / planned), text=text)
    export = last.get(EventKind.EXPORT, (0, None))[1]
    if stage == Stage.EXPORT and export is not None and export.get("total"):
        st.progress(min(1.0, int(export["done"]) / int(export["total"])),
                    text=f"Exporting: {export.get('file')} written ({export['done']}/{export['total']})")


def _render_run(run_dir: Path, name: str | None) -> RunStatus:
    status = jobs.job_status(run_dir)
    events = history.events(run_dir)
    config = read_json(run_dir / rf.CONFIG)
    state = status.state
    icon = {RunState.RUNNING: ":material/progress_activity:", RunState.SUCCEEDED: ":material/check_circle:",
            RunState.FAILED: ":material/error:", RunState.CANCELLED: ":material/stop_circle:"}.get(state, "")
    title = f"**{common.literal(name)}** (run `{run_dir.name}`)" if name else f"**Run `{run_dir.name}`**"
    st.markdown(f"{title} — {icon} {state}")
    stages = [e for e in events if e.get("type") == EventKind.STAGE]
    if state is RunState.RUNNING:
        c1, c2 = st.columns([4, 1], vertical_alignment="center")
        with c1:
            st.caption(common.literal(stages[-1]["message"] if stages else (status.message or "starting…")))
            _progress_bars(events, config)
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
    _history(events, state, config)
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


def _backbone_verdict(run: RunSummary) -> None:
    """Which backbone did better on the user's own images (metrics' backbone_comparison: cross-validated on the
    same images, from features already cached), in plain words, with the way to use the better one."""
    rows = [r for r in (history.load_metrics(run.run_dir) or {}).get("backbone_comparison") or []
            if isinstance(r, dict) and isinstance(r.get("accuracy"), int | float)]
    own = next((r for r in rows if r.get("backbone") == run.backbone), None)
    others = [r for r in rows if r is not own]
    if own is None or not others:
        return
    best = max(others, key=lambda r: float(r["accuracy"]))
    mine, theirs = float(own["accuracy"]), float(best["accuracy"])
    name, other = _backbone_text(run.backbone), _backbone_text(str(best["backbone"]))
    right = f"{common.fmt_pct(max(theirs, mine))} of the images right against {common.fmt_pct(min(theirs, mine))}" \
        ", each image judged by a model that never saw it"
    if abs(theirs - mine) < HALF_POINT:
        st.info(f"On your images, {other} did about as well as {name} (this run's backbone): {right}.")
    elif mine > theirs:
        st.info(f"On your images, {name} (this run's backbone) did better than {other}: {right}.")
    else:
        st.info(f"On your images, {other} did better than {name} (this run's backbone): {right}. Train with it to "
                "get that model.")
        if best["backbone"] in BACKBONES:
            st.button(f"Use {best['backbone']} for the next run", key="use_better_backbone",
                      on_click=_use_backbone, args=(best["backbone"],), icon=":material/swap_horiz:")


_data_check()
jobs.warm_worker()  # the process that starts training jobs, imported ahead of the click
_config_form()

runs = history.list_runs(project)
by_id = {r.run_id: r for r in runs}
watched = active or st.session_state.get("run_id") or history.latest_run(project, state=None)
if watched and not jobs.run_path(project, watched).is_dir():
    watched = active or history.latest_run(project, state=None)
if watched:
    st.divider()
    watched_status = jobs.job_status(jobs.run_path(project, watched))
    running_now = watched_status.running
    young = time.time() - float(watched_status.started or 0) < FAST_FOR_S
    every = (FAST_EVERY_S if young else LIVE_EVERY_S) if running_now else None
    watched_name = by_id[watched].name if watched in by_id else None

    @st.fragment(run_every=every)
    def live() -> None:
        status = _render_run(jobs.run_path(project, watched), watched_name)
        if running_now and not status.running:
            st.rerun(scope="app")  # the job ended: re-render the whole page (form enabled, history updated)
        elif every == FAST_EVERY_S and time.time() - float(status.started or 0) >= FAST_FOR_S:
            st.rerun(scope="app")  # a long run: switch to the slower refresh

    live()
    if watched_status.state is RunState.SUCCEEDED and watched in by_id:
        _backbone_verdict(by_id[watched])


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
        phase = last.get("phase") or "head"
        n = sum(1 for e in evs if e.get("type") == EventKind.EPOCH and (e.get("phase") or "head") == phase)
        return f"fine-tuning, epoch {n}" if phase == "fine_tune" else f"choosing the classifier, step {n}"
    return str(last.get("message") or last.get("stage") or "running…")


def _history_table(runs: list[RunSummary]) -> pd.DataFrame:
    rows = []
    for r in runs:
        running = r.state is RunState.RUNNING
        duration = r.duration
        rows.append({
            "run_id": r.run_id, "name": r.name or "", "started": r.started_text, "state": r.state.value,
            "result": _progress(r.run_id) if running else (
                f"val accuracy {common.fmt_pct(r.val_accuracy)}" if r.val_accuracy is not None else "–"),
            "backbone": r.backbone, "images": r.n_images,
            "duration": "–" if duration is None else (f"{duration:.0f} s so far" if running else f"{duration:.1f} s"),
        })
    return pd.DataFrame(rows)


if runs:
    st.divider()
    st.subheader("Run history")

    @st.fragment(run_every=LIVE_EVERY_S if active else None)
    def history_table() -> None:
        # "succeeded" and the user's names must read in full, not cut to fit an auto-sized column
        st.dataframe(_history_table(history.list_runs(project)), hide_index=True, width="stretch",
                     column_config={"state": st.column_config.TextColumn("state", width="medium"),
                                    "name": st.column_config.TextColumn("name", width="medium")})

    history_table()
    ids = [r.run_id for r in runs]
    shown = watched if watched in ids else ids[0]

    def _pick() -> None:
        st.session_state["run_id"] = st.session_state[f"run_pick_{shown}"]

    def _rename() -> None:
        named = common.guarded("Naming the run", jobs.name_run, project, shown,
                               st.session_state[f"run_name_{shown}"])
        if named is not None:
            common.flash("success", f"Run {shown} is now called '{named}'." if named else
                         f"Run {shown} has no name any more.")

    c1, c2 = st.columns(2)
    c1.selectbox("Show run", ids, index=ids.index(shown), key=f"run_pick_{shown}", on_change=_pick,
                 format_func=lambda r: by_id[r].label, help="The run shown above and used on the Review and Export "
                 "pages.")
    c2.text_input("Name of this run", value=by_id[shown].name or "", key=f"run_name_{shown}", on_change=_rename,
                  max_chars=jobs.RUN_NAME_MAX, placeholder="e.g. before fixing the roses",
                  help="Shown in the history and wherever a run is picked; press Enter to keep it.")
    if not by_id[shown].status.running:
        with st.popover("Delete this run", icon=":material/delete:"):
            st.caption(f"Deletes run {common.literal(by_id[shown].label)}: its models, metrics and log. The "
                       "project's images stay as they are.")
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
        # The pickers keep a choice across reruns; a new run starts them again from the newest two, since that is
        # what someone who just trained wants to see.
        if st.session_state.get("compare_newest") != done[0]:
            for key in ("compare_a", "compare_b"):
                st.session_state.pop(key, None)
            st.session_state["compare_newest"] = done[0]
        c1, c2 = st.columns(2)
        label = {r.run_id: r.label for r in runs}
        older = c1.selectbox("Earlier run", done, index=1, key="compare_a", format_func=lambda r: label.get(r, r))
        newer = c2.selectbox("Later run", done, index=0, key="compare_b", format_func=lambda r: label.get(r, r))
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
                    st.caption(common.literal(label.get(rid, rid)))
                    if m.get("confusion_matrix") and m.get("labels"):
                        st.dataframe(common.confusion_styler(m["confusion_matrix"], m["labels"]), width="stretch")
                    else:
                        st.caption("No confusion matrix in this run.")
