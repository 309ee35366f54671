"""The model-assisted inbox for the Sorter (ui/pages/data.py): a trained head suggests a class for each unsorted
image; the queue can be ordered by confidence; Enter accepts; "accept all >= X" moves in bulk after a preview.

Suggestions are kept in the session per run and per image, so a key press costs a lookup, not a recomputation;
after a retrain (a newer run) they are recomputed from cached embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from engine.curate.model import newest_run
from engine.curate.suggestions import Suggestion, accept_suggestions, inbox_suggestions, order_suggestions
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


def bulk_accept(project: Project, sugg: dict[str, Suggestion]) -> None:
    """'Accept all suggestions >= X' with a preview of what would move."""
    if not sugg:
        return
    with st.expander("Accept many suggestions at once"):
        threshold = st.slider("Accept suggestions with confidence at least", 0.5, 1.0, 0.9, 0.01,
                              key="bulk_threshold")
        chosen = [s for s in sugg.values() if s.confidence >= threshold]
        per_class: dict[str, int] = {}
        for s in chosen:
            per_class[s.class_name] = per_class.get(s.class_name, 0) + 1
        st.caption(f"{len(chosen)} of {len(sugg)} unsorted image(s): "
                   + (", ".join(f"{common.literal(c)} {n}" for c, n in sorted(per_class.items())) or "none"))
        preview = sorted(chosen, key=lambda s: s.confidence)[:12]  # the least sure ones: worth a look
        if preview:
            st.caption("Preview (least confident of these first):")
            cols = st.columns(6)
            for i, s in enumerate(preview):
                data = common.thumbnail(project, s.sha256)
                if data:
                    cols[i % 6].image(data, caption=f"{common.literal(s.class_name)} {s.confidence:.0%}",
                                      width="stretch")

        def accept() -> None:
            moved = common.guarded("Moving", accept_suggestions, project, chosen, threshold)
            if moved is not None:
                common.flash("success", f"Moved {moved} image(s) into their suggested classes.")

        st.button(f"Move {len(chosen)} image(s)", key="bulk_accept", disabled=not chosen, on_click=accept)
