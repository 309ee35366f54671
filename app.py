"""Retrain Studio: turn folders of photos into a deployable image classifier.

Run with `streamlit run app.py`. Pages live in ui/pages/ and are wired up here with st.navigation; they stay thin:
read state, call engine/, render. Projects are stored under $RETRAIN_STUDIO_WORKSPACE (default ./workspace).
(Not in pages/: Streamlit would also serve scripts there as stand-alone pages that bypass this file, e.g. when the
first request after a server start is a deep link.)
"""

from __future__ import annotations

import logging

import streamlit as st

from ui import common

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

# An emoji favicon is drawn in the browser (a data: URL); a :material/ one is fetched from fonts.gstatic.com, and
# this app makes no outside requests.
st.set_page_config(page_title="Retrain Studio", page_icon="🖼️", layout="wide")

slug = common.sync_project_state()
common.warm_up(slug)  # the one-time backbone work starts now, in the background, not after the first click

pages = [
    st.Page(common.HOME, title="Projects", icon=":material/folder_open:", default=True),
    st.Page(common.DATA, title="Data", icon=":material/photo_library:"),
    st.Page(common.TRAIN, title="Train", icon=":material/model_training:"),
    st.Page(common.REVIEW, title="Review", icon=":material/fact_check:"),
    st.Page("ui/pages/curate.py", title="Curate", icon=":material/cleaning_services:"),  # issue 10
    st.Page(common.EXPORT, title="Export & try", icon=":material/download:"),
]
page = st.navigation(pages)

with st.sidebar:
    st.markdown("### Retrain Studio")
    projects = common.workspace().list_projects()
    if projects:
        names = {p.slug: p.name for p in projects}
        slugs = list(names)
        choice = st.selectbox("Project", slugs, index=slugs.index(slug) if slug in slugs else None,
                              format_func=lambda s: names.get(s, s), placeholder="Choose a project",
                              key=f"project_picker_{slug}")
        if choice and choice != slug:
            common.set_project(choice)
            st.rerun()
        info = next((p for p in projects if p.slug == slug), None)
        if info is not None and info.problem:
            st.caption("This project cannot be read now: see the page.")
        elif info is not None:
            st.caption(f"{info.n_images} images · {info.n_classes} classes · {info.n_inbox} unsorted")
    else:
        st.caption("No projects yet.")

page.run()
