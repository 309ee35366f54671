"""The Data page with two sessions (Streamlit AppTest, real project on disk): stale actions are refused and named,
undo goes several steps back, Browse keeps its choice, shortcut keys stay, an upload to a vanished class says where
it went."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from streamlit.testing.v1 import AppTest  # noqa: E402

from engine.store.names import INBOX  # noqa: E402
from ui.common import literal  # noqa: E402


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def project(project):
    """conftest's empty project with two empty classes and five unsorted images."""
    for cls in ("cats", "dogs"):
        project.create_class(cls)
    project.add_files([(f"{i}.png", png(1200 + i)) for i in range(5)])
    return project


def data_page(project, section: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.query_params["project"] = project.slug
    at.run()
    at.switch_page("ui/pages/data.py").run()
    at.segmented_control(key="data_section").set_value(section).run()
    assert not at.exception, at.exception
    return at


def messages(at: AppTest) -> str:
    return " ".join(str(e.value) for e in [*at.warning, *at.success, *at.info, *at.toast])


def test_sorter_multi_step_undo_and_stable_keys(project):
    at = data_page(project, "Sort inbox")
    assert [b.proto.type for b in at.button if b.key.startswith("sort_to_")] == ["secondary", "secondary"]
    order = [r.sha256 for r in project.images(INBOX)]
    at.button(key="sort_to_0").click().run()
    at.button(key="sort_to_1").click().run()
    at.button(key="sort_trash").click().run()
    assert [project.get(s).class_name if project.get(s) else "trash" for s in order[:3]] == ["cats", "dogs", "trash"]
    for _ in range(3):  # three steps back, newest first
        at.button(key="sort_undo_btn").click().run()
    assert project.count(INBOX) == 5 and not project.trashed()
    assert not at.exception
    # a new class sorting before the others keeps their shortcut keys
    keys = {b.label: b.proto.shortcut for b in at.button if b.key.startswith("sort_to_")}
    project.create_class("ants")
    at.run()
    after = {b.label: b.proto.shortcut for b in at.button if b.key.startswith("sort_to_")}
    assert after["cats"] == keys["cats"] and after["dogs"] == keys["dogs"] and after["ants"] not in keys.values()


def test_a_stale_sort_and_undo_leave_the_other_persons_decision_alone(project):
    one = data_page(project, "Sort inbox")
    two = data_page(project, "Sort inbox")
    # the two sessions are shown different images
    first, second = project.images(INBOX)[:2]
    one.button(key="sort_to_0").click().run()
    assert project.get(first.sha256).class_name == "cats"
    two.button(key="sort_to_1").click().run()
    assert project.get(second.sha256).class_name == "dogs"
    # two re-sorts one's image in Browse; one's undo then leaves it alone and says why
    two.segmented_control(key="data_section").set_value("Browse").run()
    two.selectbox(key="browse_view").set_value("cats").run()
    two.checkbox(key=f"sel_cats-{first.sha256}").check().run()
    two.selectbox(key="browse_dest").set_value("dogs").run()
    two.button(key="browse_move").click().run()
    assert project.get(first.sha256).class_name == "dogs"
    one.button(key="sort_undo_btn").click().run()
    assert project.get(first.sha256).class_name == "dogs"
    assert "moved to 'dogs' by someone else since; not undone" in messages(one)
    # the Browse choice survives the count change it caused
    assert two.selectbox(key="browse_view").value == "cats" and not one.exception and not two.exception
    assert project.consistency_check().ok


def test_an_upload_to_a_class_that_was_renamed_says_where_it_went(project):
    at = data_page(project, "Add images")
    at.selectbox(key="upload_target").set_value("dogs").run()
    project.rename_class("dogs", "hounds")  # someone else, meanwhile
    at.file_uploader[0].set_value([("new.png", png(1300), "image/png")])
    at.run()
    at.button(key="upload_go").click().run()
    assert not at.exception
    assert "Class 'dogs' no longer exists" in messages(at) and "Unsorted inbox" in messages(at)
    assert project.classes() == ["cats", "hounds"] and project.count(INBOX) == 6


def test_each_project_keeps_its_own_undo_history(project, ws):
    other = ws.create_project("Other")
    other.create_class("birds")
    other.add_files([("o.png", png(1300))])
    at = data_page(project, "Sort inbox")
    at.button(key="sort_to_0").click().run()
    assert at.button(key="sort_undo_btn").label == "Undo (1)"
    at.query_params["project"] = other.slug  # the same person opens another project
    at.run()
    at.segmented_control(key="data_section").set_value("Sort inbox").run()
    assert not at.exception and not [b for b in at.button if b.key == "sort_undo_btn"]  # nothing to undo here
    at.query_params["project"] = project.slug  # and comes back: their step there can still be undone
    at.run()
    at.segmented_control(key="data_section").set_value("Sort inbox").run()
    at.button(key="sort_undo_btn").click().run()
    assert not at.exception and project.count(INBOX) == 5
    assert "someone else" not in messages(at)


def test_deleting_a_class_asks_first_says_where_the_images_went_and_is_undone_by_undo(project):
    dogs = [r.sha256 for r in project.images(INBOX)[:2]]
    project.act(dogs, "dogs")
    at = data_page(project, "Classes")
    next(s for s in at.selectbox if s.label == "Delete class").set_value("dogs").run()
    next(b for b in at.button if b.label.startswith("Delete class")).click().run()
    assert project.classes() == ["cats", "dogs"]  # nothing happens before the person confirms
    assert literal("Its 2 image(s) go to the Unsorted inbox, which holds 3 image(s) now") in messages(at)
    at.button(key="delete_class_no").click().run()
    assert project.classes() == ["cats", "dogs"] and not [b for b in at.button if b.key == "delete_class_yes"]
    at.button(key="delete_class_go").click().run()
    at.button(key="delete_class_yes").click().run()
    assert not at.exception and project.classes() == ["cats"] and project.count(INBOX) == 5
    assert literal("Its 2 image(s) are in the Unsorted inbox now") in messages(at)
    # the two are mixed with the inbox's three: Show picks them out
    at.button(key="deleted_show").click().run()
    assert not at.exception and at.segmented_control(key="data_section").value == "Browse"
    assert at.selectbox(key="browse_view").value == INBOX
    assert sorted(c.key.split("-", 1)[1] for c in at.checkbox if c.key.startswith("sel_")) == sorted(dogs)
    at.button(key="browse_focus_off").click().run()
    assert len([c for c in at.checkbox if c.key.startswith("sel_")]) == 5
    # undo takes the deletion back: the class and its images
    at.button(key="browse_undo").click().run()
    assert not at.exception and project.classes() == ["cats", "dogs"]
    assert sorted(r.sha256 for r in project.images("dogs")) == sorted(dogs) and project.count(INBOX) == 3
    assert literal("Class 'dogs' is back, with 2 image(s).") in messages(at)
    assert project.consistency_check().ok


def test_after_a_rename_the_form_shows_the_new_name_and_no_old_text(project):
    at = data_page(project, "Classes")
    next(s for s in at.selectbox if s.label == "Rename class").set_value("dogs")
    next(t for t in at.text_input if t.label == "New name").input("hounds")
    next(b for b in at.button if b.label == "Rename").click().run()
    assert not at.exception and project.classes() == ["cats", "hounds"]
    assert next(t for t in at.text_input if t.label == "New name").value == ""
    assert next(s for s in at.selectbox if s.label == "Rename class").value == "hounds"


def test_browse_keeps_its_view_across_sections_and_never_carries_a_destination_to_another_view(project):
    cats = [r.sha256 for r in project.images(INBOX)[:2]]
    project.act(cats, "cats")
    at = data_page(project, "Browse")
    assert at.selectbox(key="browse_view").value == INBOX
    at.selectbox(key="browse_dest").set_value("dogs").run()
    at.selectbox(key="browse_view").set_value("cats").run()
    assert at.selectbox(key="browse_dest").value == INBOX  # not the inbox's "dogs"
    assert "cats" not in at.selectbox(key="browse_dest").options
    # another section and back: still the cats
    at.segmented_control(key="data_section").set_value("Classes").run()
    at.segmented_control(key="data_section").set_value("Browse").run()
    assert at.selectbox(key="browse_view").value == "cats"
    at.button(key="browse_all").click().run()
    assert at.button(key="browse_all").label == "Select all on this page"
    assert all(at.checkbox(key=f"sel_cats-{s}").value for s in cats) and at.button(key="browse_move").label == "Move 2"
    at.button(key="browse_none").click().run()
    assert not any(at.checkbox(key=f"sel_cats-{s}").value for s in cats)
    at.button(key="browse_all").click().run()
    at.button(key="browse_move").click().run()
    assert not at.exception and project.count("cats") == 0 and project.count(INBOX) == 5
    assert literal("Moved 2 image(s) to Unsorted (inbox).") in messages(at)


def test_class_balance_names_every_class_with_its_count_under_a_readable_button(project):
    import json

    at = data_page(project, "Browse")

    def nodes(node):
        yield node
        for child in getattr(node, "children", {}).values():
            yield from nodes(child)

    columns = [n for n in nodes(at.main) if n.type == "column"]
    (holder,) = [c for c in columns if any(n.type == "popover" for n in nodes(c))]
    metrics = [c for c in columns if any(n.type == "metric" for n in nodes(c))]
    assert holder.weight >= 2 * max(c.weight for c in metrics)  # room for "Class balance", not "Class b…"
    (chart,) = [n for n in nodes(holder) if n.type == "vega_lite_chart"]
    bars, counts = json.loads(chart.proto.spec)["layer"]
    assert bars["encoding"]["y"]["axis"]["labelOverlap"] is False  # Streamlit's theme hides every other name
    assert counts["mark"]["type"] == "text" and counts["encoding"]["text"]["field"] == "images"
