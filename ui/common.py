"""Shared page plumbing: the current project (session state + URL), messages, thumbnails, cached resources."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from engine.images import SUPPORTED
from engine.workspace import INBOX, AddReport, ImageRecord, Project, Workspace, WorkspaceError

log = logging.getLogger("retrain_studio.ui")

HOME = "ui/pages/home.py"
DATA = "ui/pages/data.py"
TRAIN = "ui/pages/train.py"
REVIEW = "ui/pages/review.py"
EXPORT = "ui/pages/export.py"

INBOX_LABEL = "Unsorted (inbox)"
# What the file pickers accept: every format training reads, plus formats people bring that we cannot use (HEIC
# from phones, SVG drawings), so the engine can say why. Streamlit refuses any other extension with an exception.
IMAGE_UPLOAD_TYPES = [*(e.lstrip(".") for e in SUPPORTED), "heic", "heif", "svg"]


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
    slug = st.session_state.get("project")
    if not slug:
        return None
    try:
        return workspace().open_project(slug)
    except WorkspaceError:
        return None


def require_project() -> Project:
    """The open project, or a hint with a link to the Home page and stop."""
    project = current_project()
    if project is None:
        st.info("No project is open. Create one, or try the demo project, on the Projects page.")
        st.page_link(HOME, label="Go to Projects", icon=":material/folder_open:")
        st.stop()
    return project


# ------------------------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------------------------
def flash(kind: str, message: str) -> None:
    """Show a message on the next run (used from button callbacks, which run before the page)."""
    st.session_state.setdefault("_flash", []).append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.pop("_flash", []):
        {"success": st.success, "warning": st.warning, "error": st.error}.get(kind, st.info)(message)


@contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Turn exceptions into a readable st.error (never a traceback on the page); details go to the log."""
    from engine.jobs import JobError

    try:
        yield
    except (WorkspaceError, JobError) as exc:
        st.error(str(exc))
    except ValueError as exc:  # ImageError and config validation are ValueErrors with user messages
        st.error(f"{what}: {exc}")
    except Exception as exc:  # noqa: BLE001 - the page must stay usable
        log.exception("%s failed", what)
        st.error(f"{what} failed: {type(exc).__name__}: {exc}. The details are in the server log; "
                 "try again, or check the files on disk.")


def guarded(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call fn from a callback; store a flash message instead of raising."""
    from engine.jobs import JobError

    try:
        return fn(*args, **kwargs)
    except (WorkspaceError, JobError, ValueError) as exc:
        flash("error", str(exc))
    except Exception as exc:  # noqa: BLE001
        log.exception("%s failed", what)
        flash("error", f"{what} failed: {type(exc).__name__}: {exc}")
    return None


def report_to_state(report: AddReport) -> dict[str, Any]:
    return {"summary": report.summary(), "added": len(report.added), "duplicates": list(report.duplicates),
            "rejected": [list(r) for r in report.rejected], "classes_created": list(report.classes_created),
            "notes": list(report.notes)}


def show_report(report: dict[str, Any] | None) -> None:
    """An upload/import report: what was added, which duplicates were skipped, which files were rejected and why."""
    if not report:
        return
    (st.success if report["added"] else st.warning)(report["summary"])
    for note in report.get("notes", [])[:50]:
        st.info(note)
    if report["duplicates"]:
        with st.expander(f"{len(report['duplicates'])} duplicate(s) skipped: the same image is already here"):
            st.write(", ".join(report["duplicates"][:500]))
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
                text = caption(rec) if caption else rec.filename
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
    try:
        from engine.backbones import BACKBONES
    except Exception as exc:  # noqa: BLE001 - the engine may be half-installed; training will say why
        log.warning("engine.backbones unavailable: %r", exc)
        return ["efficientnet-lite0"]
    return list(BACKBONES)


@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def _predictor(model_path: str, labels_path: str | None, mtime: float):  # noqa: ARG001 - mtime busts the cache
    from engine.predict import load_predictor

    return load_predictor(model_path, labels_path)


def predictor(model_path: Path, labels_path: Path | None):
    """A cached engine.predict Predictor; raises ImportError if engine.predict is not available."""
    import importlib.util

    if importlib.util.find_spec("engine.predict") is None:
        raise ImportError("engine.predict is not installed")
    return _predictor(str(model_path), str(labels_path) if labels_path else None, model_path.stat().st_mtime)


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def pick_run(project: Project, label: str = "Trained model", while_exporting: bool = False) -> Path | None:
    """Select box over the project's succeeded runs (default: the one chosen on the Train page, else the newest).

    with while_exporting, a running job whose metrics are already written counts too: training takes seconds and
    export most of a minute, so Review can start while the models are still being converted."""
    from engine import jobs

    def usable(r: dict) -> bool:
        if r["state"] == "succeeded":
            return True
        return while_exporting and r["state"] == "running" and (jobs.run_path(project, r["run_id"]) /
                                                               "metrics.json").exists()

    runs = [r for r in jobs.list_runs(project) if usable(r)]
    if not runs:
        return None
    ids = [r["run_id"] for r in runs]
    current = st.session_state.get("run_id")
    current = current if current in ids else ids[0]
    names = {r["run_id"]: f"{r['run_id']} · val accuracy {fmt_pct(r['val_accuracy'])} · {r['backbone']}"
             + (" · exporting…" if r["state"] == "running" else "") for r in runs}
    key = f"pick_run_{current}"

    def _changed() -> None:
        st.session_state["run_id"] = st.session_state[key]

    st.selectbox(label, ids, index=ids.index(current), format_func=lambda r: names.get(r, r), key=key,
                 on_change=_changed)
    return jobs.run_path(project, current)
