"""Projects: create, open, rename, delete; import an image folder or zip; a demo project to try everything."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.data.demo import make_demo_dataset
from engine.runs import jobs
from ui import common

ws = common.workspace()
st.title("Retrain Studio")
st.caption("Turn folders of photos into an image classifier you can download and deploy — offline, in minutes.")
common.show_flash()


def _open(slug: str) -> None:
    common.set_project(slug)  # a project that cannot be opened says why on every page, with what to do
    name = next((p.name for p in ws.list_projects() if p.slug == slug), slug)
    common.flash("success", f"Opened project '{name}'.")


def _create(name: str) -> None:
    project = ws.create_project(name)
    common.set_project(project.slug)
    common.flash("success", f"Created project '{project.name}'. Add images on the Data page.")


def _create_demo() -> None:
    existing = {p.name for p in ws.list_projects()}
    name = next(n for n in ("Demo", *(f"Demo {i}" for i in range(2, 1000))) if n not in existing)
    project = ws.create_project(name)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_dataset(Path(tmp) / "demo")
        report = project.import_image_dir(root)
    common.set_project(project.slug)
    common.flash("success", f"Created '{name}' with {len(report.added)} images in "
                            f"{len(project.classes())} classes. Go to Train and press Start.")


# --- open ----------------------------------------------------------------------------------------------------------
projects = ws.list_projects()
current = st.session_state.get("project")
left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader("Your projects")
    if not projects:
        st.info(f"No projects yet in `{ws.root}`. Create one on the right, or start with the demo project.")
    else:
        table = pd.DataFrame([{
            "project": p.name, "images": p.n_images, "classes": p.n_classes, "unsorted": p.n_inbox,
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(p.created_at)) if p.created_at else "",
            "open": "✔" if p.slug == current else "",
            "note": "cannot be read now: open it to see why" if p.problem else "",
        } for p in projects])
        st.dataframe(table, hide_index=True, width="stretch")
        slugs = [p.slug for p in projects]
        names = {p.slug: p.name for p in projects}
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        # keyed by the open project: after a create or import the picker starts at the new project, not at the
        # choice left over from before (which "Open" would switch back to)
        pick_key = f"home_open_pick_{current}"
        c1.selectbox("Open a project", slugs, index=slugs.index(current) if current in slugs else 0,
                     format_func=lambda s: f"{names[s]}  ({s})", key=pick_key)
        c2.button("Open", key="home_open", type="primary",
                  on_click=lambda: common.guarded("Open", _open, st.session_state[pick_key]))

with right:
    st.subheader("Start something")
    with st.form("create_form", clear_on_submit=True, border=True):
        name = st.text_input("New project name", placeholder="e.g. Birds at the feeder")
        if st.form_submit_button("Create project", type="primary"):
            if not name.strip():
                st.error("Type a name for the project first.")
            else:
                with common.user_errors("Creating the project"):
                    _create(name)
                    st.rerun()
    st.button("Create demo project", key="home_demo", icon=":material/auto_awesome:",
              help="Two small generated classes (text / shapes): train a model in about a minute.",
              on_click=common.guarded, args=("Creating the demo project", _create_demo))

# --- import --------------------------------------------------------------------------------------------------------
st.divider()
st.subheader("Import an existing dataset")
st.caption("A folder with one subfolder per class (the `image_dir` layout), or a zip of one. Loose images go to "
           "the Unsorted inbox. Files are copied; the original stays untouched.")
if st.session_state.pop("_import_done", False):  # empty the inputs, so a second click cannot import a duplicate
    st.session_state["import_name"] = ""
    st.session_state["import_path"] = ""
imp_name = st.text_input("Project name for the import", key="import_name", placeholder="defaults to the folder name")
tab_path, tab_zip = st.tabs(["Folder or zip on this computer", "Upload a zip"])
with tab_path:
    path_text = st.text_input("Path", key="import_path", placeholder="/home/me/photos/flowers  or  flowers.zip")
    if st.button("Import from path", key="import_path_go"):
        path = Path(path_text.strip().strip('"')).expanduser() if path_text.strip() else None
        if path is None or not path.exists():
            st.error(f"Nothing found at '{common.literal(path_text)}'. Give the full path of a folder or a .zip file "
                     "on the machine running Retrain Studio.")
        elif not (path.is_dir() or path.suffix.lower() == ".zip"):
            st.error("That is neither a folder nor a .zip file.")
        else:
            with common.user_errors("Importing"), st.spinner(f"Importing {common.literal(path.name)} ..."):
                project = ws.create_project(imp_name.strip() or path.stem)
                try:
                    report = (project.import_image_dir(path, progress=common.import_progress(path.name))
                              if path.is_dir() else project.add_zip(path.read_bytes()))
                except Exception:
                    ws.delete_project(project.slug)
                    raise
                common.set_project(project.slug)
                st.session_state["last_report"] = common.report_to_state(report)
                st.session_state["_import_done"] = True
                common.flash("success", f"Imported into '{project.name}': {report.summary()}")
                st.rerun()
with tab_zip:
    up = st.file_uploader("Zip file", type=["zip"], key=f"import_zip_{st.session_state.get('import_zip_n', 0)}")
    if st.button("Import zip", key="import_zip_go", disabled=up is None):
        with common.user_errors("Importing the zip"), st.spinner(f"Importing {common.literal(up.name)} ..."):
            project = ws.create_project(imp_name.strip() or Path(up.name).stem)
            try:
                report = project.add_zip(up.getvalue())
            except Exception:
                ws.delete_project(project.slug)
                raise
            common.set_project(project.slug)
            st.session_state["last_report"] = common.report_to_state(report)
            st.session_state["import_zip_n"] = st.session_state.get("import_zip_n", 0) + 1
            st.session_state["_import_done"] = True
            common.flash("success", f"Imported into '{project.name}': {report.summary()}")
            st.rerun()
common.show_report(st.session_state.get("last_report"))

# --- manage the open project ---------------------------------------------------------------------------------------
project = common.current_project()
if project is not None:
    st.divider()
    st.subheader(f"Project “{common.literal(project.name)}”")
    st.caption(f"Stored in `{project.path}` — images in `images/<class>/`, readable by any tool.")
    c1, c2 = st.columns(2, gap="large")
    with c1:
        new_name = st.text_input("Rename to", value=project.name, key=f"rename_{project.slug}")
        if st.button("Rename", key="rename_go"):
            with common.user_errors("Renaming"):
                ws.rename_project(project.slug, new_name)
                common.flash("success", f"Renamed to '{new_name.strip()}'.")
                st.rerun()
    with c2:
        with st.expander("Delete this project", icon=":material/delete:"):
            st.warning(f"This deletes `{project.path}`: all {project.count()} images, classes and trained models.")
            sure = st.checkbox(f"Yes, delete '{common.literal(project.name)}' for good",
                               key=f"delete_sure_{project.slug}")
            if st.button("Delete project", key="delete_go", type="primary", disabled=not sure):
                with common.user_errors("Deleting"):
                    name = project.name  # read before: the project's index goes with it
                    jobs.delete_project(ws, project.slug)
                    common.set_project(None)
                    common.flash("success", f"Deleted '{name}'.")
                    st.rerun()
    st.page_link(common.DATA, label="Next: add and sort images", icon=":material/arrow_forward:")
