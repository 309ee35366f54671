"""Data: upload images or zips, sort the Unsorted inbox with one key per class, browse and fix classes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from engine.workspace import INBOX
from ui import common

project = common.require_project()
st.title(f"Data · {project.name}")
common.show_flash()

UPLOAD_TYPES = [*common.IMAGE_UPLOAD_TYPES, "zip"]
# keys for the sorter: C and R are reserved by Streamlit; S skips, X trashes, U undoes
SORT_KEYS = [*"1234567890", *"ABDEFGHIJKLMNOPQTVWYZ"]
PAGE_SIZES = [24, 48, 96]

counts = project.counts()
classes = [c for c in counts if c != INBOX]
n_inbox = counts.get(INBOX, 0)


# --- overview ------------------------------------------------------------------------------------------------------
def _overview() -> None:
    cols = st.columns(min(6, len(classes) + 1))
    cols[0].metric(common.INBOX_LABEL, n_inbox)
    for i, c in enumerate(classes[: len(cols) - 1], start=1):
        cols[i].metric(c, counts[c])
    if classes:
        with st.expander("Class balance", expanded=False):
            st.bar_chart(pd.DataFrame({"images": [counts[c] for c in classes]}, index=classes), horizontal=True,
                         height=max(120, 32 * len(classes)))
        few = [c for c in classes if counts[c] < 10]
        if few:
            st.warning(f"Classes with fewer than 10 images: {', '.join(few)}. Add more for a reliable model "
                       "(training needs at least 2 per class; 20+ is better).")
        sizes = [counts[c] for c in classes if counts[c]]
        if len(sizes) >= 2 and max(sizes) > 3 * min(sizes):
            st.info("The classes are unbalanced (largest is more than 3× the smallest). Add images to the small "
                    "classes, or use class_weights = balanced on the Train page.")


_overview()

if st.session_state.get("data_section") is None:
    st.session_state["data_section"] = "Add images" if not project.count() else ("Sort inbox" if n_inbox else "Browse")
section = st.segmented_control("Section", ["Add images", "Sort inbox", "Browse", "Classes"], key="data_section",
                               label_visibility="collapsed", required=True)


# --- add -----------------------------------------------------------------------------------------------------------
def _add_section() -> None:
    st.subheader("Add images")
    st.caption("Pick many images at once, or zips (a zip with one folder per class creates those classes). "
               "Duplicates are skipped; broken files are listed with the reason.")
    targets = [INBOX, *classes]
    target = st.selectbox("Add to", targets, format_func=common.class_label, key="upload_target",
                          help="Zips with one folder per class use their folders when you add them to the inbox.")
    n = st.session_state.get("upload_n", 0)
    files = st.file_uploader("Images or zip files", type=UPLOAD_TYPES, accept_multiple_files=True,
                             key=f"uploader_{n}")
    if st.button(f"Add {len(files)} file(s)" if files else "Add files", key="upload_go", type="primary",
                 disabled=not files):
        from engine.workspace import AddReport

        report = AddReport()
        with common.user_errors("Adding files"), st.spinner(f"Checking and adding {len(files)} file(s) ..."):
            images = [(f.name, f.getvalue()) for f in files if not f.name.lower().endswith(".zip")]
            for z in (f for f in files if f.name.lower().endswith(".zip")):
                try:
                    report.merge(project.add_zip(z.getvalue(), class_name=None if target == INBOX else target))
                except common.WorkspaceError as exc:
                    report.rejected.append((z.name, str(exc)))
            if images:
                report.merge(project.add_files(images, target))
            st.session_state["last_report"] = common.report_to_state(report)
            st.session_state["upload_n"] = n + 1  # a fresh uploader: the same files are not added twice
            st.rerun()
    common.show_report(st.session_state.get("last_report"))

    with st.expander("Add from a folder or zip on this computer"):
        path_text = st.text_input("Path", key="data_import_path",
                                  placeholder="/path/to/image_dir (one subfolder per class) or /path/to/photos.zip")
        if st.button("Import", key="data_import_go"):
            path = Path(path_text.strip().strip('"')).expanduser()
            if not path_text.strip() or not path.exists():
                st.error(f"Nothing found at '{path_text}'. Give the full path of a folder or .zip file.")
            else:
                with common.user_errors("Importing"), st.spinner("Importing ..."):
                    report = (project.import_image_dir(path) if path.is_dir()
                              else project.add_zip(path.read_bytes(), class_name=None if target == INBOX else target))
                    st.session_state["last_report"] = common.report_to_state(report)
                    st.rerun()


# --- sort ----------------------------------------------------------------------------------------------------------
def _sort_to(sha: str, cls: str | None) -> None:
    previous = project.get(sha)
    if common.guarded("Moving", project.move, [sha], cls) is not None:
        st.session_state["sort_undo"] = (sha, previous.class_name if previous else None)


def _trash(sha: str) -> None:
    if common.guarded("Deleting", project.delete_images, [sha]):
        st.session_state["sort_undo"] = (sha, "__trash__")


def _skip(sha: str) -> None:
    st.session_state.setdefault("sort_skipped", []).append(sha)


def _undo() -> None:
    sha, where = st.session_state.pop("sort_undo", (None, None))
    if sha is None:
        return
    if where == "__trash__":
        common.guarded("Undo", project.restore_images, [sha])
    else:
        common.guarded("Undo", project.move, [sha], where)


def _sort_section() -> None:
    st.subheader("Sort the inbox")
    if not classes:
        st.info("Create classes first (Classes section), then press a class key for each image.")
        return
    skipped = set(st.session_state.get("sort_skipped", []))
    queue = [r for r in project.images(INBOX, limit=len(skipped) + 6) if r.sha256 not in skipped]
    if st.session_state.get("sort_undo"):
        st.button("Undo last", key="sort_undo_btn", icon=":material/undo:", shortcut="U", on_click=_undo)
    if not queue:
        if skipped:
            st.info(f"{len(skipped)} skipped image(s) left in the inbox.")
            if st.button("Show skipped again", key="sort_reset"):
                st.session_state["sort_skipped"] = []
                st.rerun()
        else:
            st.success("The inbox is empty: everything is sorted.")
        return
    rec = queue[0]
    st.caption(f"{n_inbox} left · press a key or click a class · S skips · X moves to trash · U undoes")
    img_col, btn_col = st.columns([3, 2], gap="large")
    with img_col:
        try:
            st.image(str(rec.path), caption=rec.source_name, width=480)
        except Exception:  # noqa: BLE001 - an odd file must not block sorting
            data = common.thumbnail(project, rec.sha256)
            if data:
                st.image(data, caption=rec.source_name)
            else:
                st.warning(f"Cannot show {rec.source_name}; skip or delete it.")
    with btn_col:
        for i, cls in enumerate(classes):
            key = SORT_KEYS[i] if i < len(SORT_KEYS) else None
            st.button(cls, key=f"sort_to_{i}", shortcut=key, width="stretch", on_click=_sort_to,
                      args=(rec.sha256, cls), type="primary" if i == 0 else "secondary")
        c1, c2 = st.columns(2)
        c1.button("Skip", key="sort_skip", shortcut="S", width="stretch", on_click=_skip, args=(rec.sha256,))
        c2.button("Trash", key="sort_trash", shortcut="X", width="stretch", icon=":material/delete:",
                  on_click=_trash, args=(rec.sha256,))
    if len(queue) > 1:
        st.caption("Next up")
        nxt = st.columns(6)
        for col, r in zip(nxt, queue[1:7], strict=False):
            data = common.thumbnail(project, r.sha256)
            if data:
                col.image(data, width="stretch")


# --- browse --------------------------------------------------------------------------------------------------------
def _browse_section() -> None:
    st.subheader("Browse")
    views = [INBOX, *classes]
    c1, c2, c3 = st.columns([2, 1, 1])
    if st.session_state.get("browse_view") not in views:
        st.session_state["browse_view"] = classes[0] if classes and not n_inbox else INBOX
    view = c1.selectbox("Show", views, format_func=lambda v: f"{common.class_label(v)} ({counts.get(v, 0)})",
                        key="browse_view")
    size = c2.selectbox("Per page", PAGE_SIZES, key="browse_size")
    total = counts.get(view, 0)
    n_pages = max(1, -(-total // size))
    page = c3.number_input("Page", min_value=1, max_value=n_pages, value=1, step=1, key=f"browse_page_{view}")
    records = project.images(view, offset=(int(page) - 1) * size, limit=size)
    shas = [r.sha256 for r in records]
    sel_key = f"sel_{view}"
    if not records:
        st.info(f"No images in {common.class_label(view)}. Add some in the Add images section.")
        return
    chosen = common.selected(sel_key, shas)
    a1, a2, a3, a4, a5 = st.columns([1, 1, 2, 1, 1], vertical_alignment="bottom")
    a1.button("Select all", key="browse_all", on_click=common.set_selection, args=(sel_key, shas, True))
    a2.button("Clear", key="browse_none", on_click=common.set_selection, args=(sel_key, shas, False))
    dest_options = [c for c in [INBOX, *classes] if c != view]
    dest = a3.selectbox("Move selected to", dest_options, format_func=common.class_label, key="browse_dest")

    def move_selected() -> None:
        picked = common.selected(sel_key, shas)
        moved = common.guarded("Moving", project.move, picked, dest)
        if moved is not None:
            common.set_selection(sel_key, picked, False)
            common.flash("success", f"Moved {moved} image(s) to {common.class_label(dest)}.")

    def trash_selected() -> None:
        picked = common.selected(sel_key, shas)
        done = common.guarded("Deleting", project.delete_images, picked)
        if done is not None:
            common.set_selection(sel_key, picked, False)
            common.flash("success", f"Moved {done} image(s) to the project's trash/ folder.")

    a4.button(f"Move {len(chosen)}", key="browse_move", type="primary", disabled=not chosen or not dest_options,
              on_click=move_selected)
    a5.button(f"Delete {len(chosen)}", key="browse_delete", disabled=not chosen, on_click=trash_selected,
              icon=":material/delete:")
    st.caption(f"{total} image(s) · page {int(page)} of {n_pages}")
    common.image_grid(project, records, sel_key, caption=lambda r: r.source_name[:28])


# --- classes -------------------------------------------------------------------------------------------------------
def _classes_section() -> None:
    st.subheader("Classes")
    st.caption("Each class is a folder in images/. Deleting a class moves its images to the inbox.")
    c1, c2 = st.columns(2, gap="large")
    with c1:
        with st.form("new_class_form", clear_on_submit=True):
            name = st.text_input("New class", placeholder="e.g. roses")
            if st.form_submit_button("Create class", type="primary"):
                with common.user_errors("Creating the class"):
                    created = project.create_class(name)
                    common.flash("success", f"Created class '{created}'.")
                    st.rerun()
        if classes:
            with st.form("rename_class_form"):
                old = st.selectbox("Rename class", classes)
                new = st.text_input("New name")
                if st.form_submit_button("Rename"):
                    with common.user_errors("Renaming the class"):
                        project.rename_class(old, new)
                        common.flash("success", f"Renamed '{old}' to '{new.strip()}'.")
                        st.rerun()
    with c2:
        if len(classes) >= 2:
            with st.form("merge_form"):
                sources = st.multiselect("Merge these classes", classes)
                target = st.selectbox("into", classes)
                if st.form_submit_button("Merge"):
                    if not sources or sources == [target]:
                        st.error("Pick one or more classes to merge into another one.")
                    else:
                        with common.user_errors("Merging"):
                            moved = project.merge_classes(sources, target)
                            common.flash("success", f"Merged {', '.join(s for s in sources if s != target)} into "
                                                    f"'{target}' ({moved} images moved).")
                            st.rerun()
        if classes:
            with st.form("delete_class_form"):
                doomed = st.selectbox("Delete class", classes)
                if st.form_submit_button("Delete class (images go to the inbox)"):
                    with common.user_errors("Deleting the class"):
                        moved = project.delete_class(doomed)
                        common.flash("success", f"Deleted class '{doomed}'; {moved} image(s) moved to the inbox.")
                        st.rerun()
    with st.expander("Check folders against the index"):
        st.caption("If you changed files in the project folder by hand, this finds and fixes the differences.")
        if st.button("Check", key="check_go"):
            with common.user_errors("Checking"):
                rep = project.consistency_check(repair=False)
                if rep.ok:
                    st.success("Folders and index agree.")
                else:
                    st.warning(f"{len(rep.missing_files)} missing, {len(rep.misplaced)} moved by hand, "
                               f"{len(rep.untracked_files)} untracked file(s), "
                               f"{len(rep.unknown_folders)} unknown folder(s).")
                    st.session_state["check_needed"] = True
        if st.session_state.get("check_needed") and st.button("Repair", key="check_repair"):
            with common.user_errors("Repairing"):
                rep = project.consistency_check(repair=True)
                st.session_state.pop("check_needed", None)
                common.flash("success", "Repaired: " + ("; ".join(rep.notes[:20]) or "nothing to do"))
                st.rerun()
    trashed = project.trashed()
    if trashed:
        with st.expander(f"Trash ({len(trashed)})"):
            if st.button("Restore all", key="trash_restore"):
                with common.user_errors("Restoring"):
                    n = project.restore_images([r.sha256 for r in trashed])
                    common.flash("success", f"Restored {n} image(s).")
                    st.rerun()
            st.write(", ".join(r.source_name for r in trashed[:200]))


{"Add images": _add_section, "Sort inbox": _sort_section, "Browse": _browse_section,
 "Classes": _classes_section}.get(section or "Add images", _add_section)()
