"""Shared page plumbing: the current project (session state + URL), messages, thumbnails, cached resources."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from engine.config.backbones import BACKBONES, DEFAULT_BACKBONE
from engine.core.cache import cache_root
from engine.data.dataset import Snapshot
from engine.data.images import SUPPORTED
from engine.inference.predict import load_predictor
from engine.runs.history import RunSummary, list_runs
from engine.runs.jobs import JobError, run_path
from engine.runs.prepare import prepare_in_background
from engine.runs.status import RunState
from engine.store.check import rebuild_index
from engine.store.errors import DamagedIndexError, WorkspaceError
from engine.store.ingest import AddReport
from engine.store.names import INBOX
from engine.store.records import ImageRecord
from engine.store.workspace import Project, Workspace

log = logging.getLogger("retrain_studio.ui")

HOME = "ui/pages/home.py"
DATA = "ui/pages/data.py"
TRAIN = "ui/pages/train.py"
REVIEW = "ui/pages/review.py"
EXPORT = "ui/pages/export.py"

INBOX_LABEL = "Unsorted (inbox)"
# What the file pickers accept: every format training reads (HEIC/HEIF from phones included), plus SVG drawings,
# which we cannot use, so the engine can say why. Streamlit refuses any other extension with an exception.
IMAGE_UPLOAD_TYPES = [*(e.lstrip(".") for e in SUPPORTED), "svg"]


# ------------------------------------------------------------------------------------------------------------------
# project choice: st.session_state["project"] mirrored in the URL (?project=<slug>) so reloads keep it
# ------------------------------------------------------------------------------------------------------------------
def workspace() -> Workspace:
    return Workspace()  # reads $RETRAIN_STUDIO_WORKSPACE each time: cheap, and tests can point it elsewhere


def sync_project_state() -> str | None:
    """Run once per script run (app.py): adopt ?project= from the URL, drop a project that vanished."""
    ws = workspace()
    from_url = st.query_params.get("project")
    current = st.session_state.get("project")
    if from_url and from_url != current and ws.exists(from_url):
        current = from_url
    if current and not ws.exists(current):
        current = None
    st.session_state["project"] = current
    if current:
        if st.query_params.get("project") != current:
            st.query_params["project"] = current
    elif "project" in st.query_params:
        del st.query_params["project"]
    return current


def set_project(slug: str | None) -> None:
    st.session_state["project"] = slug
    for key in ("run_id", "last_report", "review_cell"):
        st.session_state.pop(key, None)
    if slug:
        st.query_params["project"] = slug
    elif "project" in st.query_params:
        del st.query_params["project"]


def current_project() -> Project | None:
    """The open project, None when none is open. One that cannot be opened now says why (with the way out, when
    there is one) and stops the page."""
    slug = st.session_state.get("project")
    if not slug:
        return None
    try:
        return workspace().open_project(slug)
    except DamagedIndexError as exc:
        damaged_index(exc, key=f"rebuild_{slug}")
        st.stop()
    except WorkspaceError as exc:
        st.error(literal(str(exc)))
        st.page_link(HOME, label="Go to Projects", icon=":material/folder_open:")
        st.stop()


def damaged_index(exc: DamagedIndexError, key: str) -> None:
    """What is wrong with a project's index, and the button that makes a new one from its folders."""
    st.error(literal(str(exc)))
    if st.button("Rebuild the index from the folders", key=key, type="primary"):
        with user_errors("Rebuilding the index"):
            report = rebuild_index(exc.project_path)
            flash("success", "The index was rebuilt: " + "; ".join(report.notes[:1] + report.notes[-1:]) + ".")
            st.rerun()


def require_project() -> Project:
    """The open project, or a hint with a link to the Home page and stop."""
    project = current_project()
    if project is None:
        st.info("No project is open. Create one, or try the demo project, on the Projects page.")
        st.page_link(HOME, label="Go to Projects", icon=":material/folder_open:")
        st.stop()
    return project


# ------------------------------------------------------------------------------------------------------------------
# names are data: shown as typed, never as Markdown
# ------------------------------------------------------------------------------------------------------------------
# Streamlit renders every title, message, label, caption and tooltip as GitHub-flavoured Markdown with KaTeX ($),
# directives (:red[...], :help[...]), emoji shortcodes and its own text rewrites. A name typed as `![t](http://...)`
# would make the browser fetch that URL, so every user-supplied name (and every message that may hold one) goes
# through literal() before it reaches one of those.
# Backslash-escaping ASCII punctuation is CommonMark's own way to say "this character is text". Left alone: the few
# that start or end nothing in Streamlit's Markdown, so everyday messages stay readable ("Moved 'x'; not undone?").
_MARKDOWN_PUNCTUATION = re.compile(r"""([!#$&()*+\-.:<=>@\[\\\]_`{|}~])""")
# Some rewrites run on the parsed text, where a backslash is already gone: `:smile:` (emoji), `:streamlit:` (logo),
# `:material_x:` (icon; Streamlit also turns the source's `:material/` into that before parsing) and " -> ", " -- ",
# " >= "... (arrows, dashes, signs). An invisible word joiner (U+2060) after the colon or inside the pair breaks
# each pattern without changing what the reader sees.
WORD_JOINER = "\u2060"
_SHORTCODE_COLON = re.compile(r":(?=[\w+-])", re.ASCII)
_TYPOGRAPHIC_PAIR = re.compile(r"(?<![^\s\ufeff])(<->|->|<-|--|>=|<=|~=)(?![^\s\ufeff])")  # JS \s has U+FEFF


def literal(text: object) -> str:
    """`text` as Markdown source that Streamlit shows exactly as typed (for names, and messages that hold one)."""
    out = _SHORTCODE_COLON.sub(":" + WORD_JOINER, str(text))
    out = _TYPOGRAPHIC_PAIR.sub(lambda m: m[1][0] + WORD_JOINER + m[1][1:], out)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", out)


# ------------------------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------------------------
def flash(kind: str, message: str) -> None:
    """Show a message on the next run (used from button callbacks, which run before the page). `message` is plain
    text, names in it as they are: show_flash() escapes it."""
    st.session_state.setdefault("_flash", []).append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.pop("_flash", []):
        {"success": st.success, "warning": st.warning, "error": st.error}.get(kind, st.info)(literal(message))


@contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Turn exceptions into a readable st.error (never a traceback on the page); details go to the log.
    The engine's messages quote names and paths as they are, so they are shown literally."""
    try:
        yield
    except (WorkspaceError, JobError) as exc:
        st.error(literal(exc))
    except ValueError as exc:  # ImageError and config validation are ValueErrors with user messages
        st.error(literal(f"{what}: {exc}"))
    except Exception as exc:  # noqa: BLE001 - the page must stay usable
        log.exception("%s failed", what)
        st.error(literal(f"{what} failed: {type(exc).__name__}: {exc}. The details are in the server log; "
                         "try again, or check the files on disk."))


def guarded(what: str, fn: Callable[..., Any], *args: Any, on_error: Callable[[str, str], None] | None = None,
            **kwargs: Any) -> Any:
    """Call fn from a callback; store a flash message (shown literally, like every flash) instead of raising.
    `on_error(kind, message)` takes the message instead, for a page that shows it beside what was clicked."""
    tell = on_error or flash
    try:
        return fn(*args, **kwargs)
    except (WorkspaceError, JobError, ValueError) as exc:
        tell("error", str(exc))
    except Exception as exc:  # noqa: BLE001
        log.exception("%s failed", what)
        tell("error", f"{what} failed: {type(exc).__name__}: {exc}")
    return None


def report_to_state(report: AddReport) -> dict[str, Any]:
    return {"summary": report.summary(), "added": len(report.added), "duplicates": list(report.duplicates),
            "rejected": [list(r) for r in report.rejected], "classes_created": list(report.classes_created),
            "notes": list(report.notes)}


def show_report(report: dict[str, Any] | None) -> None:
    """An upload/import report: what was added, which duplicates were skipped, which files were rejected and why."""
    if not report:
        return
    # the summary, the notes and the duplicates name the files and classes they are about
    (st.success if report["added"] else st.warning)(literal(report["summary"]))
    for note in report.get("notes", [])[:50]:
        st.info(literal(note))
    if report["duplicates"]:
        with st.expander(f"{len(report['duplicates'])} duplicate(s) skipped: the same image is already here"):
            st.markdown(literal(", ".join(report["duplicates"][:500])))
    if report["rejected"]:
        import pandas as pd

        st.warning(f"{len(report['rejected'])} file(s) were rejected:")
        st.dataframe(pd.DataFrame(report["rejected"], columns=["file", "reason"]), hide_index=True,
                     width="stretch")


# ------------------------------------------------------------------------------------------------------------------
# names and images
# ------------------------------------------------------------------------------------------------------------------
def class_label(name: str | None) -> str:
    return INBOX_LABEL if name in (None, INBOX) else str(name)


def prediction_record(project: Project, prediction: dict) -> ImageRecord | None:
    """The project's image a run's per-image prediction is about, found by content (sha256), since the file may
    have been renamed or moved since the run; by file name only for runs older than that key."""
    if prediction.get("sha256"):
        return project.get(prediction["sha256"])
    name = Path(str(prediction.get("path") or "")).name
    return project.find_by_filename(name) if name else None


def thumbnail(project: Project, sha: str) -> bytes | None:
    try:
        return project.thumbnail(sha)
    except (WorkspaceError, OSError) as exc:
        log.info("no thumbnail for %s: %s", sha[:12], exc)
        return None


def image_grid(project: Project, records: Sequence[ImageRecord], key: str, columns: int = 6,
               caption: Callable[[ImageRecord], str] | None = None, selectable: bool = True) -> None:
    """Thumbnails in rows; each with a checkbox keyed `<key>-<sha>` (read back with selected())."""
    for start in range(0, len(records), columns):
        cols = st.columns(columns)
        for col, rec in zip(cols, records[start:start + columns], strict=False):
            with col:
                data = thumbnail(project, rec.sha256)
                text = literal(caption(rec) if caption else rec.filename)
                if data is None:
                    st.caption(f"(unreadable) {text}")
                else:
                    st.image(data, caption=text, width="stretch")
                if selectable:
                    st.checkbox("select", key=f"{key}-{rec.sha256}", label_visibility="collapsed")


def selected(key: str, shas: Sequence[str]) -> list[str]:
    return [s for s in shas if st.session_state.get(f"{key}-{s}")]


def set_selection(key: str, shas: Sequence[str], value: bool) -> None:
    for s in shas:
        st.session_state[f"{key}-{s}"] = value


# ------------------------------------------------------------------------------------------------------------------
# cached resources
# ------------------------------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner="Loading the list of backbones ...")
def backbone_names() -> list[str]:
    return list(BACKBONES)


@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def _predictor(model_path: str, labels_path: str | None, mtime: float):  # noqa: ARG001 - mtime busts the cache
    return load_predictor(model_path, labels_path)


def predictor(model_path: Path, labels_path: Path | None):
    """A cached engine.inference.predict Predictor; raises ImportError if engine.inference.predict is not available."""
    import importlib.util

    if importlib.util.find_spec("engine.inference.predict") is None:
        raise ImportError("engine.inference.predict is not installed")
    return _predictor(str(model_path), str(labels_path) if labels_path else None, model_path.stat().st_mtime)


def confusion_styler(cm: Sequence[Sequence[int]], labels: Sequence[str]):
    """The confusion matrix as a colour-shaded table (a heat-map that stays clickable in st.dataframe).

    Rows: true class, columns: predicted class. Each cell is shaded by its share of its row, so a class with few
    images is as readable as a big one; the diagonal is blue, mistakes are red."""
    import pandas as pd

    df = pd.DataFrame(cm, index=[f"true: {lb}" for lb in labels], columns=list(labels))

    def shade(frame: pd.DataFrame) -> pd.DataFrame:
        totals = frame.sum(axis=1).replace(0, 1)
        css = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for i, row in enumerate(frame.index):
            for j, col in enumerate(frame.columns):
                share = float(frame.loc[row, col]) / float(totals[row])
                if share <= 0:
                    continue
                rgb = (37, 99, 235) if i == j else (220, 38, 38)
                alpha = 0.12 + 0.88 * share
                text = "color: white; " if alpha > 0.55 else ""
                css.loc[row, col] = f"{text}background-color: rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.2f})"
        return css

    return df.style.apply(shade, axis=None)


def show_run_diff(project: Project, diff: Any, before_id: str, after_id: str, key: str, max_images: int = 12) -> None:
    """Render an engine.runs.compare.RunDiff: accuracy change, per-class changes, flipped images, changed settings."""
    import pandas as pd

    before_acc, after_acc = diff.accuracy
    c1, c2, c3 = st.columns(3)
    c1.metric("Accuracy", fmt_pct(after_acc),
              delta=None if diff.accuracy_delta is None else f"{diff.accuracy_delta * 100:+.1f} points",
              help=f"{after_id} compared with {before_id} ({fmt_pct(before_acc)})")
    c2.metric("Now right", diff.fixed, help="Images the earlier run got wrong and this run gets right")
    c3.metric("Now wrong", diff.broken, help="Images the earlier run got right and this run gets wrong")
    st.caption(f"{diff.n_common} image(s) were validated in both runs; {len(diff.flips)} of them flipped (another "
               "predicted class, or right/wrong after a label was fixed). Differences of one or two images on a "
               "small validation set can be chance.")
    if diff.per_class:
        pct = st.column_config.NumberColumn(format="%.1f%%")
        change = st.column_config.NumberColumn(format="%+.1f points")
        scores = ["recall before", "recall", "recall change", "f1 before", "f1", "f1 change"]
        table = pd.DataFrame(diff.per_class)[["class", *scores, "support"]]
        table[scores] = table[scores].astype(float) * 100  # one number format for all: 92.3%, +9.0 points
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            "recall before": pct, "recall": pct, "f1 before": pct, "f1": pct, "recall change": change,
            "f1 change": change})
    if diff.flips:
        shown = diff.flips[:max_images]
        st.markdown(f"**Images whose prediction flipped** ({len(diff.flips)}"
                    + (f", first {len(shown)} shown" if len(shown) < len(diff.flips) else "") + ")")
        per_row = 6
        for start in range(0, len(shown), per_row):
            cols = st.columns(per_row)
            for col, f in zip(cols, shown[start:start + per_row], strict=False):
                with col:
                    rec = prediction_record(project, f)
                    data = thumbnail(project, rec.sha256) if rec is not None else None
                    if data is not None:
                        st.image(data, width="stretch")
                    before, true = literal(f["true before"]), literal(f["true"])
                    label = f"relabelled {before} → **{true}**" if f["true before"] != f["true"] else f"true **{true}**"
                    st.caption(f"{f['change']} · {label} · predicted {literal(f['predicted before'])} → "
                               f"{literal(f['predicted'])}")
    changed = data_changes(project, before_id, after_id)
    data = ("" if changed is None else " Both trained on the same images with the same labels." if not changed
            else f" {changed} image(s) differ between what they trained on (added, removed or relabelled).")
    if diff.config:
        st.markdown("**Settings that differ**")
        st.dataframe(pd.DataFrame([{"setting": k, before_id: str(a), after_id: str(b)} for k, a, b in diff.config]),
                     hide_index=True, width="stretch", key=f"{key}_config")
        if data:
            st.caption(data.strip())
    elif changed == 0:
        st.caption("Nothing differs between the two runs: the same settings, and the same images with the same "
                   "labels.")
    else:
        st.caption("Both runs used the same settings." + (data or " Which images each trained on is not recorded "
                                                                  "for both."))


def data_changes(project: Project, before_id: str, after_id: str) -> int | None:
    """How many images were added, removed or relabelled between two runs' training data (their snapshot.json),
    None when either run has no snapshot."""
    before, after = (Snapshot.load(run_path(project, r)) for r in (before_id, after_id))
    return None if before is None or after is None else before.changed(after.labels())


# Charts are Altair specs with their data inline: st.line_chart/st.bar_chart draw an empty named dataset first and
# then insert the rows, and Vega logs an "Infinite extent" warning for every axis of that empty first draw.
def line_chart(frame: Any, height: int = 260, y_title: str = "value", x_title: str | None = None) -> None:
    """A line per column of `frame` (index: x axis, titled `x_title`, else by the index's name)."""
    import altair as alt

    x = frame.index.name or "x"
    long = frame.reset_index(names=x).melt(x, var_name="series", value_name="_value").dropna()
    chart = alt.Chart(long).mark_line(point=len(frame) < 30).encode(
        x=alt.X(f"{x}:Q", title=x_title or x, axis=alt.Axis(tickMinStep=1)), y=alt.Y("_value:Q", title=y_title),
        color=alt.Color("series:N", legend=alt.Legend(orient="bottom", title=None)),
        tooltip=[f"{x}:Q", "series:N", alt.Tooltip("_value:Q", title=y_title, format=".4f")])
    st.altair_chart(chart, height=height, width="stretch")


def bar_chart(counts: dict[str, int], height: int | None = None, title: str = "images") -> None:
    """Horizontal bars, one per key, in the given order."""
    import altair as alt
    import pandas as pd

    frame = pd.DataFrame({"name": list(counts), title: list(counts.values())})
    # Streamlit's theme drops axis labels that might touch (labelOverlap): it hid every other class. Every bar keeps
    # its name (a long one cut at 160 px, whole in the tooltip), and its count is written at its end
    y = alt.Y("name:N", sort=None, title=None, axis=alt.Axis(labelOverlap=False, labelLimit=160))
    bars = alt.Chart(frame).mark_bar().encode(x=alt.X(f"{title}:Q"), y=y, tooltip=["name:N", f"{title}:Q"])
    chart = bars + bars.mark_text(align="left", dx=3).encode(text=f"{title}:Q")
    st.altair_chart(chart, height=height or max(120, 32 * len(counts)), width="stretch")


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def runs_newest_first(project: Project) -> list[RunSummary]:
    """history.list_runs ordered by start time: run ids only have whole seconds, so two runs started within one
    second (training takes seconds now) may be listed in either order."""
    return sorted(list_runs(project), key=lambda r: (r.started or 0.0, r.run_id), reverse=True)


def pick_run(project: Project, label: str = "Trained model", while_exporting: bool = False) -> Path | None:
    """Select box over the project's succeeded runs (default: the one chosen on the Train page, else the newest).

    with while_exporting, a running job whose metrics are already written counts too: training takes seconds and
    export most of a minute, so Review can start while the models are still being converted."""

    def usable(r: RunSummary) -> bool:
        if r.state is RunState.SUCCEEDED:
            return True
        return while_exporting and r.state is RunState.RUNNING and r.reviewable

    runs = {r.run_id: r for r in list_runs(project) if usable(r)}
    if not runs:
        return None
    ids = list(runs)
    current = st.session_state.get("run_id")
    current = current if current in ids else ids[0]
    names = {r.run_id: f"{r.label} · val accuracy {fmt_pct(r.val_accuracy)} · {r.backbone}"
             + (" · exporting…" if r.state is RunState.RUNNING else "") for r in runs.values()}
    key = f"pick_run_{current}"

    def _changed() -> None:
        st.session_state["run_id"] = st.session_state[key]

    st.selectbox(label, ids, index=ids.index(current), format_func=lambda r: names.get(r, r), key=key,
                 on_change=_changed)
    return runs[current].run_dir


def import_progress(name: str):
    """A progress bar for a folder import, and the callback that moves it (engine's progress(done, total))."""
    shown = literal(name)  # a folder name
    bar = st.progress(0.0, text=f"Importing {shown} ...")

    def update(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Importing {shown}: {done:,} of {total:,} files")

    return update


# ------------------------------------------------------------------------------------------------------------------
# one-time preparation, started before anyone clicks Train
# ------------------------------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=32)
def _prepare_once(cache: str, handle: str, n_classes: int | None) -> int | None:  # noqa: ARG001 - cache: the key
    """Once per server process, machine cache, backbone and class count."""
    try:
        return prepare_in_background(handle, n_classes)
    except OSError as exc:  # a full or read-only disk: the first run will say so, in its own words
        log.warning("could not start preparing %s: %s", handle, exc)
        return None


def warm_up(slug: str | None) -> None:
    """Prepare the default backbone (and the open project's SavedModel template) in the background, so the first
    training run is as fast as the tenth. Never raises: a page must not fail over a head start."""
    n_classes = None
    if slug:
        try:
            n_classes = len(workspace().open_project(slug).classes())
        except (WorkspaceError, OSError):
            n_classes = None
    _prepare_once(str(cache_root()), DEFAULT_BACKBONE, n_classes if n_classes and n_classes >= 2 else None)
