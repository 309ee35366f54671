"""Curate: what may be wrong with the labelled images (label issues, near-duplicates, outliers) and a map of the
project; every fix is one click, nothing moves without one, and "Keep" is remembered (engine.curate.decisions)."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from engine.curate.decisions import Decisions
from engine.curate.findings import project_findings
from engine.curate.map import cached_map
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
DONE = f"{STATE}::done"

if len([c for c in classes if counts[c]]) < 2 or labelled < 4:
    st.info("Curate looks for mistakes among labelled images: it needs at least two classes with images. "
            "Sort some images on the Data page first.")
    st.page_link(common.DATA, label="Go to Data", icon=":material/photo_library:")
    st.stop()


def _check() -> None:
    with common.user_errors("Checking the data"), st.spinner(f"Checking {labelled} labelled images ..."):
        st.session_state[STATE] = project_findings(project).as_dict()
        st.session_state[DONE] = []


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
c2.caption(f"{len(found['shas'])} labelled images checked in {t.get('total_s', 0):.1f} s"
           + (f" · {found['n_failed']} could not be read" if found.get("n_failed") else ""))
done: set[str] = set(st.session_state.get(DONE, []))


# --- actions (button callbacks: they run before the page, so the list below is already up to date) -------------
def _done(item: str, message: str) -> None:
    st.session_state.setdefault(DONE, []).append(item)
    common.flash("success", message)


def _move(item: str, shas: list[str], where: dict[str, str], to: str) -> None:
    res = common.guarded("Moving", project.act, shas, to, expected=where)
    if res is None:
        return
    if res.conflicts:
        common.flash("warning", f"{len(res.conflicts)} image(s) were changed by someone else meanwhile; left as "
                                "they are.")
    label = "the trash" if to == TRASH else f"'{to}'"
    _done(item, f"Moved {res.done} image(s) to {label}.")


def _keep(item: str, kind: str, key: str) -> None:
    if common.guarded("Saving", Decisions(project.path).keep, kind, key):
        _done(item, "Kept; it will not be shown again.")


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
issues = [r for r in found["label_issues"] if f"label:{r['sha256']}" not in done]
dups = [g for g in found["duplicates"] if f"duplicates:{g['key']}" not in done]
outliers = [o for o in found["outliers"] if f"outlier:{o['sha256']}" not in done]
sections = {f"Label issues ({len(issues)})": "issues", f"Duplicates ({len(dups)})": "dups",
            f"Outliers ({len(outliers)})": "outliers", "Map": "map"}
choice = st.segmented_control("Findings", list(sections), key="curate_section", default=list(sections)[0],
                              label_visibility="collapsed")
section = sections.get(choice or "", "issues")


def _issues() -> None:
    st.caption("Images whose label a model trained without them disagrees with (cleanlab on out-of-fold "
               "probabilities), most suspicious first.")
    if not issues:
        st.success("No label issues left.")
    for r in issues[:SHOW]:
        sha, given, sug = r["sha256"], r["given"], r["suggested"]
        item = f"label:{sha}"
        img, body = st.columns([1, 4], vertical_alignment="center")
        _thumb(img, sha, _name(sha))
        body.markdown(f"Labelled **{common.literal(given)}**, looks like **{common.literal(sug)}** · "
                      f"score {r['score']:.2f}")
        b1, b2, b3, b4, b5 = body.columns([2, 1, 1, 2, 1], vertical_alignment="bottom")
        b1.button(f"Move to {common.literal(sug)}", key=f"li_move_{sha}", type="primary", on_click=_move,
                  args=(item, [sha], {sha: given}, sug), disabled=sug not in classes)
        b2.button("Keep", key=f"li_keep_{sha}", on_click=_keep, args=(item, "label", sha),
                  help=f"The label '{common.literal(given)}' is right: do not show this image again.")
        b3.button("Trash", key=f"li_trash_{sha}", icon=":material/delete:", on_click=_move,
                  args=(item, [sha], {sha: given}, TRASH))
        other = b4.selectbox("Other class", [c for c in classes if c not in (given, sug)], key=f"li_other_{sha}",
                             label_visibility="collapsed", placeholder="Other class", index=None)
        b5.button("Move", key=f"li_other_go_{sha}", disabled=other is None, on_click=_move,
                  args=(item, [sha], {sha: given}, other))
    if len(issues) > SHOW:
        st.caption(f"{len(issues) - SHOW} more: fix or keep these, and they come up.")


def _dups() -> None:
    st.caption("Groups of copies and near-copies (same photo resized, recompressed, cropped or brightened). Copies "
               "make validation look better than it is; copies in two classes are label conflicts.")
    if not dups:
        st.success("No duplicates left.")
    for g in dups[:SHOW]:
        item = f"duplicates:{g['key']}"
        where = dict(zip(g["shas"], g["classes"], strict=True))
        label = "Label conflict: " + " / ".join(sorted(set(g["classes"]))) if g["cross_class"] else \
            f"{len(g['shas'])} copies in {g['classes'][0]}"
        label = common.literal(label)
        st.markdown(f"**{label}**")
        cols = st.columns(6)
        for i, (sha, cls) in enumerate(where.items()):
            _thumb(cols[i % 6], sha, f"{cls} · {_name(sha)}")
        best = max(g["shas"], key=lambda s: _size(s))  # keep the biggest file: most likely the original
        others = [s for s in g["shas"] if s != best]
        b = st.columns([2, 1, *([2] * min(3, len(set(g["classes"])))), 2], vertical_alignment="bottom")
        b[0].button(f"Keep one, trash {len(others)}", key=f"dup_merge_{g['key']}", type="primary", on_click=_move,
                    args=(item, others, {s: where[s] for s in others}, TRASH),
                    help="Keeps the largest file of the group.")
        b[1].button("Keep all", key=f"dup_keep_{g['key']}", on_click=_keep, args=(item, "duplicates", g["key"]))
        if g["cross_class"]:
            for i, cls in enumerate(sorted(set(g["classes"]))[:3]):
                b[2 + i].button(f"All are {common.literal(cls)}", key=f"dup_to_{g['key']}_{cls}", on_click=_move,
                                args=(item, g["shas"], where, cls))
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
        st.success("No outliers left.")
    shown = outliers[:SHOW]
    for start in range(0, len(shown), 4):
        cols = st.columns(4)
        for col, o in zip(cols, shown[start:start + 4], strict=False):
            sha = o["sha256"]
            item = f"outlier:{sha}"
            _thumb(col, sha, f"{o['class']} · {o['reason']}")
            k1, k2 = col.columns(2)
            k1.button("Keep", key=f"out_keep_{sha}_{o['reason']}", on_click=_keep, args=(item, "outlier", sha))
            k2.button("Trash", key=f"out_trash_{sha}_{o['reason']}", icon=":material/delete:", on_click=_move,
                      args=(item, [sha], {sha: o["class"]}, TRASH))


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
    tooltip = ["name", "class", "finding"]
    if len(df) <= MAP_HOVER_THUMBS:
        df["image"] = [_tiny_thumb(str(project.path), s) for s in df["sha"]]
        tooltip = ["image", *tooltip]  # vega-tooltip draws a field named "image" as a picture
    pick = alt.selection_point(name="pick", fields=["sha"], on="click")
    box = alt.selection_interval(name="box")
    chart = alt.Chart(df).mark_point(filled=True, size=45, opacity=0.8).encode(
        x=alt.X("x", axis=None), y=alt.Y("y", axis=None),
        color=alt.Color("class:N", legend=alt.Legend(orient="bottom")),
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
    a2.button(f"Move {len(chosen)}", key="map_move", type="primary", on_click=_move,
              args=("map", chosen, where, dest))
    a3.button(f"Trash {len(chosen)}", key="map_trash", icon=":material/delete:", on_click=_move,
              args=("map", chosen, where, TRASH))


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
