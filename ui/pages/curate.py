"""Curate: what may be wrong with the labelled images (label issues, near-duplicates, outliers) and a map of the
project; every fix is one click, nothing moves without one, "Keep" is remembered (engine.curate.decisions) and so
is the last check (engine.curate.findings), so a reload shows it with its age."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from engine.curate.decisions import Decisions
from engine.curate.findings import load_findings, project_findings, save_findings, still_open
from engine.curate.map import UNSORTED_COLOUR, cached_map, project_class_colours
from engine.curate.model import embed_records, project_model
from engine.store.names import INBOX, TRASH
from engine.store.workspace import Project
from ui import common

project = common.require_project()
st.title(f"Curate · {common.literal(project.name)}")
common.show_flash()

SHOW = 24  # findings per section on one page
MAP_HOVER_THUMBS = 400  # above this many points the map's hover shows names only (thumbnails would weigh MBs)
counts = project.class_counts()
classes = list(counts)
labelled = sum(counts[c] for c in classes)
STATE = f"curate::{project.slug}"

if len([c for c in classes if counts[c]]) < 2 or labelled < 4:
    st.info("Curate looks for mistakes among labelled images: it needs at least two classes with images. "
            "Sort some images on the Data page first.")
    st.page_link(common.DATA, label="Go to Data", icon=":material/photo_library:")
    st.stop()


def _check() -> None:
    with common.user_errors("Checking the data"), st.spinner(f"Checking {labelled} labelled images ..."):
        found = project_findings(project).as_dict()
        st.session_state[STATE] = found
        save_findings(project.path, found)


def _age(then: float) -> str:
    seconds = max(0.0, time.time() - then)
    for limit, unit, size in ((90, None, 1), (90 * 60, "minute", 60), (36 * 3600, "hour", 3600)):
        if seconds < limit:
            return "just now" if unit is None else f"{round(seconds / size)} {unit}s ago"
    return f"{round(seconds / 86400)} days ago"


if STATE not in st.session_state:  # a reload, or a new visitor: the project's last check, as it was kept
    st.session_state[STATE] = load_findings(project.path)
found = st.session_state.get(STATE)
c1, c2 = st.columns([1, 3], vertical_alignment="center")
c1.button("Check the data" if found is None else "Check again", key="curate_check", type="primary",
          on_click=_check, icon=":material/search:")
if found is None:
    c2.caption("Finds images whose label the model disagrees with (from models that never saw them), copies and "
               "near-copies (also across classes), and images unlike their class or odd (blank, dark, blurry). "
               "Images are read once; later checks use the cache.")
    st.stop()
t = found["timings"]
now_in = {r.sha256: r.class_name for r in project.images()}
checked = set(found["shas"])
new_since = sum(1 for s, c in now_in.items() if c is not None and s not in checked)
checked_at = float(found.get("checked_at") or 0)
c2.caption((f"Last checked {_age(checked_at)} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(checked_at))}): "
            if checked_at else "")
           + f"{len(found['shas'])} labelled images checked in {t.get('total_s', 0):.1f} s"
           + (f" · {found['n_failed']} could not be read" if found.get("n_failed") else "")
           + (f" · {new_since} labelled image(s) added or sorted since are not in it: check again to include them"
              if new_since > 0 else ""))
# what a person has handled since the check (moved, trashed, kept) is not shown again
current = still_open(found, now_in, Decisions(project.path).kept())


# --- actions (button callbacks: they run before the page, so the list below is already up to date) -------------
def _move(shas: list[str], where: dict[str, str], to: str) -> None:
    res = common.guarded("Moving", project.act, shas, to, expected=where)
    if res is None:
        return
    if res.conflicts:
        common.flash("warning", f"{len(res.conflicts)} image(s) were changed by someone else meanwhile; left as "
                                "they are.")
    label = "the trash" if to == TRASH else f"'{to}'"
    common.flash("success", f"Moved {res.done} image(s) to {label}.")


def _keep(kind: str, key: str) -> None:
    if common.guarded("Saving", Decisions(project.path).keep, kind, key):
        common.flash("success", "Kept; it will not be shown again.")


def _thumb(col, sha: str, caption: str) -> None:
    data = common.thumbnail(project, sha)
    if data:
        col.image(data, caption=common.literal(caption), width="stretch")
    else:
        col.caption(f"(gone) {common.literal(caption)}")


def _name(sha: str) -> str:
    rec = project.get(sha)
    return rec.source_name[:30] if rec else sha[:12]


# --- sections ----------------------------------------------------------------------------------------------------
issues, dups, outliers = current["label_issues"], current["duplicates"], current["outliers"]
sections = {f"Label issues ({len(issues)})": "issues", f"Duplicates ({len(dups)})": "dups",
            f"Outliers ({len(outliers)})": "outliers", "Map": "map"}
choice = st.segmented_control("Findings", list(sections), key="curate_section", default=list(sections)[0],
                              label_visibility="collapsed")
section = sections.get(choice or "", "issues")


def _none(kind: str, in_check: list) -> None:
    # "left" only once some were handled: on a first look, nothing was
    st.success(f"No {kind} left." if in_check else f"No {kind} found.")


def _issues() -> None:
    st.caption("A suspect is an image whose label may be wrong: models trained without it (so its own label could "
               "not sway them) say it looks more like another class. The score says how strongly they disagree with "
               "the label: above 0.5 the other class is the likelier one, near 1 they are sure of it. Most "
               "suspicious first. Some suspects are right (an unusual photo of the class): keep those.")
    if not issues:
        _none("label issues", found["label_issues"])
    for r in issues[:SHOW]:
        sha, given, sug = r["sha256"], r["given"], r["suggested"]
        img, body = st.columns([1, 4], vertical_alignment="center")
        _thumb(img, sha, _name(sha))
        body.markdown(f"Labelled **{common.literal(given)}**, looks like **{common.literal(sug)}** · "
                      f"score {r['score']:.2f}")
        b1, b2, b3, b4, b5 = body.columns([2, 1, 1, 2, 1], vertical_alignment="bottom")
        b1.button(f"Move to {common.literal(sug)}", key=f"li_move_{sha}", type="primary", on_click=_move,
                  args=([sha], {sha: given}, sug), disabled=sug not in classes)
        b2.button("Keep", key=f"li_keep_{sha}", on_click=_keep, args=("label", sha),
                  help=f"The label '{common.literal(given)}' is right: do not show this image again.")
        b3.button("Trash", key=f"li_trash_{sha}", icon=":material/delete:", on_click=_move,
                  args=([sha], {sha: given}, TRASH))
        other = b4.selectbox("Other class", [c for c in classes if c not in (given, sug)], key=f"li_other_{sha}",
                             label_visibility="collapsed", placeholder="Other class", index=None)
        b5.button("Move", key=f"li_other_go_{sha}", disabled=other is None, on_click=_move,
                  args=([sha], {sha: given}, other))
    if len(issues) > SHOW:
        st.caption(f"{len(issues) - SHOW} more: fix or keep these, and they come up.")


def _dups() -> None:
    st.caption("Groups of copies and near-copies (same photo resized, recompressed, cropped or brightened). Copies "
               "make validation look better than it is; copies in two classes are label conflicts. Keep the best "
               "one of a group (the largest file is most likely the original) and the others go to the trash.")
    if not dups:
        _none("duplicates", found["duplicates"])
    for g in dups[:SHOW]:
        where = dict(zip(g["shas"], g["classes"], strict=True))
        label = "Label conflict: " + " / ".join(sorted(set(g["classes"]))) if g["cross_class"] else \
            f"{len(g['shas'])} copies in {g['classes'][0]}"
        st.markdown(f"**{common.literal(label)}**")
        sizes = {s: _size(s) for s in g["shas"]}
        largest = max(g["shas"], key=lambda s: sizes[s])
        cols = st.columns(6)
        for i, (sha, cls) in enumerate(where.items()):
            col = cols[i % 6]
            others = [s for s in g["shas"] if s != sha]
            _thumb(col, sha, f"{cls} · {_name(sha)}")
            col.caption(f"{sizes[sha] / 1024:,.0f} KB" + (" · largest" if sha == largest else ""))
            col.button(f"Keep this, trash {len(others)}", key=f"dup_keep_one_{g['key']}_{sha[:16]}",
                       type="primary" if sha == largest else "secondary", width="stretch", on_click=_move,
                       args=(others, {s: where[s] for s in others}, TRASH),
                       help=f"Keeps this image in {common.literal(cls)}; the other {len(others)} go to the trash.")
        b = st.columns([1, *([2] * min(3, len(set(g["classes"])))), 2], vertical_alignment="bottom")
        b[0].button("Keep all", key=f"dup_keep_{g['key']}", on_click=_keep, args=("duplicates", g["key"]))
        if g["cross_class"]:
            for i, cls in enumerate(sorted(set(g["classes"]))[:3]):
                b[1 + i].button(f"All are {common.literal(cls)}", key=f"dup_to_{g['key']}_{cls}", on_click=_move,
                                args=(g["shas"], where, cls))
        st.divider()


def _size(sha: str) -> int:
    path = project.path_of(sha)
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def _outliers() -> None:
    st.caption("Images unlike the rest of their class, and odd images (near-blank, very dark or bright, blurry, "
               "extreme shape).")
    if not outliers:
        _none("outliers", found["outliers"])
    shown = outliers[:SHOW]
    for start in range(0, len(shown), 4):
        cols = st.columns(4)
        for col, o in zip(cols, shown[start:start + 4], strict=False):
            sha = o["sha256"]
            _thumb(col, sha, f"{o['class']} · {o['reason']}")
            k1, k2 = col.columns(2)
            k1.button("Keep", key=f"out_keep_{sha}_{o['reason']}", on_click=_keep, args=("outlier", sha))
            k2.button("Trash", key=f"out_trash_{sha}_{o['reason']}", icon=":material/delete:", on_click=_move,
                      args=([sha], {sha: o["class"]}, TRASH))


@st.cache_data(max_entries=4000, show_spinner=False)
def _tiny_thumb(project_path: str, sha: str) -> str | None:
    """A 64 px JPEG data URL for the map's hover."""
    try:
        data = Project(Path(project_path)).thumbnail(sha)
    except (common.WorkspaceError, OSError):
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None
    scale = 64 / max(img.shape[:2])
    img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                     interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


def _map() -> None:
    import altair as alt

    method = st.segmented_control("Projection", ["t-SNE", "PCA"], key="map_method", default="t-SNE")
    records = project.images()
    model = project_model(project)
    recs, xy = [], None
    with common.user_errors("Drawing the map"), st.spinner("Placing the images (the first time takes a while) ..."):
        feats, ok = embed_records(records, model)
        recs = [records[i] for i in ok]
        xy = cached_map(project.path, [r.sha256 for r in recs], feats,
                        "pca" if method == "PCA" else "tsne", model_id=f"{model.handle}|{model.image_size}")
    if not recs or xy is None:
        return
    flags = {r["sha256"]: "label issue" for r in issues}
    flags.update({s: "duplicate" for g in dups for s in g["shas"]})
    flags.update({o["sha256"]: flags.get(o["sha256"], "outlier") for o in outliers})
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "sha": [r.sha256 for r in recs],
                       "class": [common.class_label(r.class_name) for r in recs],
                       "finding": [flags.get(r.sha256, "none") for r in recs],
                       "name": [r.source_name for r in recs]})
    # a class keeps its colour (kept in the project), one distinct hue each; the inbox is grey
    colours = project_class_colours(project.path, classes)
    domain = [c for c in classes if c in set(df["class"])]
    palette = [colours[c] for c in domain]
    if common.INBOX_LABEL in set(df["class"]):
        domain, palette = [*domain, common.INBOX_LABEL], [*palette, UNSORTED_COLOUR]
    tooltip = ["name", "class", "finding"]
    if len(df) <= MAP_HOVER_THUMBS:
        df["image"] = [_tiny_thumb(str(project.path), s) for s in df["sha"]]
        tooltip = ["image", *tooltip]  # vega-tooltip draws a field named "image" as a picture
    pick = alt.selection_point(name="pick", fields=["sha"], on="click")
    box = alt.selection_interval(name="box")
    chart = alt.Chart(df).mark_point(filled=True, size=45, opacity=0.8).encode(
        x=alt.X("x", axis=None), y=alt.Y("y", axis=None),
        color=alt.Color("class:N", scale=alt.Scale(domain=domain, range=palette),
                        legend=alt.Legend(orient="bottom")),
        shape=alt.Shape("finding:N", scale=alt.Scale(domain=["none", "label issue", "duplicate", "outlier"],
                                                     range=["circle", "triangle-up", "square", "diamond"])),
        tooltip=tooltip,
    ).add_params(pick, box).properties(height=520)
    st.caption("Each dot is an image, placed near images the backbone sees as similar; colour is the class, shape "
               "marks findings. Click a dot or drag a box to select images.")
    event = st.altair_chart(chart, key="curate_map", on_select="rerun", selection_mode=["pick", "box"],
                            width="stretch")
    chosen = _selected(event, df)
    if not chosen:
        return
    st.markdown(f"**{len(chosen)} selected**")
    where = {s: (project.get(s).class_name if project.get(s) else None) or INBOX for s in chosen}
    cols = st.columns(6)
    for i, sha in enumerate(chosen[:SHOW]):
        _thumb(cols[i % 6], sha, f"{common.class_label(where[sha])} · {_name(sha)}")
    a1, a2, a3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    dest = a1.selectbox("Move selected to", [INBOX, *classes], format_func=common.class_label, key="map_dest")
    a2.button(f"Move {len(chosen)}", key="map_move", type="primary", on_click=_move, args=(chosen, where, dest))
    a3.button(f"Trash {len(chosen)}", key="map_trash", icon=":material/delete:", on_click=_move,
              args=(chosen, where, TRASH))


def _selected(event, df: pd.DataFrame) -> list[str]:
    sel = (event or {}).get("selection", {}) if isinstance(event, dict) else getattr(event, "selection", {})
    shas = [p.get("sha") for p in (sel.get("pick") or []) if p.get("sha")]
    rng = sel.get("box") or {}
    if "x" in rng and "y" in rng:
        (x0, x1), (y0, y1) = sorted(rng["x"]), sorted(rng["y"])
        inside = df[(df.x >= x0) & (df.x <= x1) & (df.y >= y0) & (df.y <= y1)]
        shas += inside["sha"].tolist()
    return list(dict.fromkeys(shas))


{"issues": _issues, "dups": _dups, "outliers": _outliers, "map": _map}[section]()

with st.expander("Kept findings"):
    kept = Decisions(project.path).kept()
    st.caption(f"{len(kept)} finding(s) marked as fine are hidden.")
    if kept and st.button("Show them again", key="curate_forget"):
        Decisions(project.path).forget_all()
        _check()
        st.rerun()
