"""Data: upload images or zips, sort the Unsorted inbox with one key per class, browse and fix classes."""

from __future__ import annotations

import uuid
from pathlib import Path

import streamlit as st

from engine.store.ingest import AddReport
from engine.store.names import INBOX, TRASH
from engine.store.records import ActionResult
from ui import common, suggest

project = common.require_project()
st.title(f"Data · {common.literal(project.name)}")
common.show_flash()

UPLOAD_TYPES = [*common.IMAGE_UPLOAD_TYPES, "zip"]
# keys for the sorter: C and R are reserved by Streamlit; S skips, X trashes, U undoes
SORT_KEYS = [*"1234567890", *"ABDEFGHIJKLMNOPQTVWYZ"]
PAGE_SIZES = [24, 48, 96]
UNDO_DEPTH = 50
UNDO_KEY = f"undo_stack_{project.slug}"  # one undo history per project: another project's steps are not yours here

# One id per browser session: leases (which inbox image this sorter is looking at) and "by someone else" use it.
session_id = st.session_state.setdefault("data_session_id", uuid.uuid4().hex[:16])
counts = project.class_counts()
classes = list(counts)
n_inbox = project.count(INBOX)
for kind, message in st.session_state.pop("data_toasts", []):
    st.toast(common.literal(message), icon=":material/warning:" if kind == "warning" else ":material/check:")


def _tell(kind: str, message: str) -> None:
    """From a callback: a toast (visible wherever the user has scrolled) plus a message by the action buttons.
    `message` is plain text (it names classes): it is shown literally."""
    st.session_state.setdefault("data_toasts", []).append((kind, message))
    st.session_state.setdefault("data_notes", []).append((kind, message))


def _show_notes() -> None:
    for kind, message in st.session_state.pop("data_notes", []):
        (st.warning if kind == "warning" else st.success)(common.literal(message))


def _record(result: ActionResult | None, done: str | None = None) -> None:
    """Push what was done on this session's undo stack; say what was refused because someone else was faster."""
    if result is None:
        return
    if result.changes:
        stack = st.session_state.setdefault(UNDO_KEY, [])
        stack.append(result.changes)
        del stack[:-UNDO_DEPTH]
        if done:
            _tell("success", done.replace("{n}", str(result.done)))
    if result.conflicts:
        _tell("warning", result.conflict_message())


def _undo() -> None:
    stack = st.session_state.get(UNDO_KEY, [])
    if not stack:
        return
    step = stack.pop()
    result = common.guarded("Undo", project.undo, step, session_id)
    if result is not None and result.conflicts:
        _tell("warning", result.conflict_message())


def _undo_button(key: str, shortcut: str | None = None) -> None:
    stack = st.session_state.get(UNDO_KEY, [])
    if stack:
        last = stack[-1]
        where = common.class_label(last[0].after) if last[0].after != TRASH else "trash"
        st.button(f"Undo ({len(stack)})", key=key, icon=":material/undo:", shortcut=shortcut, on_click=_undo,
                  help=f"Undo your last action ({len(last)} image(s) to {common.literal(where)}); several steps back. "
                       "An image someone else changed since is left alone.")


# --- overview ------------------------------------------------------------------------------------------------------
def _overview(compact: bool) -> None:
    cols = st.columns(min(6, len(classes) + 1) + (1 if classes else 0))
    cols[0].metric(common.INBOX_LABEL, n_inbox)
    for i, c in enumerate(classes[: len(cols) - 2], start=1):
        cols[i].metric(common.literal(c), counts[c])
    if classes:
        # a popover floats over the page: opening it never pushes the photo being sorted below the fold
        with cols[-1].popover("Class balance", icon=":material/bar_chart:"):
            common.bar_chart({c: counts[c] for c in classes})
        if compact:
            return
        few = [c for c in classes if counts[c] < 10]
        if few:
            st.warning(f"Classes with fewer than 10 images: {common.literal(', '.join(few))}. Add more for a "
                       "reliable model (training needs at least 2 per class; 20+ is better).")
        sizes = [counts[c] for c in classes if counts[c]]
        if len(sizes) >= 2 and max(sizes) > 3 * min(sizes):
            st.info("The classes are unbalanced (largest is more than 3× the smallest). Add images to the small "
                    "classes, or use class_weights = balanced on the Train page.")


_overview(compact=st.session_state.get("data_section") == "Sort inbox")

if st.session_state.get("data_section") is None:
    st.session_state["data_section"] = "Add images" if not project.count() else ("Sort inbox" if n_inbox else "Browse")
section = st.segmented_control("Section", ["Add images", "Sort inbox", "Browse", "Classes"], key="data_section",
                               label_visibility="collapsed", required=True)


# --- add -----------------------------------------------------------------------------------------------------------
def _remember_target() -> None:
    st.session_state["upload_target_name"] = st.session_state["upload_target"]


def _add_section() -> None:
    st.subheader("Add images")
    st.caption("Pick many images at once, or zips (a zip with one folder per class creates those classes). "
               "Duplicates are skipped; broken files are listed with the reason.")
    targets = [INBOX, *classes]
    target = st.selectbox("Add to", targets, format_func=common.class_label, key="upload_target",
                          on_change=_remember_target,
                          help="Zips with one folder per class use their folders when you add them to the inbox.")
    wanted = st.session_state.get("upload_target_name")
    if wanted not in (None, INBOX) and wanted not in classes:
        st.warning(f"Class '{common.literal(wanted)}' no longer exists (renamed or deleted, perhaps by someone "
                   "else): files added now go to the Unsorted inbox unless you pick another class.")
    n = st.session_state.get("upload_n", 0)
    files = st.file_uploader("Images or zip files", type=UPLOAD_TYPES, accept_multiple_files=True,
                             key=f"uploader_{n}")
    if st.button(f"Add {len(files)} file(s)" if files else "Add files", key="upload_go", type="primary",
                 disabled=not files):
        report = AddReport()
        with common.user_errors("Adding files"), st.spinner(f"Checking and adding {len(files)} file(s) ..."):
            if target != INBOX and target not in project.classes():  # renamed or deleted since the page was drawn
                wanted, target = target, INBOX
            if wanted not in (None, INBOX) and target == INBOX and wanted not in project.classes():
                report.notes.append(f"Class '{wanted}' no longer exists (renamed or deleted meanwhile): the "
                                    f"{len(files)} file(s) went to the Unsorted inbox instead. Sort them from there.")
                st.session_state.pop("upload_target_name", None)
            images = [(f.name, f.getvalue()) for f in files if not f.name.lower().endswith(".zip")]
            for z in (f for f in files if f.name.lower().endswith(".zip")):
                try:
                    report.merge(project.add_zip(z.getvalue(), class_name=None if target == INBOX else target))
                except common.WorkspaceError as exc:
                    report.rejected.append((z.name, str(exc)))
            if images:
                report.merge(project.add_files(images, target, create_class=target == INBOX))
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
                st.error(f"Nothing found at '{common.literal(path_text)}'. Give the full path of a folder or .zip "
                         "file.")
            else:
                with common.user_errors("Importing"), st.spinner("Importing ..."):
                    report = (project.import_image_dir(path, progress=common.import_progress(path.name))
                              if path.is_dir()
                              else project.add_zip(path.read_bytes(), class_name=None if target == INBOX else target))
                    st.session_state["last_report"] = common.report_to_state(report)
                    st.rerun()


# --- sort ----------------------------------------------------------------------------------------------------------
def _sort_to(sha: str, cls: str) -> None:
    # the image was in the inbox when the user saw it: if someone else sorted it meanwhile, say so and move on
    _record(common.guarded("Moving", project.act, [sha], cls, expected={sha: INBOX}, session=session_id))


def _trash(sha: str) -> None:
    _record(common.guarded("Deleting", project.act, [sha], TRASH, expected={sha: INBOX}, session=session_id))


def _skip(sha: str) -> None:
    st.session_state.setdefault("sort_skipped", []).append(sha)


def _sort_section() -> None:
    st.subheader("Sort the inbox")
    if not classes:
        st.info("Create classes first (Classes section), then press a class key for each image.")
        return
    skipped = st.session_state.get("sort_skipped", [])
    rec, sugg = suggest.lease(project, session_id, skipped)  # model-suggested order and classes (issue 10)
    st.session_state["sort_leasing"] = True
    _show_notes()
    _undo_button("sort_undo_btn", shortcut="U")
    if rec is None:
        busy = project.leased_by_others(session_id)
        if skipped:
            st.info(f"{len(skipped)} skipped image(s) left in the inbox.")
            if st.button("Show skipped again", key="sort_reset"):
                st.session_state["sort_skipped"] = []
                st.rerun()
        elif busy:
            st.info(f"The other {busy} inbox image(s) are being sorted by someone else right now.")
            st.button("Check again", key="sort_refresh")
        else:
            st.success("The inbox is empty: everything is sorted.")
        return
    keys = project.class_keys(SORT_KEYS)
    st.caption(f"{n_inbox} left · press a key or click a class · S skips · X moves to trash · U undoes")
    img_col, btn_col = st.columns([3, 2], gap="large")
    with img_col:
        try:
            st.image(str(rec.path), caption=common.literal(rec.source_name), width=480)
        except Exception:  # noqa: BLE001 - an odd file must not block sorting
            data = common.thumbnail(project, rec.sha256)
            if data:
                st.image(data, caption=common.literal(rec.source_name))
            else:
                st.warning(f"Cannot show {common.literal(rec.source_name)}; skip or delete it.")
    with btn_col:
        suggest.accept_button(project, rec, sugg, _sort_to)
        # no class is highlighted: a coloured first button reads as a suggestion
        for i, cls in enumerate(classes):
            st.button(common.literal(cls), key=f"sort_to_{i}", shortcut=keys.get(cls), width="stretch",
                      on_click=_sort_to, args=(rec.sha256, cls))
        c1, c2 = st.columns(2)
        c1.button("Skip", key="sort_skip", shortcut="S", width="stretch", on_click=_skip, args=(rec.sha256,))
        c2.button("Trash", key="sort_trash", shortcut="X", width="stretch", icon=":material/delete:",
                  on_click=_trash, args=(rec.sha256,))
    queue = suggest.next_up(project, session_id, [*skipped, rec.sha256])
    suggest.bulk_accept(project, sugg)
    if queue:
        st.caption("Next up")
        nxt = st.columns(6)
        for col, r in zip(nxt, queue, strict=False):
            data = common.thumbnail(project, r.sha256)
            if data:
                col.image(data, width="stretch")


# --- browse --------------------------------------------------------------------------------------------------------
GRID_CSS = """<style>
.st-key-browse_grid [data-testid="stImage"] img {aspect-ratio: 1 / 1; object-fit: cover; width: 100%;}
.st-key-browse_grid [data-testid="stCheckbox"] p {white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
  font-size: 0.8rem;}
.st-key-browse_grid [data-testid="stCheckbox"] label {max-width: 100%;}
</style>"""


def _short(name: str, limit: int = 18) -> str:
    """A file name that fits one line: the middle gives way, so the start and the extension stay readable."""
    return name if len(name) <= limit else f"{name[: limit - 9]}…{name[-8:]}"


def _turn_page(key: str, delta: int, n_pages: int) -> None:
    st.session_state[key] = min(n_pages, max(1, int(st.session_state.get(key, 1)) + delta))


def _browse_section() -> None:
    st.subheader("Browse")
    views = [INBOX, *classes]
    c1, c2, c3 = st.columns([2, 1, 1])
    # the choice is the class name itself (counts are shown apart): a count that changes never resets the choice
    if st.session_state.get("browse_view") not in views:
        st.session_state["browse_view"] = classes[0] if classes and not n_inbox else INBOX
    view = c1.selectbox("Show", views, format_func=common.class_label, key="browse_view")
    size = c2.selectbox("Per page", PAGE_SIZES, key="browse_size")
    total = n_inbox if view == INBOX else counts.get(view, 0)
    n_pages = max(1, -(-total // size))
    page_key = f"browse_page_{view}"
    if int(st.session_state.get(page_key, 1)) > n_pages:
        st.session_state[page_key] = n_pages
    page = c3.number_input("Page", min_value=1, max_value=n_pages, value=1, step=1, key=page_key)
    records = project.images(view, offset=(int(page) - 1) * size, limit=size)
    shas = [r.sha256 for r in records]
    sel_key = f"sel_{view}"
    if not records:
        _show_notes()
        _undo_button("browse_undo")
        st.info(f"No images in {common.literal(common.class_label(view))}. Add some in the Add images section.")
        return
    chosen = common.selected(sel_key, shas)
    a1, a2, a3, a4, a5, a6 = st.columns([1, 1, 2, 1, 1, 1], vertical_alignment="bottom")
    a1.button("Select all", key="browse_all", on_click=common.set_selection, args=(sel_key, shas, True))
    a2.button("Clear", key="browse_none", on_click=common.set_selection, args=(sel_key, shas, False))
    dest_options = [c for c in [INBOX, *classes] if c != view]
    dest = a3.selectbox("Move selected to", dest_options, format_func=common.class_label, key="browse_dest")

    def act(to: str, done: str) -> None:
        picked = common.selected(sel_key, shas)
        # each image is expected where this page showed it: one that someone else moved meanwhile is left alone
        result = common.guarded("Moving", project.act, picked, to, expected=dict.fromkeys(picked, view),
                                session=session_id)
        if result is not None:
            common.set_selection(sel_key, picked, False)
            _record(result, done)

    a4.button(f"Move {len(chosen)}", key="browse_move", type="primary", disabled=not chosen or not dest_options,
              on_click=act, args=(dest, "Moved {n} image(s) to " + common.class_label(dest) + "."))
    a5.button(f"Delete {len(chosen)}", key="browse_delete", disabled=not chosen, on_click=act,
              args=(TRASH, "Moved {n} image(s) to the project's trash/ folder."), icon=":material/delete:")
    with a6:
        _undo_button("browse_undo")
    _show_notes()
    st.caption(f"{common.literal(common.class_label(view))}: {total} image(s) · page {int(page)} of {n_pages}")
    st.markdown(GRID_CSS, unsafe_allow_html=True)
    columns = 6
    with st.container(key="browse_grid"):
        for start in range(0, len(records), columns):
            cols = st.columns(columns)
            for col, rec in zip(cols, records[start:start + columns], strict=False):
                with col:
                    data = common.thumbnail(project, rec.sha256)
                    if data is None:
                        st.caption("(unreadable)")
                    else:
                        st.image(data, width="stretch")
                    short = _short(rec.source_name)
                    st.checkbox(common.literal(short), key=f"{sel_key}-{rec.sha256}",
                                help=common.literal(rec.source_name) if short != rec.source_name else None)
    if n_pages > 1:
        b1, b2, b3 = st.columns([1, 2, 1], vertical_alignment="center")
        b1.button("Previous page", key="browse_prev", icon=":material/chevron_left:", disabled=int(page) <= 1,
                  on_click=_turn_page, args=(page_key, -1, n_pages))
        b2.caption(f"page {int(page)} of {n_pages}")
        b3.button("Next page", key="browse_next", icon=":material/chevron_right:", disabled=int(page) >= n_pages,
                  on_click=_turn_page, args=(page_key, 1, n_pages))


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
            st.markdown(common.literal(", ".join(r.source_name for r in trashed[:200])))


if section != "Sort inbox" and st.session_state.pop("sort_leasing", False):
    common.guarded("Sorting", project.release_leases, session_id)  # the image held in the sorter is free again
{"Add images": _add_section, "Sort inbox": _sort_section, "Browse": _browse_section,
 "Classes": _classes_section}.get(section or "Add images", _add_section)()
