"""Data: upload images or zips, sort the Unsorted inbox with one key per class, browse and fix classes."""

from __future__ import annotations

import uuid
from pathlib import Path

import streamlit as st

from engine.store.ingest import MAX_FILE_BYTES, MAX_ZIP_FILES, MAX_ZIP_TOTAL_BYTES, AddReport
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
# the undo steps that deleted a class, by their first change: undoing one creates the class again first (a plain
# undo sends images whose class is gone to the inbox, which is right when someone else deleted it)
RECREATE_KEY = f"undo_recreate_{project.slug}"
FOCUS_KEY = f"browse_only_{project.slug}"  # Browse shows only these inbox images (those of a deleted class)

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


def _step_id(step: list) -> tuple[str, int]:
    return step[0].sha256, step[0].version


def _record(result: ActionResult | None, done: str | None = None, deleted_class: str | None = None) -> None:
    """Push what was done on this session's undo stack; say what was refused because someone else was faster."""
    if result is None:
        return
    if result.changes:
        stack = st.session_state.setdefault(UNDO_KEY, [])
        stack.append(result.changes)
        del stack[:-UNDO_DEPTH]
        if deleted_class is not None:
            st.session_state.setdefault(RECREATE_KEY, {})[_step_id(result.changes)] = deleted_class
        if done:
            _tell("success", done.replace("{n}", str(result.done)))
    if result.conflicts:
        _tell("warning", result.conflict_message())


def _undo() -> None:
    stack = st.session_state.get(UNDO_KEY, [])
    if not stack:
        return
    step = stack.pop()
    gone = st.session_state.get(RECREATE_KEY, {}).pop(_step_id(step), None)
    if gone is not None and gone not in project.classes():
        common.guarded("Undo", project.create_class, gone)
    result = common.guarded("Undo", project.undo, step, session_id)
    if result is not None and result.conflicts:
        _tell("warning", result.conflict_message())
    elif result is not None and gone is not None:
        _tell("success", f"Class '{gone}' is back, with {result.done} image(s).")


def _undo_then_redraw() -> None:
    _undo()
    st.rerun(scope="app")  # from a fragment: the counts above it changed too


def _undo_button(key: str, shortcut: str | None = None, in_fragment: bool = False) -> None:
    stack = st.session_state.get(UNDO_KEY, [])
    if stack:
        last = stack[-1]
        gone = st.session_state.get(RECREATE_KEY, {}).get(_step_id(last))
        where = common.class_label(last[0].after) if last[0].after != TRASH else "trash"
        what = (f"deleting class '{gone}' ({len(last)} image(s) back)" if gone is not None
                else f"{len(last)} image(s) to {where}")
        st.button(f"Undo ({len(stack)})", key=key, icon=":material/undo:", shortcut=shortcut,
                  on_click=_undo_then_redraw if in_fragment else _undo,
                  help=f"Undo your last action ({common.literal(what)}); several steps back. "
                       "An image someone else changed since is left alone.")


# --- overview ------------------------------------------------------------------------------------------------------
def _overview(compact: bool) -> None:
    n_metrics = min(6, len(classes) + 1)
    # the balance button gets two shares: in one, its label was cut to "Class b…" beside six metrics
    cols = st.columns([1] * n_metrics + ([2] if classes else []))
    cols[0].metric(common.INBOX_LABEL, n_inbox)
    for i, c in enumerate(classes[: n_metrics - 1], start=1):
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
def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:g} GB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:g} MB"


def _limits() -> str:
    """The limits that apply, from where they are set: Streamlit's own line under the uploader names only the
    server's per-upload limit (config.toml), which is for zips; each image must be far smaller."""
    upload = int(st.get_option("server.maxUploadSize")) * 2**20
    return (f"Limits: {_size(MAX_FILE_BYTES)} per image (inside zips too); a zip up to {_size(upload)}, with at most "
            f"{MAX_ZIP_FILES:,} files and {_size(MAX_ZIP_TOTAL_BYTES)} unpacked.")


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
    st.caption(_limits())
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


def _kept(key: str, options: list, default: object) -> None:
    """Put a widget's last value back: Streamlit forgets it while another section is shown (call before the widget,
    and store the value under `<key>_kept` after it)."""
    if st.session_state.get(key) not in options:
        kept = st.session_state.get(f"{key}_kept")
        st.session_state[key] = kept if kept in options else default


def _act(sel_key: str, shas: list[str], view: str, to: str, done: str) -> None:
    picked = common.selected(sel_key, shas)
    # each image is expected where this page showed it: one that someone else moved meanwhile is left alone
    result = common.guarded("Moving", project.act, picked, to, expected=dict.fromkeys(picked, view),
                            session=session_id)
    if result is not None:
        common.set_selection(sel_key, picked, False)
        _record(result, done)
    st.rerun(scope="app")  # the buttons are in a fragment, and the counts above it changed


def _show_whole_inbox() -> None:
    st.session_state.pop(FOCUS_KEY, None)


def _browse_section() -> None:
    st.subheader("Browse")
    views = [INBOX, *classes]
    c1, c2, c3 = st.columns([2, 1, 1])
    # the choice is the class name itself (counts are shown apart): a count that changes never resets the choice
    _kept("browse_view", views, classes[0] if classes and not n_inbox else INBOX)
    view = c1.selectbox("Show", views, format_func=common.class_label, key="browse_view")
    st.session_state["browse_view_kept"] = view
    _kept("browse_size", PAGE_SIZES, PAGE_SIZES[0])
    size = c2.selectbox("Per page", PAGE_SIZES, key="browse_size")
    st.session_state["browse_size_kept"] = size
    # a destination belongs to the view it was picked in: carried over, it sent tulips to dandelion, not the inbox
    if st.session_state.get("browse_dest_view") != view:
        st.session_state.pop("browse_dest", None)
        st.session_state["browse_dest_view"] = view
    if view != INBOX:
        st.session_state.pop(FOCUS_KEY, None)
    focus, pool = st.session_state.get(FOCUS_KEY), []
    if focus is not None:
        wanted = set(focus["shas"])
        pool = [r for r in project.images(INBOX) if r.sha256 in wanted]
        if not pool:  # sorted, moved or undone since: nothing left to pick out
            st.session_state.pop(FOCUS_KEY, None)
            focus = None
    total = len(pool) if focus is not None else (n_inbox if view == INBOX else counts.get(view, 0))
    n_pages = max(1, -(-total // size))
    page_key = f"browse_page_{view}"
    if int(st.session_state.get(page_key, 1)) > n_pages:
        st.session_state[page_key] = n_pages
    page = c3.number_input("Page", min_value=1, max_value=n_pages, value=1, step=1, key=page_key)
    offset = (int(page) - 1) * size
    records = pool[offset:offset + size] if focus is not None else project.images(view, offset=offset, limit=size)
    if not records:
        _show_notes()
        _undo_button("browse_undo")
        st.info(f"No images in {common.literal(common.class_label(view))}. Add some in the Add images section.")
        return
    where = common.class_label(view)
    if focus is not None:
        f1, f2 = st.columns([3, 1], vertical_alignment="center")
        f1.info(common.literal(f"Showing only the {total} image(s) of the inbox that were in class '{focus['label']}' "
                               "before you deleted it."))
        f2.button("Show the whole inbox", key="browse_focus_off", on_click=_show_whole_inbox)
        where = f"{where}, from '{focus['label']}'"
    _browse_grid(view, records, f"{common.literal(where)}: {total} image(s) · page {int(page)} of {n_pages}")
    if n_pages > 1:
        b1, b2, b3 = st.columns([1, 2, 1], vertical_alignment="center")
        b1.button("Previous page", key="browse_prev", icon=":material/chevron_left:", disabled=int(page) <= 1,
                  on_click=_turn_page, args=(page_key, -1, n_pages))
        b2.caption(f"page {int(page)} of {n_pages}")
        b3.button("Next page", key="browse_next", icon=":material/chevron_right:", disabled=int(page) >= n_pages,
                  on_click=_turn_page, args=(page_key, 1, n_pages))


@st.fragment
def _browse_grid(view: str, records: list, caption: str) -> None:
    """The thumbnails, their boxes and what to do with the ticked ones. A fragment: a tick reruns this part only,
    not the whole page (a move or an undo reruns everything: the counts change)."""
    shas = [r.sha256 for r in records]
    sel_key = f"sel_{view}"
    chosen = common.selected(sel_key, shas)
    a1, a2, a3, a4, a5, a6 = st.columns([1.4, 1, 2, 1, 1, 1], vertical_alignment="bottom")
    a1.button("Select all on this page", key="browse_all", on_click=common.set_selection, args=(sel_key, shas, True))
    a2.button("Clear", key="browse_none", on_click=common.set_selection, args=(sel_key, shas, False))
    dest_options = [c for c in [INBOX, *classes] if c != view]
    dest = a3.selectbox("Move selected to", dest_options, format_func=common.class_label, key="browse_dest")
    a4.button(f"Move {len(chosen)}", key="browse_move", type="primary", disabled=not chosen or dest is None,
              on_click=_act, args=(sel_key, shas, view, dest, f"Moved {{n}} image(s) to {common.class_label(dest)}."))
    a5.button(f"Delete {len(chosen)}", key="browse_delete", disabled=not chosen, on_click=_act,
              args=(sel_key, shas, view, TRASH, "Moved {n} image(s) to the project's trash/ folder."),
              icon=":material/delete:")
    with a6:
        _undo_button("browse_undo", in_fragment=True)
    _show_notes()
    st.caption(caption)
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


# --- classes -------------------------------------------------------------------------------------------------------
def _ask_delete() -> None:
    st.session_state["delete_class_asked"] = st.session_state.get("delete_class_pick")


def _cancel_delete() -> None:
    st.session_state.pop("delete_class_asked", None)


def _delete_class(name: str) -> None:
    st.session_state.pop("delete_class_asked", None)
    result = common.guarded("Deleting the class", project.remove_class, name, session=session_id)
    if result is None:
        return
    _record(result, deleted_class=name)
    if result.changes:
        _tell("success", f"Deleted class '{name}'. Its {result.done} image(s) are in the Unsorted inbox now, mixed "
                         "with the others there: the Show button below picks them out; Undo brings the class back.")
    else:
        _tell("success", f"Deleted class '{name}' (it had no images).")
    if result.conflicts:
        _tell("warning", result.conflict_message())


def _last_deletion() -> dict | None:
    """The class this session deleted last and its images, while that is the step Undo would take back."""
    stack = st.session_state.get(UNDO_KEY, [])
    gone = st.session_state.get(RECREATE_KEY, {}).get(_step_id(stack[-1])) if stack else None
    return {"label": gone, "shas": [c.sha256 for c in stack[-1]]} if gone is not None else None


def _show_deleted(deleted: dict) -> None:
    """Browse the inbox, only the images that came from the deleted class (they are mixed with the others there)."""
    st.session_state[FOCUS_KEY] = deleted
    st.session_state["data_section"] = "Browse"
    st.session_state["browse_view"] = INBOX
    st.session_state[f"browse_page_{INBOX}"] = 1


def _delete_class_form() -> None:
    """Pick a class, then confirm, told how many images go where."""
    st.selectbox("Delete class", classes, key="delete_class_pick")
    asked = st.session_state.get("delete_class_asked")
    if asked not in classes:
        st.button("Delete class…", key="delete_class_go", on_click=_ask_delete)
        return
    n = counts.get(asked, 0)
    moves = (f"Its {n} image(s) go to the Unsorted inbox, which holds {n_inbox} image(s) now; you can undo this."
             if n else "It has no images.")
    st.warning(common.literal(f"Delete class '{asked}'? {moves}"))
    y, c = st.columns(2)
    y.button(common.literal(f"Yes, delete '{asked}'"), key="delete_class_yes", type="primary",
             on_click=_delete_class, args=(asked,))
    c.button("Cancel", key="delete_class_no", on_click=_cancel_delete)


def _classes_section() -> None:
    st.subheader("Classes")
    st.caption("Each class is a folder in images/. Deleting a class moves its images to the inbox.")
    _show_notes()
    deleted = _last_deletion()
    if deleted is not None:
        d1, d2 = st.columns(2)
        d1.button(f"Show the {len(deleted['shas'])} image(s) in the inbox", key="deleted_show",
                  icon=":material/visibility:", on_click=_show_deleted, args=(deleted,))
        with d2:
            _undo_button("classes_undo")
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
            renamed = st.session_state.pop("renamed_to", None)
            if renamed is not None:  # the form shows the class under its new name, and no stale text to submit again
                st.session_state["rename_old"], st.session_state["rename_new"] = renamed, ""
            with st.form("rename_class_form"):
                old = st.selectbox("Rename class", classes, key="rename_old")
                new = st.text_input("New name", key="rename_new")
                if st.form_submit_button("Rename"):
                    with common.user_errors("Renaming the class"):
                        renamed = project.rename_class(old, new)
                        common.flash("success", f"Renamed '{old}' to '{renamed}'.")
                        st.session_state["renamed_to"] = renamed
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
            _delete_class_form()
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
