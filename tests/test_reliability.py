"""Issue 5: bad inputs through every entry point, faults (kill -9, restart, concurrent sorting, full or read-only
disk) and the security defaults.

The corpus (40 kinds, generated here: no binaries in git) is engine.data.demo's bad_file_corpus plus zip, folder, class
name and project-shape kinds. Each kind goes through every entry point that takes it:

    upload       Project.add_files with (name, bytes): what the Data page's upload calls
    zip          Project.add_zip
    folder       Project.import_image_dir
    app          the Data page through AppTest (one upload batch), its class form and the Train page
    browser      the Data page in Chromium (Playwright): the same batch picked in the real file uploader
    cli_train    `python -m engine train` (one run: every file kind in one folder beside good images)
    cli_predict  `python -m engine predict` (one call with every file)
    classify     POST /classify of the bundle's own serve.py (the model trained by cli_train)

A cell is ok (handled as expected; a refusal names the file and says why), CRASH (an exception, a traceback, a 5xx)
or WRONG (no crash, but not the expected outcome); n/a where an entry point cannot take that kind. "Files lost"
counts pre-existing files of the project or the source folder that vanished or changed; "written outside" counts
files that appeared outside the project and the run folder (zip slip) or changed in a sentinel folder that a
symlink points to. The table is printed and written to artifacts/reliability_table.txt.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the app's pages import ui/ and engine/ from the repo root
    sys.path.insert(0, str(REPO))

from fake_engine import fake_command  # noqa: E402
from servers import app_server, start_bundle_server  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from engine.config.training import TrainConfig  # noqa: E402
from engine.core import fileio  # noqa: E402
from engine.data.demo import bad_file_corpus, make_demo_dataset  # noqa: E402
from engine.runs import history, jobs  # noqa: E402
from engine.runs import status as run_status  # noqa: E402
from engine.store import errors as errors_module  # noqa: E402
from engine.store import ingest  # noqa: E402
from engine.store import moves as store_moves  # noqa: E402
from engine.store.errors import WorkspaceError  # noqa: E402
from engine.store.names import INBOX  # noqa: E402
from engine.store.workspace import Project, Workspace  # noqa: E402

TABLE_FILE = REPO / "artifacts" / "reliability_table.txt"
ENTRIES = ["upload", "zip", "folder", "app", "browser", "cli_train", "cli_predict", "classify"]
PY = sys.executable


# ================================================================================================================
# The corpus
# ================================================================================================================
def img(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small PNG with content unique to the seed."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, "PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# kind -> words, one of which the refusal must contain (lower case); kinds not listed are usable images
REFUSALS = {"zero_byte": ("empty",), "truncated_jpeg": ("truncated",), "truncated_png": ("truncated",),
            "random_bytes": ("not an image", "not a supported"), "text_as_png": ("not an image", "not a supported"),
            "svg": ("svg", "not an image"), "bomb_header": ("pixel",)}  # "heic" is a real iPhone-style photo


@dataclass(frozen=True)
class FileKind:
    kind: str
    name: str
    data: bytes
    usable: bool
    words: tuple[str, ...] = ()


def file_kinds() -> dict[str, FileKind]:
    corpus = bad_file_corpus()
    # renamed copies get their own pixels, so no usable file of the corpus is a duplicate of another
    corpus["unicode_name"] = (corpus["unicode_name"][0], img(1))
    corpus["spaces_name"] = ("  my holiday  photo (copy 2) .png", img(2))
    out = {k: FileKind(k, n, d, k not in REFUSALS, REFUSALS.get(k, ())) for k, (n, d) in corpus.items()}
    usable = [f.data for f in out.values() if f.usable]
    assert len(set(usable)) == len(usable)
    return out


def zip_bytes(members: dict[str, bytes | tuple[str, str]]) -> bytes:
    """Members as given (no name clean-up); a (\"symlink\", target) value becomes a symlink member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if isinstance(data, tuple):
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, data[1])
            else:
                zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


@dataclass
class ZipCase:
    """A zip and what must come of it: `added` images (bytes -> class, None = inbox), `refused` member names (with
    a word the reason must contain), `absent` images that must not be added, `ignored` names never mentioned."""
    kind: str
    members: dict[str, bytes | tuple[str, str]]
    added: dict[bytes, str | None] = field(default_factory=dict)
    refused: dict[str, tuple[str, ...]] = field(default_factory=dict)
    absent: list[bytes] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    note: bool = False  # the report must carry a note (a folder that cannot be a class)
    duplicates: int = 0

    @property
    def data(self) -> bytes:
        return zip_bytes(self.members)


def zip_cases(token: str) -> dict[str, ZipCase]:
    zeros = b"\0" * (20 << 20)  # 20 MiB that deflate to ~20 KiB: a 1000:1 member
    long_name = "c" * 300
    cases = [
        ZipCase("zip_slip_dotdot", {f"../../slip_{token}.png": img(101), "fine_dotdot.png": img(102)},
                added={img(102): None}, refused={f"../../slip_{token}.png": ("unsafe",)}, absent=[img(101)]),
        ZipCase("zip_slip_absolute", {f"/tmp/slip_{token}_abs.png": img(103), "fine_abs.png": img(104)},
                added={img(104): None}, refused={f"/tmp/slip_{token}_abs.png": ("unsafe",)}, absent=[img(103)]),
        ZipCase("zip_bomb", {"zeros.png": zeros, "fine_bomb.png": img(105)}, added={img(105): None},
                refused={"zeros.png": ("bomb", "ratio")}),
        ZipCase("nested_zip", {"inner.zip": zip_bytes({"deep.png": img(106)}), "fine_nested.png": img(107)},
                added={img(107): None}, refused={"inner.zip": ("zip",)}, absent=[img(106)]),
        ZipCase("zip_macos_junk", {"__MACOSX/._fine_mac.png": b"\0\x05\x16\x07 resource fork", ".DS_Store": b"Bud1" * 8,
                                   "photos/.DS_Store": b"Bud1" * 8, "photos/fine_mac.png": img(108)},
                added={img(108): None}, ignored=["__MACOSX", ".DS_Store"]),
        ZipCase("symlink_outside", {"link.png": ("symlink", "../../../../etc/passwd"), "fine_link.png": img(109)},
                added={img(109): None}, refused={"link.png": ("not an image", "not a supported")}),
        ZipCase("class_name_slash", {"a/b/slash.png": img(110), "q/q.png": img(111)},
                added={img(110): "a", img(111): "q"}),
        ZipCase("class_name_dotdot", {"../dotdot.png": img(112), "r/r.png": img(113), "s/s.png": img(114)},
                added={img(113): "r", img(114): "s"}, refused={"../dotdot.png": ("unsafe",)}, absent=[img(112)]),
        ZipCase("class_name_empty", {" /blank.png": img(115), "t/t.png": img(116)},
                added={img(115): None, img(116): "t"}, note=True),
        ZipCase("class_name_300", {f"{long_name}/long.png": img(117), "u/u.png": img(118)},
                added={img(117): None, img(118): "u"}, note=True),
        ZipCase("same_name_two_classes", {"c1/same.png": img(119), "c2/same.png": img(120)},
                added={img(119): "c1", img(120): "c2"}),
        ZipCase("same_bytes_twice", {"dup_a.png": img(121), "dup_b.png": img(121)}, added={img(121): None},
                duplicates=1),
        ZipCase("empty_project", {}),
    ]
    return {c.kind: c for c in cases}


STRUCTURE_KINDS = ["same_bytes_twice", "same_name_two_classes", "zip_slip_dotdot", "zip_slip_absolute", "zip_bomb",
                   "nested_zip", "zip_macos_junk", "symlink_outside", "class_name_slash", "class_name_dotdot",
                   "class_name_empty", "class_name_300", "class_one_image", "single_class", "empty_project"]
BAD_CLASS_NAMES = {"class_name_slash": "a/b", "class_name_dotdot": "..", "class_name_empty": "",
                   "class_name_300": "c" * 300}
LONG_FOLDER = "c" * 255  # the longest folder name Linux allows: the folder-shaped stand-in for 300 characters
FILE_KINDS = file_kinds()
ALL_KINDS = [*FILE_KINDS, *STRUCTURE_KINDS]


# ================================================================================================================
# Recording and the table
# ================================================================================================================
RESULTS: dict[str, dict[str, tuple[str, str]]] = {k: {} for k in ALL_KINDS}
LOST: dict[str, list[str]] = {}
OUTSIDE: dict[str, list[str]] = {}


def record(kind: str, entry: str, problems: list[str] | None = None, crash: BaseException | str | None = None,
           na: str | None = None) -> None:
    assert kind in RESULTS and entry in ENTRIES, (kind, entry)
    if crash is not None:
        text = f"{type(crash).__name__}: {crash}" if isinstance(crash, BaseException) else str(crash)
        RESULTS[kind][entry] = ("CRASH", text[:300])
    elif na is not None:
        RESULTS[kind][entry] = ("n/a", na)
    elif problems:
        RESULTS[kind][entry] = ("WRONG", "; ".join(problems)[:300])
    else:
        RESULTS[kind][entry] = ("ok", "")


def crash_all(kinds, entry: str, exc: BaseException) -> None:
    for k in kinds:
        record(k, entry, crash=exc)


def assert_entry_clean(entry: str) -> None:
    bad = {k: v[entry] for k, v in RESULTS.items() if entry in v and v[entry][0] in ("CRASH", "WRONG")}
    assert not bad, json.dumps(bad, indent=1, ensure_ascii=False)
    assert not LOST.get(entry), LOST[entry]
    assert not OUTSIDE.get(entry), OUTSIDE[entry]
    missing = [k for k in ALL_KINDS if entry not in RESULTS[k]]
    assert not missing, f"{entry}: kinds not recorded: {missing}"


def render_table() -> str:
    width = max(len(k) for k in ALL_KINDS)
    lines = ["Reliability corpus (issue 5): ok = handled cleanly, CRASH, WRONG = handled but not as expected",
             "", f"{'kind':{width}}  " + "  ".join(f"{e:11}" for e in ENTRIES)]
    for kind in ALL_KINDS:
        cells = [RESULTS[kind].get(e, ("-", ""))[0] for e in ENTRIES]
        lines.append(f"{kind:{width}}  " + "  ".join(f"{c:11}" for c in cells))
    cells = [v for row in RESULTS.values() for v in row.values()]
    crashes = sum(c[0] == "CRASH" for c in cells)
    wrong = sum(c[0] == "WRONG" for c in cells)
    run = sum(c[0] != "n/a" for c in cells)
    clean = sum(1 for row in RESULTS.values() if row and all(c[0] in ("ok", "n/a") for c in row.values()))
    lost = sum(len(v) for v in LOST.values())
    outside = sum(len(v) for v in OUTSIDE.values())
    lines += ["", f"kinds tried:       {len(ALL_KINDS)} (over {len(ENTRIES)} entry points: {run} cells run, "
                  f"{len(cells) - run} n/a, {len(ALL_KINDS) * len(ENTRIES) - len(cells)} not run)",
              f"handled cleanly:   {clean} of {len(ALL_KINDS)} kinds (every entry point that takes them)",
              f"crashes:           {crashes}", f"not as expected:   {wrong}", f"files lost:        {lost}",
              f"written outside:   {outside}"]
    details = [(k, e, c) for k, row in RESULTS.items() for e, c in row.items() if c[0] != "ok"]
    if details:
        lines += ["", "Details:"]
        lines += [f"  {k} / {e}: {c[0]} {c[1]}" for k, e, c in details]
    for title, table in (("Lost", LOST), ("Written outside", OUTSIDE)):
        for entry, items in table.items():
            lines += [f"{title} ({entry}): {p}" for p in items]
    return "\n".join(lines) + "\n"


# ================================================================================================================
# Snapshots: nothing lost, nothing written outside
# ================================================================================================================
def snapshot(root: Path) -> dict[str, str]:
    """relative path -> content hash of every file (links recorded as links, never followed); the project's SQLite
    files are left out (they change by design)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel.startswith("project.db"):
                continue
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = sha(p.read_bytes())
    return out


def lost_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k, v in before.items() if after.get(k) != v)


@dataclass
class Env:
    root: Path
    src: Path
    sentinel: Path
    token: str
    zips: dict[str, ZipCase]
    src_before: dict[str, str] = field(default_factory=dict)
    sentinel_before: dict[str, str] = field(default_factory=dict)

    def escaped(self) -> list[str]:
        """Files that got out: anything named with the zip-slip token, any change in the sentinel folder."""
        hits = [str(p) for p in self.root.rglob(f"*{self.token}*")]
        hits += [str(p) for base in (Path("/tmp"), REPO, REPO.parent, Path.cwd()) for p in base.glob(f"*{self.token}*")]
        changed = lost_files(self.sentinel_before, snapshot(self.sentinel))
        added = sorted(set(snapshot(self.sentinel)) - set(self.sentinel_before))
        return hits + [f"sentinel/{p} changed" for p in changed] + [f"sentinel/{p} appeared" for p in added]

    def check_source(self, entry: str) -> None:
        lost = lost_files(self.src_before, snapshot(self.src))
        new = sorted(set(snapshot(self.src)) - set(self.src_before))
        LOST.setdefault(entry, []).extend(f"source/{p}" for p in lost)
        OUTSIDE.setdefault(entry, []).extend(f"source/{p} (written into the user's folder)" for p in new)
        OUTSIDE[entry].extend(self.escaped())


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("reliability")
    token = uuid.uuid4().hex[:12]
    sentinel = root / "sentinel"
    sentinel.mkdir()
    (sentinel / "secret.png").write_bytes(img(900))
    (sentinel / "private.txt").write_text("not for import\n")
    src = make_demo_dataset(root / "src", per_class=8)
    (src / "text" / "same.png").write_bytes(img(200))
    (src / "shapes" / "same.png").write_bytes(img(201))
    (src / "text" / "copy_a.png").write_bytes(img(202))
    (src / "shapes" / "copy_b.png").write_bytes(img(202))
    odd = src / "odd"
    odd.mkdir()
    for fk in FILE_KINDS.values():
        (odd / fk.name).write_bytes(fk.data)
    (odd / "outside.png").symlink_to(sentinel / "secret.png")
    (odd / "linked_dir").symlink_to(sentinel, target_is_directory=True)
    (odd / "archive.zip").write_bytes(zip_bytes({"deep.png": img(203)}))
    (odd / ".DS_Store").write_bytes(b"Bud1" * 8)
    (src / "__MACOSX" / "odd").mkdir(parents=True)
    (src / "__MACOSX" / "odd" / "._cut.png").write_bytes(b"\0\x05\x16\x07 resource fork")
    (src / LONG_FOLDER).mkdir()
    (src / LONG_FOLDER / "long1.png").write_bytes(img(204))
    (src / LONG_FOLDER / "long2.png").write_bytes(img(205))
    e = Env(root, src, sentinel, token, zip_cases(token))
    e.src_before, e.sentinel_before = snapshot(src), snapshot(sentinel)
    return e


def seeded_project(env: Env, name: str) -> tuple[Project, dict[str, str]]:
    """A project with sorted images and an inbox image already in it, and a snapshot of its files."""
    project = Workspace(env.root / "ws").create_project(name)
    project.add_files([(f"old_a{i}.png", img(500 + i)) for i in range(3)], "a")
    project.add_files([(f"old_b{i}.png", img(510 + i)) for i in range(3)], "b")
    project.add_files([("old_inbox.png", img(520))])
    return project, snapshot(project.path)


def finish(entry: str, env: Env, project: Project | None, before: dict[str, str] | None) -> None:
    """Lost files of the project and the source folder, files written outside, a consistent index."""
    if project is not None:
        LOST.setdefault(entry, []).extend(f"{project.slug}/{p}" for p in lost_files(before, snapshot(project.path)))
        report = project.consistency_check()
        if not report.ok:
            LOST[entry].append(f"{project.slug}: index and folders disagree: {report}")
        strays = [str(p) for p in project.path.rglob("*") if p.is_file() and not p.resolve().is_relative_to(
            project.path.resolve())]
        OUTSIDE.setdefault(entry, []).extend(strays)
    env.check_source(entry)


# ================================================================================================================
# Judging a project after an add
# ================================================================================================================
def inside(project: Project, path: Path) -> bool:
    return path.resolve().is_relative_to(project.path.resolve())


def refusal(rejected: list[tuple[str, str]], name: str) -> str | None:
    for n, reason in rejected:
        if n == name or Path(n).name == name or n.endswith("/" + name):
            return reason
    return None


def judge_file(project: Project, fk: FileKind, rejected: list[tuple[str, str]], where: str | None) -> list[str]:
    problems = []
    rec = project.get(sha(fk.data)) if fk.data else None
    reason = refusal(rejected, fk.name)
    if fk.usable:
        if rec is None:
            problems.append(f"{fk.name!r} was not added ({reason})")
        else:
            if not (rec.path.is_file() and inside(project, rec.path) and rec.path.read_bytes() == fk.data):
                problems.append(f"{fk.name!r}: stored file missing, altered or outside the project")
            if rec.class_name != where:
                problems.append(f"{fk.name!r} landed in {rec.class_name!r}, not {where!r}")
    else:
        if rec is not None:
            problems.append(f"{fk.name!r} was added but should be refused")
        if reason is None:
            problems.append(f"{fk.name!r} is not named among the rejected files")
        elif not any(w in reason.lower() for w in fk.words):
            problems.append(f"{fk.name!r}: unclear reason {reason!r}")
    return problems


def judge_zip(project: Project, case: ZipCase, rejected: list[tuple[str, str]], duplicates: list[str],
              notes: list[str]) -> list[str]:
    problems = []
    for data, cls in case.added.items():
        rec = project.get(sha(data))
        if rec is None or not rec.path.is_file() or not inside(project, rec.path):
            problems.append(f"an image of {case.kind} was not added")
        elif rec.class_name != cls:
            problems.append(f"an image of {case.kind} landed in {rec.class_name!r}, not {cls!r}")
    for data in case.absent:
        if project.get(sha(data)) is not None:
            problems.append(f"an image that must not be taken from {case.kind} was added")
    for name, words in case.refused.items():
        reason = refusal(rejected, name)
        if reason is None:
            problems.append(f"{name!r} is not named among the rejected files")
        elif not any(w in reason.lower() for w in words):
            problems.append(f"{name!r}: unclear reason {reason!r}")
    for name in case.ignored:
        if any(name in n for n, _ in rejected) or name in project.classes():
            problems.append(f"{name} should be skipped quietly")
    if case.duplicates and len(duplicates) < case.duplicates:
        problems.append(f"duplicates not reported ({duplicates})")
    if case.note and not notes:
        problems.append("no note says why a folder did not become a class")
    bad_classes = [c for c in project.classes() if "/" in c or ".." in c or not c.strip() or len(c) > 64]
    if bad_classes:
        problems.append(f"unsafe class names created: {bad_classes}")
    return problems


# ================================================================================================================
# Entry point: upload (Project.add_files with bytes, as the Data page calls it)
# ================================================================================================================
def test_corpus_upload(env):
    entry = "upload"
    project, before = seeded_project(env, "upload")
    items = [(fk.name, fk.data) for fk in FILE_KINDS.values()] + [("copy_a.png", img(202)), ("copy_b.png", img(202))]
    try:
        rep = project.add_files(items)
    except Exception as exc:  # noqa: BLE001 - a crash is what the table counts
        crash_all([*FILE_KINDS, "same_bytes_twice"], entry, exc)
    else:
        for fk in FILE_KINDS.values():
            record(fk.kind, entry, judge_file(project, fk, rep.rejected, None))
        dup_ok = project.get(sha(img(202))) is not None and len(rep.duplicates) == 1
        record("same_bytes_twice", entry, [] if dup_ok else [f"duplicates: {rep.duplicates}"])
    try:
        r1 = project.add_files([("same.png", img(210))], "c1")
        r2 = project.add_files([("same.png", img(211))], "c2")
        a, b = project.get(sha(img(210))), project.get(sha(img(211)))
        problems = [] if (a and b and a.class_name == "c1" and b.class_name == "c2" and a.path != b.path
                          and a.path.is_file() and b.path.is_file()) else [f"{r1.summary()} / {r2.summary()}"]
        record("same_name_two_classes", entry, problems)
    except Exception as exc:  # noqa: BLE001
        record("same_name_two_classes", entry, crash=exc)
    try:
        rep = project.add_files([("photos.zip", zip_bytes({"x.png": img(212)}))])
        reason = refusal(rep.rejected, "photos.zip") or ""
        record("nested_zip", entry, [] if "zip" in reason.lower() else [f"zip bytes as an image: {rep.rejected}"])
    except Exception as exc:  # noqa: BLE001
        record("nested_zip", entry, crash=exc)
    folders_before = sorted(p.name for p in project.images_dir.iterdir())
    for kind, bad in BAD_CLASS_NAMES.items():
        problems = []
        for call in (lambda bad=bad: project.add_files([("x.png", img(213))], bad),
                     lambda bad=bad: project.create_class(bad)):
            try:
                call()
                problems.append(f"class name {bad[:20]!r} was accepted")
            except WorkspaceError as exc:
                if not str(exc).strip():
                    problems.append("empty message")
            except Exception as exc:  # noqa: BLE001
                record(kind, entry, crash=exc)
                break
        else:
            record(kind, entry, problems)
    if sorted(p.name for p in project.images_dir.iterdir()) != folders_before:
        OUTSIDE.setdefault(entry, []).append("a folder was created for a refused class name")
    try:
        empty = Workspace(env.root / "ws").create_project("upload-empty").add_files([])
        record("empty_project", entry, [] if empty.summary() == "0 added" else [empty.summary()])
    except Exception as exc:  # noqa: BLE001
        record("empty_project", entry, crash=exc)
    for kind, why in [("zip_slip_dotdot", "zips go through add_zip"), ("zip_slip_absolute", "zips go through add_zip"),
                      ("zip_bomb", "zips go through add_zip"), ("zip_macos_junk", "zips go through add_zip"),
                      ("symlink_outside", "an upload carries bytes, not links"),
                      ("class_one_image", "a training question: app and cli_train"),
                      ("single_class", "a training question: app and cli_train")]:
        record(kind, entry, na=why)
    finish(entry, env, project, before)
    assert_entry_clean(entry)


# ================================================================================================================
# Entry point: zip (Project.add_zip)
# ================================================================================================================
def test_corpus_zip(env):
    entry = "zip"
    project, before = seeded_project(env, "zip")
    files_zip = zip_bytes({fk.name: fk.data for fk in FILE_KINDS.values()})
    try:
        rep = project.add_zip(files_zip)
    except Exception as exc:  # noqa: BLE001
        crash_all(FILE_KINDS, entry, exc)
    else:
        for fk in FILE_KINDS.values():
            record(fk.kind, entry, judge_file(project, fk, rep.rejected, None))
    for kind, case in env.zips.items():
        try:
            rep = project.add_zip(case.data)
        except WorkspaceError as exc:
            record(kind, entry, [] if kind == "empty_project" else [f"refused the whole zip: {exc}"])
        except Exception as exc:  # noqa: BLE001
            record(kind, entry, crash=exc)
        else:
            record(kind, entry, judge_zip(project, case, rep.rejected, rep.duplicates, rep.notes))
    for kind in ("class_one_image", "single_class"):
        record(kind, entry, na="a training question: app and cli_train")
    finish(entry, env, project, before)
    assert_entry_clean(entry)


# ================================================================================================================
# Entry point: folder (Project.import_image_dir)
# ================================================================================================================
def test_corpus_folder(env):
    entry = "folder"
    project, before = seeded_project(env, "folder")
    try:
        rep = project.import_image_dir(env.src)
    except Exception as exc:  # noqa: BLE001
        crash_all([k for k in ALL_KINDS if k in FILE_KINDS or k in (
            "same_bytes_twice", "same_name_two_classes", "symlink_outside", "nested_zip", "zip_macos_junk",
            "class_name_300")], entry, exc)
    else:
        for fk in FILE_KINDS.values():
            record(fk.kind, entry, judge_file(project, fk, rep.rejected, "odd"))
        a, b = project.get(sha(img(200))), project.get(sha(img(201)))
        record("same_name_two_classes", entry,
               [] if a and b and (a.class_name, b.class_name) == ("text", "shapes") else ["same.png not in both"])
        copies = project.get(sha(img(202)))
        record("same_bytes_twice", entry, [] if copies and len({"copy_a.png", "copy_b.png"} & set(rep.duplicates)) == 1
               else [str(rep.duplicates)])
        secret_in = project.get(sha(img(900))) is not None
        link_reasons = [refusal(rep.rejected, n) or "" for n in ("outside.png", "linked_dir")]
        record("symlink_outside", entry,
               (["the file outside the folder was imported through the link"] if secret_in else [])
               + [f"link not reported: {r!r}" for r in link_reasons if "link" not in r.lower()])
        reason = refusal(rep.rejected, "archive.zip") or ""
        record("nested_zip", entry, [] if "zip" in reason.lower() and project.get(sha(img(203))) is None
               else [f"archive.zip: {reason!r}"])
        junk = [n for n, _ in rep.rejected if ".DS_Store" in n or "__MACOSX" in n or "._" in n]
        record("zip_macos_junk", entry, [f"junk reported as rejected: {junk}"] if junk or "__MACOSX" in
               project.classes() else [])
        long1 = project.get(sha(img(204)))
        record("class_name_300", entry,
               [] if long1 and long1.class_name is None and rep.notes and LONG_FOLDER not in project.classes()
               else [f"255-character folder: {long1}, notes {rep.notes}"])
    try:
        empty_dir = env.root / "empty_folder"
        empty_dir.mkdir(exist_ok=True)
        fresh = Workspace(env.root / "ws").create_project("folder-empty")
        rep = fresh.import_image_dir(empty_dir)
        record("empty_project", entry, [] if rep.summary() == "0 added" else [rep.summary()])
    except Exception as exc:  # noqa: BLE001
        record("empty_project", entry, crash=exc)
    for kind in ("zip_slip_dotdot", "zip_slip_absolute", "zip_bomb"):
        record(kind, entry, na="a zip inside a folder is refused as a file (nested_zip)")
    for kind in ("class_name_slash", "class_name_dotdot", "class_name_empty"):
        record(kind, entry, na="no folder can have that name")
    for kind in ("class_one_image", "single_class"):
        record(kind, entry, na="a training question: app and cli_train")
    finish(entry, env, project, before)
    assert_entry_clean(entry)


# ================================================================================================================
# Entry point: app (AppTest: the Data page's upload, its class form, the Train page)
# ================================================================================================================
def app(project: str | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    if project:
        at.query_params["project"] = project
    return at


def no_exception(at: AppTest) -> str | None:
    return "; ".join(str(e.value) for e in at.exception)[:300] or None


def texts(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def test_corpus_app(env, monkeypatch):
    entry = "app"
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(env.root / "ws"))
    project, before = seeded_project(env, "app")
    uploads = [(fk.name, fk.data) for fk in FILE_KINDS.values()]
    uploads += [("copy_a.png", img(202)), ("copy_b.png", img(202)), ("same.png", img(214)), ("same.png", img(215))]
    uploads += [(f"{kind}.zip", case.data) for kind, case in env.zips.items() if kind not in (
        "same_bytes_twice", "same_name_two_classes")]
    batch_kinds = [*FILE_KINDS, *[k for k in env.zips if k not in ("same_bytes_twice", "same_name_two_classes")],
                   "same_bytes_twice", "same_name_two_classes"]
    try:
        at = app(project.slug).run()
        at.switch_page("ui/pages/data.py").run()
        at.segmented_control(key="data_section").set_value("Add images").run()
        at.file_uploader[0].set_value([(n, d, "application/octet-stream") for n, d in uploads]).run()
        failure = no_exception(at)
        if failure is None:
            next(b for b in at.button if b.label.startswith("Add ")).click().run()
            failure = no_exception(at)
    except Exception as exc:  # noqa: BLE001
        crash_all(batch_kinds, entry, exc)
    else:
        if failure:
            crash_all(batch_kinds, entry, failure)
        else:
            report = at.session_state["last_report"]
            rejected = [tuple(r) for r in report["rejected"]]
            shown = at.dataframe[0].value if at.dataframe else None
            table_ok = shown is not None and len(shown) == len(rejected) and set(shown["file"]) == {
                n for n, _ in rejected}
            for fk in FILE_KINDS.values():
                record(fk.kind, entry, judge_file(project, fk, rejected, None)
                       + ([] if table_ok or fk.usable else ["the rejected table on the page is incomplete"]))
            for kind, case in env.zips.items():
                if kind in ("same_bytes_twice", "same_name_two_classes"):
                    continue
                record(kind, entry, judge_zip(project, case, rejected, report["duplicates"], report["notes"]))
            dup_ok = project.get(sha(img(202))) is not None and "copy_b.png" in report["duplicates"]
            record("same_bytes_twice", entry, [] if dup_ok else [f"duplicates: {report['duplicates']}"])
            both = [project.get(sha(img(n))) for n in (214, 215)]
            record("same_name_two_classes", entry, [] if all(both) and both[0].path != both[1].path
                   else ["two uploads called same.png did not both arrive"])
    # class names typed into the Data page's class form
    at = app(project.slug).run()
    at.switch_page("ui/pages/data.py").run()
    classes_before = project.classes()
    for kind, bad in BAD_CLASS_NAMES.items():
        try:
            at.segmented_control(key="data_section").set_value("Classes").run()
            next(t for t in at.text_input if t.label == "New class").input(bad)
            next(b for b in at.button if b.label == "Create class").click().run()
        except Exception as exc:  # noqa: BLE001
            record(kind, entry, crash=exc)
            continue
        failure = no_exception(at)
        errors = [e.value for e in at.error]
        if failure:
            record(kind, entry, crash=failure)
        else:
            record(kind, entry, ([] if errors else ["no error shown"])
                   + ([] if project.classes() == classes_before else [f"created: {project.classes()}"]))
    # project shapes that cannot train: the Train page says why, Start is disabled, the job is refused
    shapes = {"class_one_image": {"a": 3, "b": 3, "lonely": 1}, "single_class": {"only": 4}, "empty_project": {}}
    for kind, counts in shapes.items():
        p = Workspace(env.root / "ws").create_project(f"app-{kind}")
        for k, (cls, n) in enumerate(counts.items()):
            p.add_files([(f"{cls}{i}.png", img(600 + 10 * k + i)) for i in range(n)], cls)
        try:
            at = app(p.slug).run()
            at.switch_page("ui/pages/train.py").run()
        except Exception as exc:  # noqa: BLE001
            record(kind, entry, crash=exc)
            continue
        if no_exception(at):
            record(kind, entry, crash=no_exception(at))
            continue
        problems = []
        start = [b for b in at.button if b.label.startswith("Start training")]
        if not start or not start[0].disabled:
            problems.append("Start training is not disabled")
        if not at.warning:
            problems.append("no warning says why")
        if kind == "class_one_image" and "lonely" not in texts(at):
            problems.append("the class with one image is not named")
        try:
            jobs.start_training(p, command=[PY, "-c", "pass"])
            problems.append("start_training accepted it")
        except jobs.JobError:
            pass
        record(kind, entry, problems)
    finish(entry, env, project, before)
    assert_entry_clean(entry)


# ================================================================================================================
# Entry point: browser (the Data page's uploader in Chromium, driven by Playwright)
# ================================================================================================================
CHROMIUM = os.environ.get("RETRAIN_STUDIO_CHROMIUM", "/usr/bin/chromium")


def _browser_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -r requirements-browser.txt)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


@pytest.mark.browser
def test_corpus_browser(env, tmp_path):
    entry = "browser"
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    project, before = seeded_project(env, "browser")
    zips = tmp_path / "zips"
    zips.mkdir()
    for kind, case in env.zips.items():
        (zips / f"{kind}.zip").write_bytes(case.data)
    files = [env.src / "odd" / fk.name for fk in FILE_KINDS.values()] + sorted(zips.iterdir())
    added = sum(fk.usable for fk in FILE_KINDS.values()) + sum(len(c.added) for c in env.zips.values())
    rejected = sum(not fk.usable for fk in FILE_KINDS.values()) + sum(len(c.refused) for c in env.zips.values())
    summary = f"{added} added, 1 duplicate(s) skipped, {rejected} rejected"
    with app_server(env.root / "ws") as url:  # the shipped .streamlit/config.toml does the rest
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(60_000)
            try:
                page.goto(f"{url}/data?project={project.slug}")
                page.get_by_text("Add images", exact=True).first.click()
                page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(f) for f in files])
                page.get_by_role("button", name=f"Add {len(files)} file(s)").click()
                expect(page.get_by_text(summary)).to_be_visible(timeout=120_000)
                expect(page.get_by_text(f"{rejected} file(s) were rejected")).to_be_visible()
                shown = page.locator('[data-testid="stException"]').count()
                (REPO / "artifacts" / "screenshots").mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(REPO / "artifacts" / "screenshots" / "reliability-upload.png"),
                                full_page=True)
            except Exception as exc:  # noqa: BLE001 - counted in the table, then raised below
                crash_all([*FILE_KINDS, *env.zips], entry, exc)
                shown = None
            finally:
                browser.close()
    if shown is not None:
        exception = ["the page shows an exception"] if shown else []
        for fk in FILE_KINDS.values():  # the page's counts matched above; each file's fate is in the project
            rec = project.get(sha(fk.data)) if fk.data else None
            record(fk.kind, entry, exception + ([] if (rec is not None) == fk.usable else [f"{fk.name!r}: {rec}"]))
        for kind, case in env.zips.items():
            problems = [f"{kind}: an image was not added" for d in case.added if project.get(sha(d)) is None]
            problems += [f"{kind}: a refused image was added" for d in case.absent if project.get(sha(d))]
            record(kind, entry, exception + problems)
    for kind in ("class_one_image", "single_class"):
        record(kind, entry, na="the Train page is checked in the app column")
    finish(entry, env, project, before)
    assert_entry_clean(entry)


# ================================================================================================================
# Entry points: the command line (train once on the whole corpus folder, predict once on every file)
# ================================================================================================================
def engine_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != jobs.COMMAND_ENV}
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@dataclass
class CliRun:
    proc: subprocess.CompletedProcess
    run_dir: Path
    cwd: Path
    seconds: float


@pytest.fixture(scope="module")
def cli_run(env) -> CliRun:
    """`python -m engine train` on the corpus folder, float32 only; the working folder must stay empty."""
    cwd = env.root / "cwd"
    cwd.mkdir()
    run_dir = env.root / "cli_run"
    t0 = time.time()
    proc = subprocess.run([PY, "-m", "engine", "train", "--image_dir", str(env.src), "--run_dir", str(run_dir),
                           "--quantize", "float32"], cwd=cwd, env=engine_env(), capture_output=True, text=True,
                          timeout=600)
    return CliRun(proc, run_dir, cwd, time.time() - t0)


@pytest.mark.slow
def test_corpus_cli_train(env, cli_run, tmp_path):
    entry = "cli_train"
    proc, run_dir = cli_run.proc, cli_run.run_dir
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or "Traceback" in output:
        crash_all([*FILE_KINDS, "same_bytes_twice", "same_name_two_classes", "symlink_outside", "nested_zip",
                   "zip_macos_junk", "class_name_300"], entry, f"exit {proc.returncode}: {output[-1500:]}")
    else:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        card = json.loads((run_dir / "model_card.json").read_text())
        skipped = [(s["path"], s["reason"]) for s in metrics["skipped"]]
        labels = (run_dir / "labels.txt").read_text().splitlines()
        class_counts = card["class_counts"]
        n_odd = sum(fk.usable for fk in FILE_KINDS.values())
        for fk in FILE_KINDS.values():
            problems = []
            reason = refusal(skipped, fk.name)
            if fk.usable and reason is not None:
                problems.append(f"{fk.name!r} skipped: {reason}")
            if fk.usable and class_counts.get("odd") != n_odd:
                problems.append(f"class 'odd' trained on {class_counts.get('odd')} images, not {n_odd}")
            if not fk.usable:
                if reason is None:
                    problems.append(f"{fk.name!r} not listed as skipped")
                elif not any(w in reason.lower() for w in fk.words):
                    problems.append(f"unclear reason {reason!r}")
                elif fk.name not in output and fk.name not in reason:
                    problems.append("the console does not name the file")
            record(fk.kind, entry, problems)
        used = class_counts.get("text") == 10 and class_counts.get("shapes") == 10  # 8 drawn + same.png + a copy
        record("same_name_two_classes", entry, [] if used and refusal(skipped, "same.png") is None
               else [f"class counts {class_counts}"])
        record("same_bytes_twice", entry, [] if used else [f"class counts {class_counts}"])
        links = [refusal(skipped, n) or "" for n in ("outside.png", "linked_dir")]
        record("symlink_outside", entry, [f"link not skipped: {r!r}" for r in links if "link" not in r.lower()])
        reason = refusal(skipped, "archive.zip") or ""
        record("nested_zip", entry, [] if "not an image" in reason or "zip" in reason else [f"archive.zip {reason!r}"])
        junk = [p for p, _ in skipped if ".DS_Store" in p or "__MACOSX" in p]
        record("zip_macos_junk", entry, [f"junk reported: {junk}"] if junk else [])
        record("class_name_300", entry, [] if LONG_FOLDER in labels else [f"labels: {[lb[:20] for lb in labels]}"])
        if list(cli_run.cwd.iterdir()):
            OUTSIDE.setdefault(entry, []).extend(str(p) for p in cli_run.cwd.iterdir())
    # the project shapes that cannot train: three command lines at once (each fails at the scan, in seconds)
    shapes = {"single_class": ({"only": 3}, "only 1 class"), "class_one_image": ({"a": 3, "lonely": 1}, "lonely"),
              "empty_project": ({}, "no class subfolders")}
    procs = {}
    for kind, (counts, _) in shapes.items():
        folder = tmp_path / kind
        folder.mkdir()
        for k, (cls, n) in enumerate(counts.items()):
            (folder / cls).mkdir()
            for i in range(n):
                (folder / cls / f"{i}.png").write_bytes(img(700 + 10 * k + i))
        procs[kind] = subprocess.Popen([PY, "-m", "engine", "train", "--image_dir", str(folder), "--run_dir",
                                        str(tmp_path / f"run_{kind}")], cwd=tmp_path, env=engine_env(),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for kind, p in procs.items():
        out, err = p.communicate(timeout=300)
        want = shapes[kind][1]
        if "Traceback" in out + err or p.returncode not in (0, 1):
            record(kind, entry, crash=f"exit {p.returncode}: {err[-800:]}")
        else:
            status = json.loads((tmp_path / f"run_{kind}" / "status.json").read_text())
            record(kind, entry, ([] if p.returncode == 1 else ["exit code 0"])
                   + ([] if want in err and "error:" in err else [f"message {err[-300:]!r}"])
                   + ([] if status["state"] == "failed" and want in status["message"] else [f"status {status}"]))
    for kind in ("zip_slip_dotdot", "zip_slip_absolute", "zip_bomb", "class_name_slash", "class_name_dotdot",
                 "class_name_empty"):
        record(kind, entry, na="no zips or such folder names in an image_dir")
    finish(entry, env, None, None)
    assert_entry_clean(entry)


@pytest.mark.slow
def test_corpus_cli_predict(env, cli_run):
    entry = "cli_predict"
    if cli_run.proc.returncode != 0:
        pytest.fail(f"the training run failed: {cli_run.proc.stderr[-1500:]}")
    odd = env.src / "odd"
    paths = [str(odd / fk.name) for fk in FILE_KINDS.values()]
    extra = [env.src / "text" / "same.png", env.src / "shapes" / "same.png", env.src / "text" / "copy_a.png",
             env.src / "shapes" / "copy_b.png", odd / "archive.zip"]
    proc = subprocess.run([PY, "-m", "engine", "predict", "--json", "--model_file", str(cli_run.run_dir / "bundle.zip"),
                           "--image", *paths, *map(str, extra)], cwd=cli_run.cwd, env=engine_env(),
                          capture_output=True, text=True, timeout=300)
    if "Traceback" in proc.stderr or proc.returncode not in (0, 1):
        crash_all([*FILE_KINDS, "same_bytes_twice", "same_name_two_classes", "nested_zip"], entry,
                  f"exit {proc.returncode}: {proc.stderr[-1500:]}")
    else:
        results = {r["path"]: r for r in json.loads(proc.stdout)}

        def check(path: str, usable: bool, words: tuple[str, ...] = ()) -> list[str]:
            r = results.get(path)
            if r is None:
                return [f"no result for {Path(path).name!r}"]
            if usable:
                return [] if r["predictions"] and not r["error"] else [f"{Path(path).name!r}: {r['error']}"]
            err = (r["error"] or "").lower()
            if r["predictions"] or not err:
                return [f"{Path(path).name!r} was classified"]
            if Path(path).name.lower() not in err:
                return [f"the message does not name the file: {err!r}"]
            return [] if any(w in err for w in words) else [f"unclear reason {err!r}"]

        for fk, path in zip(FILE_KINDS.values(), paths, strict=True):
            record(fk.kind, entry, check(path, fk.usable, fk.words))
        record("same_name_two_classes", entry, check(str(extra[0]), True) + check(str(extra[1]), True))
        same = [results.get(str(p), {}).get("predictions") for p in extra[2:4]]
        record("same_bytes_twice", entry, check(str(extra[2]), True) + check(str(extra[3]), True)
               + ([] if same[0] == same[1] else ["identical files, different answers"]))
        record("nested_zip", entry, check(str(extra[4]), False, ("zip",)))
        if proc.returncode != 1:
            record("zero_byte", entry, ["exit code 0 although some files could not be classified"])
    for kind in ("zip_slip_dotdot", "zip_slip_absolute", "zip_bomb", "zip_macos_junk", "symlink_outside",
                 *BAD_CLASS_NAMES, "class_one_image", "single_class", "empty_project"):
        record(kind, entry, na="predict takes image paths, not zips, folders or classes")
    if list(cli_run.cwd.iterdir()):
        OUTSIDE.setdefault(entry, []).extend(str(p) for p in cli_run.cwd.iterdir())
    finish(entry, env, None, None)
    assert_entry_clean(entry)


# ================================================================================================================
# Entry point: POST /classify of the bundle's own server
# ================================================================================================================
def post(url: str, filename: str, data: bytes) -> tuple[int, dict | None, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw), ""
    except ValueError:
        return status, None, raw[:200].decode(errors="replace")


@pytest.fixture(scope="module")
def bundle_server(env, cli_run):
    """The corpus run's bundle, unpacked and served by its own serve.py: (server, folder)."""
    if cli_run.proc.returncode != 0:
        pytest.fail(f"the training run failed: {cli_run.proc.stderr[-1500:]}")
    folder = env.root / "served"
    zipfile.ZipFile(cli_run.run_dir / "bundle.zip").extractall(folder)
    srv = start_bundle_server(folder, env.root / "serve.log", timeout=90)
    yield srv, folder
    with contextlib.suppress(subprocess.TimeoutExpired):  # stop() has killed it then
        srv.stop(timeout=20)


@pytest.mark.slow
def test_corpus_classify(env, bundle_server):
    entry = "classify"
    srv, folder = bundle_server
    url, proc = srv.url, srv.proc
    folder_before = snapshot(folder)
    for fk in FILE_KINDS.values():
        try:
            status, body, raw = post(url + "/classify", fk.name, fk.data)
        except OSError as exc:
            record(fk.kind, entry, crash=exc)
            continue
        if body is None or status >= 500:
            record(fk.kind, entry, crash=f"HTTP {status} {raw or body}")
        elif fk.usable:
            preds = (body.get(fk.name) or {}).get("preds")
            record(fk.kind, entry, [] if status == 200 and preds else [f"HTTP {status} {str(body)[:200]}"])
        else:
            # an empty body is refused for the whole request ("the upload is empty"): the request held that one file
            message = str(body.get("error", ""))
            named = fk.name in message or (fk.kind == "zero_byte" and "empty" in message)
            record(fk.kind, entry, [] if 400 <= status < 500 and named else
                   [f"HTTP {status}: {message!r} does not name the file"])
    for kind, case in env.zips.items():
        try:
            status, body, raw = post(url + "/classify", f"{kind}.zip", case.data)
        except OSError as exc:
            record(kind, entry, crash=exc)
            continue
        if body is None or status >= 500:
            record(kind, entry, crash=f"HTTP {status} {raw or body}")
            continue
        problems = []
        per_file = body if status == 200 else (body.get("files") or {})
        for name in case.refused:
            got = per_file.get(name)
            message = got.get("error") if isinstance(got, dict) else got
            if not message:
                problems.append(f"{name!r} not refused by name")
        good = [n for n, d in case.members.items() if isinstance(d, bytes) and d in case.added]
        for name in good:
            if status != 200 or not (body.get(name) or {}).get("preds"):
                problems.append(f"{name!r} not classified (HTTP {status})")
        if kind == "empty_project" and not 400 <= status < 500:
            problems.append(f"an empty zip got HTTP {status}")
        record(kind, entry, problems)
    for kind in (*[k for k in BAD_CLASS_NAMES if k not in env.zips], "class_one_image", "single_class"):
        record(kind, entry, na="the server classifies; it has no classes to create")
    if proc.poll() is not None:
        crash_all(ALL_KINDS, entry, f"the server died (exit {proc.returncode})")
    LOST.setdefault(entry, []).extend(f"bundle/{p}" for p in lost_files(folder_before, snapshot(folder)))
    OUTSIDE.setdefault(entry, []).extend(f"bundle/{p}" for p in set(snapshot(folder)) - set(folder_before)
                                         if not p.startswith("__pycache__"))
    finish(entry, env, None, None)
    assert_entry_clean(entry)


# ================================================================================================================
# The table (after every corpus test above)
# ================================================================================================================
def test_reliability_table():
    text = render_table()
    print("\n" + text)
    TABLE_FILE.parent.mkdir(parents=True, exist_ok=True)
    TABLE_FILE.write_text(text, encoding="utf-8")
    cells = [c for row in RESULTS.values() for c in row.values()]
    if not cells:
        pytest.skip("no corpus test ran")
    assert len(ALL_KINDS) >= 30
    assert sum(c[0] == "CRASH" for c in cells) == 0, text
    assert sum(len(v) for v in LOST.values()) == 0, text
    assert sum(len(v) for v in OUTSIDE.values()) == 0, text
    assert sum(c[0] == "WRONG" for c in cells) == 0, text


# ================================================================================================================
# Faults: kill -9 of the training job, a restarted app server, two people sorting at once, drift, full disks
# ================================================================================================================
def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def kill_9(run_dir: Path) -> int:
    """SIGKILL the job's whole process group, as the OOM killer or a power cut would: no handler runs."""
    pid = json.loads((run_dir / "run.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    return pid


def labels_of(project: Project) -> dict[str, str | None]:
    return {r.sha256: r.class_name for r in project.images()}


def image_files(project: Project) -> dict[str, str]:
    return {k: v for k, v in snapshot(project.path).items() if k.startswith(("images/", "inbox/", "trash/"))}


@pytest.mark.slow
def test_kill_9_mid_epoch_and_mid_export_then_the_next_run_succeeds(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv(jobs.COMMAND_ENV, raising=False)
    project = Workspace().create_project("faults")
    project.import_image_dir(make_demo_dataset(tmp_path / "demo", per_class=8))
    project.add_files([("unsorted.png", img(1))])
    labels, files = labels_of(project), image_files(project)
    forever = TrainConfig(do_fine_tuning=True, fine_tune_epochs=100_000, quantize=["float32"])  # head: seconds
    # Exports are composed in well under a second from cached parts; a cache without the composed parts makes this
    # run's export trace its SavedModel template (~10 s), so "mid-export" is a moment that really exists.
    from engine.core.cache import cache_root

    cache = tmp_path / "cache"
    cache.mkdir()
    for part in ("backbones", "embedders"):
        if (cache_root() / part).is_dir():
            (cache / part).symlink_to(cache_root() / part)
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(cache))
    moments = {"mid-epoch": (forever, lambda e: e.get("type") == "epoch"),
               "mid-export": (TrainConfig(quantize=["float32"]),
                              lambda e: e.get("type") == "stage" and e.get("stage") == "export")}
    killed = {}
    for moment, (cfg, reached) in moments.items():
        run_dir = jobs.run_path(project, jobs.start_training(project, cfg))
        wait_for(lambda run_dir=run_dir, reached=reached: any(reached(e) for e in history.events(run_dir))
                 or jobs.job_status(run_dir).state != "running", 300, f"{moment} in {run_dir.name}")
        assert jobs.job_status(run_dir).state == "running", history.log_tail(run_dir)
        if moment == "mid-export":
            time.sleep(1.0)  # into the SavedModel save / TFLite conversion
        kill_9(run_dir)
        status = wait_for(lambda run_dir=run_dir: (s := jobs.job_status(run_dir)).state != "running" and s, 30,
                          "the killed job to be noticed")
        assert status.state == "failed" and status.message == run_status.DIED_MESSAGE, status
        # reading never writes: the launcher's watcher (or wait) records the death in status.json, once
        settled = jobs.wait(run_dir, timeout=5)
        assert (settled.state, settled.message) == ("failed", run_status.DIED_MESSAGE), settled
        assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"  # saved, not just reported
        assert not status.downloadable and not (run_dir / "bundle.zip").exists()
        killed[moment] = run_dir
    assert (killed["mid-export"] / "metrics.json").exists()  # it really died after training, while exporting
    rows = {r.run_id: r for r in history.list_runs(project)}
    assert all(rows[d.name].state == "failed" and not rows[d.name].downloadable for d in killed.values())
    assert jobs.active_run(project) is None

    # no page offers the half-exported run: Export has nothing to download, Train says why it failed
    at = app(project.slug).run()
    at.switch_page("ui/pages/export.py").run()
    assert not at.exception and not at.get("download_button"), [b.label for b in at.get("download_button")]
    assert "No finished training run yet" in texts(at)
    at.switch_page("ui/pages/train.py").run()
    assert not at.exception
    assert any(run_status.DIED_MESSAGE in e.value for e in at.error), texts(at)
    assert "running" not in " ".join(m.value for m in at.markdown if m.value.startswith("**Run"))

    # the project and every label are intact
    assert labels_of(project) == labels and image_files(project) == files
    assert project.consistency_check().ok

    run_dir = jobs.run_path(project, jobs.start_training(project, TrainConfig(quantize=["float32"])))
    status = jobs.wait(run_dir, timeout=400)
    assert status.state == "succeeded" and status.downloadable, history.log_tail(run_dir)
    with zipfile.ZipFile(run_dir / "bundle.zip") as zf:
        assert zf.testzip() is None and "labels.txt" in zf.namelist()
    assert labels_of(project) == labels and project.consistency_check().ok


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def test_streamlit_restart_reattaches_a_live_job_and_shows_a_dead_one_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv(jobs.COMMAND_ENV, json.dumps(fake_command(tmp_path)))
    monkeypatch.setenv("FAKE_MODE", "sleep")
    monkeypatch.setenv("FAKE_SLEEP", "120")
    project = Workspace().create_project("restart")
    for k, cls in enumerate(("cats", "dogs")):
        project.add_files([(f"{cls}{i}.png", img(800 + 10 * k + i)) for i in range(3)], cls)
    # the old server process starts the job and goes away: a restart loses every in-memory handle on it
    started = subprocess.run(
        [PY, "-c", "import sys; from engine.runs import jobs; from engine.store.workspace import Workspace; "
                   "print(jobs.start_training(Workspace().open_project(sys.argv[1])))", project.slug],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    run_dir = jobs.run_path(project, started.stdout.split()[-1])
    wait_for(lambda: (run_dir / "child.pid").exists(), 30, "the job to start")

    # the new server re-attaches: a fresh session shows the job running, with its Cancel button
    at = app(project.slug).run()
    at.switch_page("ui/pages/train.py").run()
    assert not at.exception
    assert any(m.value.startswith("**Run") and "running" in m.value for m in at.markdown), texts(at)
    assert any(b.label == "Cancel" for b in at.button)
    assert jobs.active_run(project) == run_dir.name

    # the job dies while nobody watches (kill -9): the next session shows it failed, not running forever
    pid = kill_9(run_dir)
    wait_for(lambda: _pid_gone(pid), 20, "the killed job to exit")
    at = app(project.slug).run()
    at.switch_page("ui/pages/train.py").run()
    assert not at.exception
    assert not any(m.value.startswith("**Run") and "running" in m.value for m in at.markdown), texts(at)
    assert any(run_status.DIED_MESSAGE in e.value for e in at.error), texts(at)
    assert not next(b for b in at.button if b.label.startswith("Start training")).disabled
    check = subprocess.run([PY, "-c", "import sys, json; from engine.runs import jobs; "
                                      "print(json.dumps(jobs.job_status(sys.argv[1]).as_dict()))", str(run_dir)],
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert json.loads(check.stdout)["state"] == "failed", check.stderr
    assert jobs.active_run(project) is None


MOVER = r"""
import random, sys
from engine.store.errors import WorkspaceError
from engine.store.workspace import Project
project, seed, rounds = Project(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
shas = [r.sha256 for r in project.images()] + [r.sha256 for r in project.trashed()]
targets = ["c1", "c2", "c3", None]
refused = 0
for _ in range(rounds):
    batch = rng.sample(shas, rng.randint(1, 4))
    op = rng.random()
    try:
        if op < 0.7:
            project.move(batch, rng.choice(targets))
        elif op < 0.85:
            project.delete_images(batch)
        else:
            project.restore_images(batch)
    except WorkspaceError:
        refused += 1  # e.g. the class was renamed meanwhile: a message for the user, not a crash
print("refused", refused)
"""


def test_two_processes_sorting_the_same_images_lose_and_duplicate_nothing(tmp_path):
    project = Workspace(tmp_path / "ws").create_project("movers")
    originals = {sha(img(300 + i)): img(300 + i) for i in range(16)}
    for k, cls in enumerate(("c1", "c2", "c3")):
        project.add_files([(f"{cls}_{i}.png", img(300 + 5 * k + i)) for i in range(5)], cls)
    project.add_files([("inbox.png", img(315))])
    script = tmp_path / "mover.py"
    script.write_text(MOVER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([PY, str(script), str(project.path), str(seed), "120"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for _ in range(6):  # meanwhile a third party renames a class back and forth
        try:
            project.rename_class("c3", "c3x")
            project.rename_class("c3x", "c3")
        except WorkspaceError:
            pass
        time.sleep(0.05)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "Traceback" not in err, err
    report = project.consistency_check()
    assert report.ok, report
    rows = {r.sha256: r for r in project.images()} | {r.sha256: r for r in project.trashed()}
    assert set(rows) == set(originals)  # every image exactly once in the index
    on_disk = [p for p in project.path.glob("*/**/*") if p.is_file() and p.parts[-2] != "thumbs"
               and project.thumbs_dir not in p.parents and project.runs_dir not in p.parents]
    assert sorted(sha(p.read_bytes()) for p in on_disk) == sorted(originals)  # ... and exactly once on disk
    for sha_, rec in rows.items():
        assert rec.path.read_bytes() == originals[sha_]


def test_two_app_sessions_sorting_the_same_inbox(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    project = Workspace().create_project("two tabs")
    project.create_class("cats")
    project.create_class("dogs")
    project.add_files([(f"{i}.png", img(400 + i)) for i in range(6)])
    sessions = []
    for _ in range(2):
        at = app(project.slug).run()
        at.switch_page("ui/pages/data.py").run()
        at.segmented_control(key="data_section").set_value("Sort inbox").run()
        sessions.append(at)
    one, two = sessions
    for _ in range(3):
        # both tabs show the same image; the second sorts it, then the first (stale) one sorts it elsewhere
        two.button(key="sort_to_1").click().run()
        one.button(key="sort_to_0").click().run()
        assert not one.exception and not two.exception
        assert project.consistency_check().ok
    counts = project.counts()
    assert sum(counts.values()) == 6 and project.consistency_check().ok
    assert sorted(sha(r.path.read_bytes()) for r in project.images()) == sorted(sha(img(400 + i)) for i in range(6))
    # both tabs now move the same selection to different places
    for at in (one, two):
        at.segmented_control(key="data_section").set_value("Browse").run()
        at.selectbox(key="browse_view").set_value("cats").run()
    cats = [r.sha256 for r in project.images("cats")]
    for at, dest in ((one, "dogs"), (two, INBOX)):
        for s in cats:
            at.checkbox(key=f"sel_cats-{s}").check()
        at.selectbox(key="browse_dest").set_value(dest).run()
    for at in (one, two):
        at.button(key="browse_move").click().run()
        assert not at.exception
    assert cats and project.count("cats") == 0  # the stale tab moved them on, from wherever they were
    assert project.consistency_check().ok and sum(project.counts().values()) == 6


def test_consistency_check_command_reports_and_repairs_drift(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    project = Workspace().create_project("drift")
    project.add_files([(f"a{i}.png", img(450 + i)) for i in range(3)], "a")
    project.add_files([(f"b{i}.png", img(460 + i)) for i in range(2)], "b")
    project.add_files([("loose.png", img(470))])
    gone, moved = project.images("a")[:2]
    gone.path.unlink()  # deleted by hand
    os.replace(moved.path, project.images_dir / "b" / moved.filename)  # moved by hand
    (project.images_dir / "b" / "dropped_in.png").write_bytes(img(471))  # copied in by hand
    (project.images_dir / "newclass").mkdir()
    (project.images_dir / "newclass" / "x.png").write_bytes(img(472))  # a class folder made by hand
    (project.inbox_dir / "notes.png").write_text("not a picture\n")
    files_before = {k: v for k, v in image_files(project).items()}

    def check(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "engine", "check", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})

    found = check(str(project.path))
    assert found.returncode == 1, found.stdout + found.stderr
    for name in (gone.filename, moved.filename, "images/b/dropped_in.png", "newclass", "inbox/notes.png", "--repair"):
        assert name in found.stdout, (name, found.stdout)
    assert image_files(project) == files_before  # checking changes nothing

    fixed = check(project.slug, "--repair")  # a project name works too
    assert fixed.returncode == 0 and "OK" in fixed.stdout, fixed.stdout + fixed.stderr
    assert check(str(project.path)).returncode == 0
    assert project.get(gone.sha256) is None
    assert project.get(moved.sha256).class_name == "b"
    assert project.get(sha(img(471))).class_name == "b" and project.get(sha(img(472))).class_name == "newclass"
    assert (project.trash_dir / "notes.png").read_text() == "not a picture\n"  # set aside, never deleted
    kept = set(image_files(project).values())
    assert all(h in kept for h in files_before.values())  # no file lost by the repair

    nowhere = check(str(tmp_path / "not-a-project"))
    assert nowhere.returncode == 2 and "not a project" in nowhere.stderr
    assert not (tmp_path / "not-a-project").exists()


class FaultyModule:
    """A stand-in for a module (os, tempfile) inside one engine module only: chosen functions fail, the rest work."""

    def __init__(self, real, **failing: Callable):
        self._real, self._failing = real, failing

    def __getattr__(self, name: str):
        return self._failing.get(name) or getattr(self._real, name)


def fails_with(code: int) -> Callable:
    def fail(*args, **kwargs):
        target = next((a for a in reversed(args) if isinstance(a, str | Path)), kwargs.get("dir"))
        raise OSError(code, os.strerror(code), str(target) if target else None)
    return fail


def test_disk_full_is_a_clear_message_and_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    project = Workspace().create_project("full disk")
    project.add_files([(f"a{i}.png", img(480 + i)) for i in range(3)], "a")
    project.create_class("b")
    before = image_files(project)
    with monkeypatch.context() as m:
        for module in (store_moves, fileio):  # moves rename files; the rest writes through engine.core.fileio
            m.setattr(module, "os", FaultyModule(os, replace=fails_with(errno.ENOSPC)))
        with pytest.raises(WorkspaceError, match="the disk is full") as exc:
            project.add_files([("new1.png", img(490)), ("new2.png", img(491))], "a")
        assert "new1.png" in str(exc.value) and "0 file(s) of this batch were added" in str(exc.value)
        with pytest.raises(WorkspaceError, match="the disk is full"):
            project.move([project.images("a")[0].sha256], "b")
        # the Data page: an error message, not a traceback
        at = app(project.slug).run()
        at.switch_page("ui/pages/data.py").run()
        at.segmented_control(key="data_section").set_value("Add images").run()
        at.file_uploader[0].set_value([("new3.png", img(492), "image/png")]).run()
        next(b for b in at.button if b.label.startswith("Add ")).click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("the disk is full" in e.value for e in at.error), texts(at)
    assert image_files(project) == before and not list(project.path.rglob(".tmp-*"))
    assert project.consistency_check().ok and project.count() == 3


def test_permission_errors_are_clear_messages(tmp_path, monkeypatch):
    """Tests run as root, where chmod does not stop writes: the errors are raised where the OS would raise them."""
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    project = Workspace().create_project("locked")
    project.add_files([(f"a{i}.png", img(493 + i)) for i in range(2)], "a")
    project.add_files([(f"b{i}.png", img(496 + i)) for i in range(2)], "b")
    before = image_files(project)
    with monkeypatch.context() as m:
        m.setattr(fileio, "tempfile", FaultyModule(tempfile, mkstemp=fails_with(errno.EACCES)))
        for module in (store_moves, fileio):  # moves rename files; the rest writes through engine.core.fileio
            m.setattr(module, "os", FaultyModule(os, replace=fails_with(errno.EROFS)))
        with pytest.raises(WorkspaceError, match="no permission to write"):
            project.add_files([("new.png", img(499))])
        with pytest.raises(WorkspaceError, match="no permission to write"):
            project.move([project.images("a")[0].sha256], "b")
        m.setattr(Path, "mkdir", fails_with(errno.EACCES))
        with pytest.raises(WorkspaceError, match="no permission to write"):
            Workspace(tmp_path / "elsewhere").create_project("new")
        with pytest.raises(jobs.JobError, match="no permission to write"):
            jobs.start_training(project, command=[PY, "-c", "pass"])
        at = app().run()  # the Projects page: create a project in a read-only workspace
        next(t for t in at.text_input if t.label == "New project name").input("Birds")
        next(b for b in at.button if b.label == "Create project").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("no permission to write" in e.value for e in at.error), texts(at)
    assert image_files(project) == before and project.consistency_check().ok
    assert errors_module.storage_error_message("Saving", sqlite3.OperationalError("database or disk is full"))
    assert "no permission" in errors_module.storage_error_message("Saving", sqlite3.OperationalError(
        "attempt to write a readonly database"))
    assert errors_module.storage_error_message("Saving", sqlite3.OperationalError("no such table: x")) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; test_permission_errors_are_clear_"
                                                "messages simulates them instead")
def test_read_only_workspace_for_real(tmp_path):
    project = Workspace(tmp_path / "ws").create_project("read only")
    project.add_files([("a.png", img(498))], "a")
    folders = [project.path, project.images_dir, project.images_dir / "a", project.inbox_dir]
    for f in folders:
        f.chmod(0o555)
    try:
        with pytest.raises(WorkspaceError, match="no permission to write"):
            project.add_files([("b.png", img(497))])
        with pytest.raises(WorkspaceError, match="no permission to write"):
            project.create_class("new")
    finally:
        for f in folders:
            f.chmod(0o755)
    assert project.consistency_check().ok and project.count() == 1


# ================================================================================================================
# Security defaults
# ================================================================================================================
def test_app_binds_localhost_and_limits_uploads():
    text = (REPO / ".streamlit" / "config.toml").read_text()
    server = text.split("[server]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^address\s*=\s*"127\.0\.0\.1"', server, re.M), server
    size = re.search(r"^maxUploadSize\s*=\s*(\d+)", server, re.M)
    assert size and 0 < int(size.group(1)) <= 2048, server
    assert ingest.MAX_FILE_BYTES <= 64 << 20 and ingest.MAX_ZIP_TOTAL_BYTES and ingest.MAX_ZIP_FILES


def test_servers_bind_localhost_and_limit_uploads_by_default():
    import argparse

    from engine.bundle import serve as bundle_serve
    from engine.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_serve_args(parser)
    args = parser.parse_args(["--bundle", "x.zip"])
    assert serve.forwarded_args(args) == []  # `python -m engine serve` leaves them to the bundle server's defaults
    args = bundle_serve.build_parser().parse_args([])
    assert args.host == "127.0.0.1" and 0 < args.max_upload_mb <= 256 and args.max_pixels <= 80_000_000


def test_no_pickle_of_user_data():
    """Only the restricted reader of the shipped backbone weights unpickles anything."""
    risky = re.compile(r"\bpickle\.(loads?|Unpickler)\b|allow_pickle\s*=\s*True|\b(joblib|dill|cloudpickle|shelve)\b"
                       r"|\bmarshal\.loads?\(|\btorch\.load\(")
    files = [*(REPO / "engine").rglob("*.py"), *(REPO / "ui").rglob("*.py"), REPO / "app.py"]
    hits = [f"{f.relative_to(REPO)}:{n}: {line.strip()}" for f in files if f.name != "torch_legacy.py"
            for n, line in enumerate(f.read_text().splitlines(), 1) if risky.search(line)]
    assert not hits, hits
    legacy = (REPO / "engine" / "features" / "torch_legacy.py").read_text()
    assert "def find_class" in legacy and "_RestrictedUnpickler" in legacy


def test_images_are_decoded_with_a_pixel_limit_before_any_pixel():
    import tracemalloc

    from engine.data.images import MAX_PIXELS, ImageError, load_image

    bomb = FILE_KINDS["bomb_header"].data  # claims 20000 x 20000 = 1.2 GB of RGB
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="pixel limit"):
            load_image(bomb, name="bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS


def test_file_names_are_never_trusted_for_paths(tmp_path):
    project = Workspace(tmp_path / "ws").create_project("names")
    names = ["../../evil.png", "/etc/evil.png", "..\\..\\evil.png", "C:\\Windows\\evil.png", "a\x00b.png", "con.png",
             ".hidden.png", "..png", "~/evil.png", "%2e%2e%2fevil.png", "x" * 500 + ".png", "image.png/", "  .  ",
             "evil.png\n.png", "ｅｖｉｌ／.png"]
    rep = project.add_files([(n, img(1000 + i)) for i, n in enumerate(names)])
    assert len(rep.added) == len(names), rep
    for rec in project.images():
        assert rec.path.parent == project.inbox_dir and rec.path.resolve().parent == project.inbox_dir.resolve()
        assert not rec.filename.startswith(".") and "/" not in rec.filename and "\\" not in rec.filename
        assert len(rec.filename) <= 100
    assert not [p for p in tmp_path.rglob("*evil*") if project.inbox_dir not in p.parents]
    assert not list(Path("/etc").glob("evil*"))


def test_upload_size_limit_names_the_file(tmp_path, monkeypatch):
    project = Workspace(tmp_path / "ws").create_project("limits")
    monkeypatch.setattr(ingest, "MAX_FILE_BYTES", 1000)
    big = img(1100, size=(200, 200))
    rep = project.add_files([("big.png", big), ("small.png", img(1101, size=(4, 4)))])
    assert [n for n, _ in rep.rejected] == ["big.png"] and "too large" in rep.rejected[0][1]
    assert len(rep.added) == 1
