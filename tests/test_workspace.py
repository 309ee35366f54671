"""Project storage: real SQLite, real files, a temporary workspace per test."""

from __future__ import annotations

import io
import multiprocessing
import threading
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.store.errors import WorkspaceError
from engine.store.ingest import MAX_ZIP_RATIO, sanitize_filename
from engine.store.names import INBOX, sanitize_class_name, slugify


def png(seed: int, size: int = 24, fmt: str = "PNG") -> bytes:
    """A small image with unique content (so unique sha256) per seed."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def assert_consistent(project) -> None:
    """Every row's file is where the row says; no stray files; no temp files."""
    report = project.consistency_check()
    assert report.ok, report
    for rec in project.images():
        assert rec.path.is_file(), rec
    assert not list(project.path.rglob(".tmp-*"))


# ----------------------------------------------------------------------------------------------------------------
# projects
# ----------------------------------------------------------------------------------------------------------------
def test_workspace_root_from_env(ws, tmp_path):
    assert ws.root == (tmp_path / "ws").resolve()
    assert ws.list_projects() == []


def test_create_list_rename_delete(ws):
    a = ws.create_project("My Flowers!")
    b = ws.create_project("My Flowers!")
    assert (a.slug, b.slug) == ("my-flowers", "my-flowers-2")
    assert [p.slug for p in ws.list_projects()] == ["my-flowers", "my-flowers-2"]
    for sub in ("images", "inbox", "trash", "thumbs", "runs"):
        assert (a.path / sub).is_dir()
    ws.rename_project(a.slug, "Roses")
    assert ws.open_project(a.slug).name == "Roses"
    ws.delete_project(b.slug)
    assert [p.slug for p in ws.list_projects()] == ["my-flowers"]
    with pytest.raises(WorkspaceError):
        ws.open_project(b.slug)
    with pytest.raises(WorkspaceError):
        ws.open_project("../etc")
    with pytest.raises(WorkspaceError):
        ws.create_project("   ")


def test_names_are_sanitised():
    assert slugify("../../etc/passwd") == "etc-passwd"
    assert slugify("???") == "project"
    assert sanitize_filename("../../evil.png") == "evil.png"
    assert sanitize_filename("C:\\Users\\x\\photo 1.JPG") == "photo_1.jpg"
    assert sanitize_filename(".bashrc") == "bashrc"
    assert sanitize_filename("con.png") == "_con.png"
    for bad in ("", "a/b", "..", ".hidden", "__inbox__", "x" * 65, "a:b"):
        with pytest.raises(WorkspaceError):
            sanitize_class_name(bad)
    assert sanitize_class_name("  roses ") == "roses"


def test_one_name_rule_for_projects_classes_and_files(ws, project):
    """Names that look alike are alike: one normal form and full case folding for every comparison; characters
    that cannot be seen are refused in names people type and dropped from uploaded file names; names Windows
    cannot hold are refused (classes) or avoided (project folders, file names)."""
    project.create_class("café")
    for same in ("CAFÉ", "Café", "cafe\u0301", "CAFE\u0301"):  # NFC and NFD spellings, any case
        with pytest.raises(WorkspaceError, match="Class 'café' already exists"):
            project.create_class(same)
    for hidden in ("ro\u200bses", "\ufeffroses", "abc\u202egpj.exe", "tab\u2066s"):
        with pytest.raises(WorkspaceError, match=r"cannot be seen \(U\+"):
            project.create_class(hidden)
        with pytest.raises(WorkspaceError, match="cannot be seen"):
            ws.create_project(hidden)
    for windows in ("con.txt", "CON", "lpt1.jpg", "roses."):
        with pytest.raises(WorkspaceError, match="Windows"):
            project.create_class(windows)
    assert [ws.create_project(n).slug for n in ("con", "Aux", "lpt1")] == ["con-project", "aux-project",
                                                                          "lpt1-project"]
    report = project.add_files([("café.png", png(801)), ("CAFÉ.png", png(802)), ("cafe\u0301.PNG", png(803)),
                                ("abc\u202egnp.png", png(804)), ("con.tar.png", png(805))], "café")
    names = sorted(r.filename for r in project.images("café"))
    assert len(report.added) == 5 and len({unicodedata.normalize("NFC", n).casefold() for n in names}) == 5, names
    assert not any(unicodedata.category(c) == "Cf" for n in names for c in n)
    assert "_con.tar.png" in names and "abc_gnp.png" in names


# ----------------------------------------------------------------------------------------------------------------
# adding files
# ----------------------------------------------------------------------------------------------------------------
def test_add_files_duplicates_rejects_and_names(project):
    good = [("a.png", png(1)), ("b.jpg", png(2, fmt="JPEG")), ("../../escape.png", png(3))]
    report = project.add_files(good + [("a-copy.png", png(1))])
    assert len(report.added) == 3
    assert report.duplicates == ["a-copy.png"]
    assert project.count(INBOX) == 3
    assert (project.inbox_dir / "escape.png").is_file()  # the name was used, the path was not
    assert not (project.path.parent / "escape.png").exists()

    again = project.add_files([("a.png", png(1)), ("notes.txt", b"hello"), ("empty.png", b""),
                               ("broken.jpg", png(4, fmt="JPEG")[:200])], class_name="cats")
    assert again.duplicates == ["a.png"]
    assert {name for name, _ in again.rejected} == {"notes.txt", "empty.png", "broken.jpg"}
    assert all(reason for _, reason in again.rejected)
    assert again.classes_created == ["cats"]
    assert project.counts() == {"cats": 0, INBOX: 3}

    # the same name with different content gets a unique file name
    clash = project.add_files([("a.png", png(5))], class_name="cats")
    rec = project.get(clash.added[0])
    assert rec.filename != "a.png" and rec.filename.startswith("a-") and rec.path.is_file()
    assert rec.source_name == "a.png"
    assert_consistent(project)


def test_add_from_paths_and_unknown_extension(project, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.png").write_bytes(png(10))
    (tmp_path / "src" / "noext").write_bytes(png(11))
    report = project.add_files([tmp_path / "src" / "x.png", tmp_path / "src" / "noext",
                                tmp_path / "src" / "missing.png"], "dogs")
    assert len(report.added) == 2
    assert report.rejected[0][0] == "missing.png"
    names = sorted(r.filename for r in project.images("dogs"))
    assert names == ["noext.png", "x.png"]  # a real extension, so any tool can read the folder
    assert (project.image_dir() / "dogs" / "x.png").read_bytes() == png(10)


def test_thumbnail_is_cached_jpeg(project):
    sha = project.add_files([("a.png", png(1, size=600))]).added[0]
    thumb = project.thumbnail(sha)
    assert thumb[:3] == b"\xff\xd8\xff"
    assert max(Image.open(io.BytesIO(thumb)).size) <= 256
    cached = project.thumbs_dir / f"{sha}.jpg"
    cached.unlink()
    assert project.thumbnail(sha)[:3] == b"\xff\xd8\xff"
    assert cached.exists()
    with pytest.raises(WorkspaceError):
        project.thumbnail("0" * 64)
    with pytest.raises(WorkspaceError):
        project.thumbnail("../../x")


# ----------------------------------------------------------------------------------------------------------------
# zips
# ----------------------------------------------------------------------------------------------------------------
def test_zip_with_class_folders_and_mac_junk(project):
    data = make_zip({
        "flowers/daisy/1.png": png(1), "flowers/daisy/2.png": png(2),
        "flowers/roses/3.png": png(3), "flowers/loose.png": png(4),
        "__MACOSX/flowers/daisy/._1.png": b"junk", "flowers/.DS_Store": b"junk", "flowers/daisy/._2.png": b"junk",
    })
    report = project.add_zip(data)
    assert len(report.added) == 4 and not report.rejected
    assert project.counts() == {"daisy": 2, "roses": 1, INBOX: 1}
    assert sorted(report.classes_created) == ["daisy", "roses"]
    assert_consistent(project)


def test_zip_single_folder_goes_to_inbox_unless_class_exists(project):
    assert len(project.add_zip(make_zip({"holiday/1.png": png(1)})).added) == 1
    assert project.counts() == {INBOX: 1}
    project.create_class("holiday")
    project.add_zip(make_zip({"holiday/2.png": png(2)}))
    assert project.counts() == {"holiday": 1, INBOX: 1}
    project.add_zip(make_zip({"x/3.png": png(3)}), class_name="holiday")
    assert project.counts()["holiday"] == 2


def test_zip_slip_is_ignored(project, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        names = ("../evil.png", "/abs/evil2.png", "a/../../evil3.png", "..\\evil4.png", "C:/evil5.png")
        for i, name in enumerate(names):
            info = zipfile.ZipInfo("placeholder")
            info.filename = name  # ZipInfo normalises some names; set the raw one
            zf.writestr(info, png(100 + i))
        zf.writestr("ok/fine.png", png(7))
    report = project.add_zip(buf.getvalue())
    assert len(report.added) == 1
    assert len(report.rejected) == 5
    assert all("unsafe" in reason for _, reason in report.rejected)
    outside = [p for p in tmp_path.rglob("evil*")]
    assert outside == []


def test_zip_bomb_limits(project):
    with pytest.raises(WorkspaceError, match="limit"):
        project.add_zip(make_zip({f"{i}.png": png(i) for i in range(6)}), max_files=5)
    with pytest.raises(WorkspaceError, match="unpack"):
        project.add_zip(make_zip({"a.png": png(1, size=64)}), max_total_bytes=1000)
    # a tiny compressed member that inflates enormously is skipped, not extracted
    bomb = make_zip({"bomb.png": b"\0" * (24 * 2**20), "ok.png": png(2)})
    assert len(bomb) * MAX_ZIP_RATIO < 24 * 2**20
    report = project.add_zip(bomb)
    assert len(report.added) == 1
    assert report.rejected[0][0] == "bomb.png" and "bomb" in report.rejected[0][1]
    assert project.count() == 1


def test_bad_zip_is_a_user_error(project):
    with pytest.raises(WorkspaceError, match="zip"):
        project.add_zip(b"this is not a zip")


def test_import_image_dir(project, tmp_path):
    src = tmp_path / "image_dir"
    for cls, seeds in {"cats": [1, 2], "dogs": [3]}.items():
        (src / cls).mkdir(parents=True)
        for s in seeds:
            (src / cls / f"{s}.png").write_bytes(png(s))
    (src / "loose.png").write_bytes(png(9))
    (src / ".hidden").mkdir()
    (src / ".hidden" / "x.png").write_bytes(png(10))
    report = project.import_image_dir(src)
    assert len(report.added) == 4
    assert project.counts() == {"cats": 2, "dogs": 1, INBOX: 1}
    assert (src / "cats" / "1.png").exists()  # the source is untouched
    with pytest.raises(WorkspaceError):
        project.import_image_dir(tmp_path / "nope")


def test_import_image_dir_reports_progress_up_to_the_total(project, tmp_path):
    for cls, n in (("a", 45), ("b", 3)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "src" / cls / f"{i}.png").write_bytes(png(1000 * len(cls) + i + (0 if cls == "a" else 500)))
    (tmp_path / "src" / "loose.png").write_bytes(png(9999))
    seen: list[tuple[int, int]] = []
    report = project.import_image_dir(tmp_path / "src", progress=lambda done, total: seen.append((done, total)))
    assert len(report.added) == 49
    assert seen and {t for _, t in seen} == {49} and seen[-1][0] == 49
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) >= 3  # steps, not one jump


def test_import_demo_dataset(project, tmp_path):
    demo = pytest.importorskip("engine.data.demo", reason="engine.data.demo is not written yet")
    root = demo.make_demo_dataset(tmp_path / "demo", per_class=4)
    report = project.import_image_dir(root)
    assert len(report.added) == 8 and not report.rejected
    assert sorted(project.classes()) == ["shapes", "text"]


# ----------------------------------------------------------------------------------------------------------------
# classes and moves
# ----------------------------------------------------------------------------------------------------------------
def test_class_lifecycle(project):
    shas = project.add_files([(f"{i}.png", png(i)) for i in range(6)]).added
    project.create_class("cat")
    with pytest.raises(WorkspaceError, match="already exists"):
        project.create_class("CAT")
    project.create_class("dog")
    assert project.move(shas[:3], "cat") == 3
    assert project.move(shas[3:5], "dog") == 2
    assert project.move(shas[:1], "cat") == 0  # already there
    with pytest.raises(WorkspaceError):
        project.move(shas[5:], "bird")
    assert project.counts() == {"cat": 3, "dog": 2, INBOX: 1}

    project.rename_class("cat", "kitten")
    assert (project.image_dir() / "kitten").is_dir() and not (project.image_dir() / "cat").exists()
    assert len(list((project.image_dir() / "kitten").iterdir())) == 3
    with pytest.raises(WorkspaceError, match="merge"):
        project.rename_class("kitten", "dog")
    project.rename_class("kitten", "Kitten")  # case only
    assert project.classes() == ["Kitten", "dog"]

    assert project.merge_classes(["dog"], "Kitten") == 2
    assert project.counts() == {"Kitten": 5, INBOX: 1}
    assert not (project.image_dir() / "dog").exists()

    assert project.delete_class("Kitten") == 5  # images go to the inbox, never deleted
    assert project.counts() == {INBOX: 6}
    assert len(list(project.inbox_dir.iterdir())) == 6
    assert_consistent(project)


def test_move_to_inbox_and_delete_to_trash(project):
    shas = project.add_files([(f"{i}.png", png(i)) for i in range(3)], class_name="a").added
    assert project.move(shas[:1], INBOX) == 1
    assert project.move(shas[1:2], None) == 1
    assert project.delete_images(shas[2:]) == 1
    assert project.count() == 2
    trashed = project.trashed()
    assert [t.sha256 for t in trashed] == shas[2:] and trashed[0].path.is_file()
    assert project.restore_images(shas[2:]) == 1
    assert project.get(shas[2]).class_name == "a"
    # deleting again, then adding the same bytes, brings the image back
    project.delete_images(shas[2:])
    assert project.add_files([("again.png", png(2))]).added == shas[2:]
    assert_consistent(project)


def test_images_paging(project):
    shas = project.add_files([(f"{i:02d}.png", png(i)) for i in range(10)]).added
    page1 = project.images(INBOX, offset=0, limit=4)
    page3 = project.images(INBOX, offset=8, limit=4)
    assert [r.sha256 for r in page1] == shas[:4]
    assert [r.sha256 for r in page3] == shas[8:]
    assert project.images("nope") == []
    assert len(project.images()) == 10


# ----------------------------------------------------------------------------------------------------------------
# concurrency: two sessions sorting the same project lose nothing
# ----------------------------------------------------------------------------------------------------------------
def _mover(path: str, shas: list[str], rounds: int, targets: list[str | None]) -> None:
    from engine.store.workspace import Project

    project = Project(path)
    for r in range(rounds):
        for i, sha in enumerate(shas):
            project.move([sha], targets[(i + r) % len(targets)])


def test_two_processes_moving_the_same_images(project):
    shas = project.add_files([(f"{i}.png", png(i)) for i in range(20)]).added
    project.create_class("a")
    project.create_class("b")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_mover, args=(str(project.path), shas, 3, t))
             for t in (["a", "b", None], ["b", None, "a"])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert project.count() == 20
    assert_consistent(project)
    files = [f for d in (project.inbox_dir, *project.image_dir().iterdir()) for f in d.iterdir()]
    assert len(files) == 20


def test_two_threads_labelling_different_images(project):
    shas = project.add_files([(f"{i}.png", png(i)) for i in range(30)]).added
    project.create_class("left")
    project.create_class("right")
    errors = []

    def label(part: list[str], cls: str) -> None:
        try:
            for sha in part:
                project.move([sha], cls)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=label, args=(shas[::2], "left")),
               threading.Thread(target=label, args=(shas[1::2], "right"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert project.counts() == {"left": 15, "right": 15, INBOX: 0}
    assert_consistent(project)


# ----------------------------------------------------------------------------------------------------------------
# consistency
# ----------------------------------------------------------------------------------------------------------------
def test_consistency_check_and_repair(project):
    shas = project.add_files([(f"{i}.png", png(i)) for i in range(3)], class_name="a").added
    project.create_class("b")
    a, b = project.image_dir() / "a", project.image_dir() / "b"
    rec0, rec1 = project.get(shas[0]), project.get(shas[1])
    rec0.path.rename(b / rec0.filename)  # moved by hand
    rec1.path.unlink()  # deleted by hand
    (project.image_dir() / "c").mkdir()
    (project.image_dir() / "c" / "new.png").write_bytes(png(50))  # a new class folder made by hand
    (a / "junk.png").write_bytes(b"not an image")
    report = project.consistency_check()
    assert not report.ok
    assert report.misplaced == [shas[0]] and report.missing_files == [shas[1]]
    assert report.unknown_folders == ["c"]
    assert sorted(report.untracked_files) == ["images/a/junk.png", "images/c/new.png"]

    project.consistency_check(repair=True)
    assert project.get(shas[0]).class_name == "b"
    assert project.get(shas[1]) is None
    assert project.counts() == {"a": 1, "b": 1, "c": 1, INBOX: 0}
    assert (project.trash_dir / "junk.png").exists()
    assert project.consistency_check().ok
    assert (Path(project.path) / "images" / "c" / "new.png").exists()


# ----------------------------------------------------------------------------------------------------------------
# two people on one project: stale actions, undo, leases, class keys (issue 14)
# ----------------------------------------------------------------------------------------------------------------
def sorted_inbox(project, n: int = 4, seed: int = 700):
    for cls in ("cats", "dogs"):
        project.create_class(cls)
    project.add_files([(f"{i}.png", png(seed + i)) for i in range(n)])
    return [r.sha256 for r in project.images(INBOX)]


def test_stale_actions_are_refused_and_say_where_the_image_went(project):
    from engine.store.names import TRASH
    from engine.store.records import StaleActionError

    a, b, c = sorted_inbox(project, 3)
    assert project.act([a], "dogs", expected={a: INBOX}, session="B").done == 1
    # A still sees it in the inbox and presses "cats": refused, named, nothing overwritten
    result = project.act([a, b], "cats", expected={a: INBOX, b: INBOX}, session="A")
    assert [ch.sha256 for ch in result.changes] == [b]
    (conflict,) = result.conflicts
    assert conflict.actual == "dogs" and conflict.by_other
    assert "already moved to 'dogs' by someone else" in result.conflict_message()
    assert project.get(a).class_name == "dogs" and project.get(b).class_name == "cats"
    # a stale Browse selection: both saw c in the inbox, B trashes it first; A's "Delete 1" ... and A's move
    project.act([c], TRASH, expected={c: INBOX}, session="B")
    with pytest.raises(StaleActionError, match="already moved to the trash by someone else"):
        project.move([c], "cats", expected={c: INBOX}, session="A")
    with pytest.raises(StaleActionError, match="already moved to 'dogs'"):
        project.delete_images([a], expected={a: "cats"}, session="A")  # a is in dogs, not where A saw it
    assert project.get(a).class_name == "dogs" and [r.sha256 for r in project.trashed()] == [c]
    # without an expectation the old behaviour stays: moved from wherever it is; trashed images are left alone
    assert project.move([a], "cats") == 1 and project.move([c], "cats") == 0
    assert_consistent(project)


def test_undo_reverts_only_your_own_unchanged_actions(project):
    from engine.store.names import TRASH

    a, b, c, d = sorted_inbox(project, 4)
    steps = [project.act([a], "cats", session="A").changes, project.act([b], TRASH, session="A").changes,
             project.act([c], "dogs", session="A").changes]
    # multi-step: newest first, each back where it was (b out of the trash)
    for step in reversed(steps):
        assert project.undo(step, session="A").done == 1
    assert project.counts() == {"cats": 0, "dogs": 0, INBOX: 4} and not project.trashed()
    # A sorts d, B re-sorts it: A's undo leaves B's decision alone
    mine = project.act([d], "cats", session="A").changes
    project.act([d], "dogs", expected={d: "cats"}, session="B")
    result = project.undo(mine, session="A")
    assert result.done == 0 and project.get(d).class_name == "dogs"
    assert "moved to 'dogs' by someone else since; not undone" in result.conflict_message()
    # ... also when B put it back where A had left it (the version tells)
    project.act([d], "cats", session="B")
    mine = project.act([d], "dogs", session="A").changes
    project.act([d], "cats", session="B")
    project.act([d], "dogs", session="B")
    result = project.undo(mine, session="A")
    assert result.done == 0 and "changed by someone else since" in result.conflict_message()
    # undo into a class that was deleted meanwhile: the image goes to the inbox
    mine = project.act([a], "dogs", session="A").changes
    project.create_class("birds")
    step = project.act([a], "birds", session="A").changes
    project.delete_class("birds")
    assert project.get(a).class_name is None
    assert project.undo(step, session="A").done == 0  # delete_class moved it: not A's last state any more
    assert project.undo(mine, session="A").done == 0
    # undo back into a class deleted meanwhile: the image goes to the inbox
    project.create_class("birds")
    project.act([b], "birds", session="A")
    step = project.act([b], "cats", session="A").changes
    project.delete_class("birds")
    assert project.undo(step, session="A").done == 1 and project.get(b).class_name is None
    assert_consistent(project)


def test_sorters_are_shown_different_images_and_leases_end(project):
    import time

    shas = sorted_inbox(project, 3)
    one = project.lease_next("A")
    two = project.lease_next("B")
    assert one.sha256 == shas[0] and two.sha256 == shas[1]
    assert project.lease_next("A").sha256 == shas[0]  # a rerun keeps showing the same image
    assert shas[0] not in [r.sha256 for r in project.inbox_queue("B")]
    assert project.leased_by_others("C") == 2
    # acting releases: A sorts its image and gets the next free one, never B's
    project.act([one.sha256], "cats", expected={one.sha256: INBOX}, session="A")
    assert project.lease_next("A").sha256 == shas[2]
    assert project.lease_next("A", skip=[shas[2]]) is None  # B holds the only other one
    # leaving the sorter releases; an idle sorter's lease times out
    project.release_leases("B")
    assert project.lease_next("C", ttl=0.05).sha256 == shas[1]
    time.sleep(0.1)
    assert project.lease_next("D").sha256 == shas[1]
    # undo gives the image back to the same sorter, first
    step = project.act([shas[2]], "dogs", session="A").changes
    project.undo(step, session="A")
    assert project.lease_next("A").sha256 == shas[2]


def _sorter(path: str, session: str, out: list) -> None:
    from engine.store.workspace import Project

    project = Project(path)
    while (rec := project.lease_next(session)) is not None:
        result = project.act([rec.sha256], "cats" if session == "A" else "dogs", expected={rec.sha256: INBOX},
                             session=session)
        out.append((session, result.done, len(result.conflicts)))


def test_two_sorters_at_once_never_sort_the_same_image(project):
    sorted_inbox(project, 24, seed=800)
    out: list = []
    threads = [threading.Thread(target=_sorter, args=(str(project.path), s, out)) for s in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(done for _, done, _ in out) == 24 and not any(conflicts for *_, conflicts in out)
    assert project.count(INBOX) == 0 and project.count("cats") + project.count("dogs") == 24
    assert_consistent(project)


def test_class_shortcut_keys_stay_when_classes_come_and_go(project):
    keys = list("123456789")
    for name in ("roses", "daisy", "tulips"):
        project.create_class(name)
    assert project.class_keys(keys) == {"daisy": "1", "roses": "2", "tulips": "3"}
    project.create_class("dandelion")  # sorts before roses and tulips: they keep their keys
    assert project.class_keys(keys) == {"daisy": "1", "dandelion": "4", "roses": "2", "tulips": "3"}
    project.rename_class("tulips", "tulip")
    project.delete_class("daisy")
    assert project.class_keys(keys) == {"dandelion": "4", "roses": "2", "tulip": "3"}
    project.create_class("sunflowers")
    assert project.class_keys(keys)["sunflowers"] == "1"  # the freed key
    assert project.class_keys(["1", "2"]) == {"roses": "2", "sunflowers": "1"}  # fewer keys than classes


def test_changed_since_a_run_counts_against_its_snapshot(project, tmp_path):
    from engine.data.dataset import scan_image_dir, write_snapshot

    for cls, seed in (("cats", 900), ("dogs", 910)):
        project.add_files([(f"{cls}{i}.png", png(seed + i)) for i in range(3)], cls)
    project.add_files([("new.png", png(950))])
    run = tmp_path / "run"
    write_snapshot(scan_image_dir(project.image_dir()), run)
    assert project.changed_since(run) == 0
    cat, dog = project.images("cats")[0].sha256, project.images("dogs")[0].sha256
    project.move([cat], "dogs")
    project.delete_images([dog])
    project.move([project.images(INBOX)[0].sha256], "cats")
    assert project.changed_since(run) == 3
    assert project.changed_since(tmp_path / "no-run") is None
