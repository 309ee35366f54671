"""The model-assisted inbox for the Sorter (ui/pages/data.py): a trained head suggests a class for each unsorted
image; the queue can be ordered by confidence; Enter accepts; "accept all >= X" says what X meant in cross-validation
and moves in bulk after a preview of every image, any of which can be left out.

Suggestions are kept in the session per run and per image, so a key press costs a lookup, not a recomputation;
after a retrain (a newer run) they are recomputed from cached embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from engine.curate.model import newest_run
from engine.curate.suggestions import (
    Suggestion,
    accept_suggestions,
    inbox_suggestions,
    order_suggestions,
    threshold_check,
)
from engine.store.names import INBOX
from engine.store.records import ImageRecord
from engine.store.workspace import Project
from ui import common

ORDERS = ["Oldest first", "Least confident first", "Most confident first"]


def _state(project: Project) -> dict:
    run = newest_run(project)
    key = f"suggest::{project.slug}"
    state = st.session_state.get(key)
    run_id = str(run) if run else ""
    if state is None or state["run"] != run_id:
        state = {"run": run_id, "by_sha": {}}
        st.session_state[key] = state
    return state


def suggestions(project: Project, records: Sequence[ImageRecord]) -> dict[str, Suggestion]:
    """sha256 -> Suggestion for these inbox records ({} when the project has no trained model with a head)."""
    state = _state(project)
    if not state["run"]:
        return {}
    missing = [r for r in records if r.sha256 not in state["by_sha"]]
    if missing:
        try:
            with st.spinner(f"Model suggestions for {len(missing)} image(s) ..."):
                for s in inbox_suggestions(project, missing):
                    state["by_sha"][s.sha256] = s
        except Exception as exc:  # noqa: BLE001 - sorting must keep working without suggestions
            common.log.warning("no inbox suggestions: %r", exc)
            state["run"] = ""
            return {}
    return {r.sha256: state["by_sha"][r.sha256] for r in records if r.sha256 in state["by_sha"]}


def _order(project: Project) -> tuple[str, dict[str, Suggestion]]:
    if newest_run(project) is None:
        return ORDERS[0], {}
    order = st.segmented_control("Order", ORDERS, key="sort_order", default=ORDERS[0],
                                 label_visibility="collapsed") or ORDERS[0]
    return order, suggestions(project, project.images(INBOX))


def _ranked(order: str, sugg: dict[str, Suggestion]) -> list[str]:
    if order == ORDERS[0] or not sugg:
        return []
    return [s.sha256 for s in order_suggestions(list(sugg.values()), order == ORDERS[1])]


def lease(project: Project, session: str, skipped: Sequence[str]) -> tuple[ImageRecord | None,
                                                                         dict[str, Suggestion]]:
    """The image this session sorts next (in the chosen order) and the inbox suggestions."""
    order, sugg = _order(project)
    if st.session_state.get("sort_order_used", ORDERS[0]) != order:  # a new order starts from its first image
        common.guarded("Sorting", project.release_leases, session)
        st.session_state["sort_order_used"] = order
    ranked = _ranked(order, sugg)
    st.session_state["sort_ranked"] = ranked
    if not ranked:
        return common.guarded("Sorting", project.lease_next, session, skipped), sugg
    return common.guarded("Sorting", project.lease_in_order, session, ranked, skipped), sugg


def next_up(project: Project, session: str, skip: Sequence[str], limit: int = 6) -> list[ImageRecord]:
    """The 'next up' preview in the same order as the queue."""
    ranked = st.session_state.get("sort_ranked") or []
    if not ranked:
        return project.inbox_queue(session, skip=skip, limit=limit)
    pool = {r.sha256: r for r in project.inbox_queue(session, skip=skip, limit=len(ranked) + limit)}
    return [pool[s] for s in ranked if s in pool][:limit]


def accept_button(project: Project, rec: ImageRecord, sugg: dict[str, Suggestion], on_accept) -> None:
    """'Accept: <class> (87%)' with the Enter key, under the image being sorted."""
    s = sugg.get(rec.sha256)
    if s is None or s.class_name not in project.classes():
        return
    st.button(f"Accept: {common.literal(s.class_name)} ({s.confidence:.0%})", key="sort_accept", shortcut="Enter",
              type="primary", width="stretch", icon=":material/check:", on_click=on_accept,
              args=(rec.sha256, s.class_name),
              help="The newest model's suggestion for this image; the confidence is checked against the images "
              "the model was trained on (cautiously while there are few). Enter accepts it.")


PREVIEW_PAGE = 24  # thumbnails per page of the bulk preview


def _checked_caption(project: Project, threshold: float, n_chosen: int) -> None:
    """What the threshold meant when the model suggested classes for images it had not seen (cross-validation)."""
    run = newest_run(project)
    check = common.guarded("Reading the run's cross-validation", threshold_check, run, threshold,
                           project.classes()) if run else None
    if check is None:
        st.caption("This model kept no cross-validation results, so how often suggestions this sure were right is "
                   "not known: look at each image below before moving them.")
        return
    if not check.accepted:
        st.caption(f"In cross-validation the model was never {threshold:.0%} sure of any of the {check.total} "
                   "labelled images, so these suggestions are untested: look at each image below.")
        return
    precision = check.precision or 0.0
    wrong = round((1 - precision) * n_chosen)
    by_class = " · ".join(f"{common.literal(c)} {r} of {n}" for c, (r, n) in sorted(check.per_class.items()))
    st.caption(f"In cross-validation (each labelled image scored by a model that had not seen it, as these "
               f"suggestions are), the model was at least {threshold:.0%} sure of {check.accepted} of "
               f"{check.total} images and right about {check.right} of them: **{precision:.1%}**. "
               + (f"So about {wrong} of these {n_chosen} may be wrong: look through them below and leave those out. "
                  if wrong else "")
               + f"Right, by suggested class: {by_class}.")


def _preview(project: Project, chosen: list[Suggestion], left_out: set[str]) -> None:
    """Every image that would move, grouped by class (a wrong one stands out among its class), with "leave out"."""
    n_pages = max(1, -(-len(chosen) // PREVIEW_PAGE))
    page = st.number_input("Preview page", 1, n_pages, 1, key="bulk_page") if n_pages > 1 else 1
    shown = chosen[(int(page) - 1) * PREVIEW_PAGE: int(page) * PREVIEW_PAGE]

    def toggle(sha: str) -> None:
        (left_out.discard if sha in left_out else left_out.add)(sha)

    cols = st.columns(6)
    for i, s in enumerate(shown):
        with cols[i % 6]:
            data = common.thumbnail(project, s.sha256)
            if data:
                st.image(data, caption=f"{common.literal(s.class_name)} {s.confidence:.0%}", width="stretch")
            else:
                st.caption(f"(unreadable) {common.literal(s.class_name)} {s.confidence:.0%}")
            # the choice lives in a set of its own: a checkbox on another preview page is not drawn, and
            # Streamlit forgets the state of a widget it does not draw
            st.checkbox("Leave out", value=s.sha256 in left_out, key=f"bulk_out_{s.sha256}", on_change=toggle,
                        args=(s.sha256,))


def bulk_accept(project: Project, sugg: dict[str, Suggestion]) -> None:
    """'Accept all suggestions >= X': what X meant in cross-validation, a preview of every image that would move
    (any can be left out), then one click."""
    if not sugg:
        return
    left_out: set[str] = st.session_state.setdefault(f"bulk_left_out::{project.slug}", set())
    # the preview only draws while open: the sorter reruns on every key press
    box = st.expander("Accept many suggestions at once", key="bulk_open", on_change="rerun")
    with box:
        threshold = st.slider("Accept suggestions with confidence at least", 0.5, 1.0, 0.9, 0.01,
                              key="bulk_threshold")
        chosen = sorted((s for s in sugg.values() if s.confidence >= threshold),
                        key=lambda s: (s.class_name, s.confidence))
        moving = [s for s in chosen if s.sha256 not in left_out]
        per_class: dict[str, int] = {}
        for s in moving:
            per_class[s.class_name] = per_class.get(s.class_name, 0) + 1
        skipped = len(chosen) - len(moving)
        st.caption(f"{len(chosen)} of {len(sugg)} unsorted image(s)"
                   + (f", {skipped} left out" if skipped else "") + ": "
                   + (", ".join(f"{common.literal(c)} {n}" for c, n in sorted(per_class.items())) or "none"))
        if chosen:
            _checked_caption(project, threshold, len(chosen))
            if box.open is not False:
                _preview(project, chosen, left_out)

        def accept() -> None:
            moved = common.guarded("Moving", accept_suggestions, project, moving, threshold)
            if moved is not None:
                common.flash("success", f"Moved {moved} image(s) into their suggested classes.")

        st.button(f"Move {len(moving)} image(s)", key="bulk_accept", disabled=not moving, on_click=accept)
