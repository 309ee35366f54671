"""Progress events have one owner (engine.core.events): every kind the code emits, and every field it sends, is in
EventKind, FIELDS and the module docstring; readers compare with known kinds; events.jsonl keeps its format."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from engine.core import events
from engine.core.events import FIELDS, EventKind, EventLog, Stage, emit, read_events, tee

REPO = Path(__file__).resolve().parents[1]
# The bundle's predict.py/serve.py run on the user's machine without the engine: they never emit progress events
SOURCES = sorted(p for folder in ("engine", "ui") for p in (REPO / folder).rglob("*.py")
                 if "bundle" not in p.relative_to(REPO).parts)


def _member(node: ast.expr, enum: type) -> str | None:
    """The value named by a literal "epoch" or by EventKind.EPOCH; None for anything else (a variable)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == enum.__name__:
        return enum[node.attr].value if node.attr in enum.__members__ else f"{enum.__name__}.{node.attr}?"
    return None


def _dict_keys(func: ast.AST) -> dict[str, set[str]]:
    """name -> keys, for `name = {"k": ...}` inside one function (the rows passed on as **name)."""
    out = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return out


def emitted() -> list[tuple[str, str | None, frozenset[str], str | None]]:
    """(where, kind, field names, stage) of every emit(...) call in engine/ and ui/."""
    calls = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]
        for scope in scopes:  # a call inside a function is seen more than once: the set below keeps one
            rows = _dict_keys(scope)
            for node in ast.walk(scope):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "emit"):
                    continue
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                kind = _member(node.args[1], EventKind) if len(node.args) > 1 else None
                fields = {k.arg for k in node.keywords if k.arg is not None}
                for splat in (k.value for k in node.keywords if k.arg is None):
                    assert isinstance(splat, ast.Name) and splat.id in rows, f"{where}: **{ast.unparse(splat)}"
                    fields |= rows[splat.id]
                stage = next((_member(k.value, Stage) for k in node.keywords if k.arg == "stage"), None)
                calls.append((where, kind, fields, stage))
    return list({(w, k, frozenset(f), s) for w, k, f, s in calls})


def test_the_scan_finds_the_emitters():
    kinds = {kind for _, kind, _, _ in emitted()}
    # the pipeline's own kinds must be seen, or the scan below checks nothing
    assert {"stage", "scan", "embed", "epoch", "export", "warning", "result", "error"} <= kinds


def test_every_emitted_kind_field_and_stage_is_declared():
    for where, kind, fields, stage in emitted():
        assert kind in set(EventKind), f"{where}: emits an undeclared kind {kind!r} (add it to EventKind)"
        extra = set(fields) - set(FIELDS[EventKind(kind)])
        assert not extra, f"{where}: {kind} event carries {sorted(extra)}, not in events.FIELDS"
        if kind == EventKind.STAGE:
            assert stage in set(Stage), f"{where}: undeclared stage {stage!r} (add it to Stage)"


def _doc_entry(kind: str) -> str:
    """The docstring's text for one kind: from its {"type": ...} up to the next kind's."""
    doc = events.__doc__
    start = doc.index(f'{{"type": "{kind}"')
    nxt = doc.find('{"type": ', start + 1)
    return doc[start:nxt if nxt > 0 else len(doc)]


@pytest.mark.parametrize("kind", list(EventKind))
def test_the_docstring_documents_every_kind_and_its_fields(kind):
    assert set(FIELDS) == set(EventKind)
    entry = _doc_entry(kind.value)
    for name in FIELDS[kind]:
        assert f'"{name}"' in entry, f"{kind}: field {name} is not in the docstring"


def test_the_docstring_lists_every_stage():
    entry = _doc_entry("stage")
    for stage in Stage:
        assert f'"{stage.value}"' in entry, stage


def test_readers_compare_with_known_kinds():
    """A page or job reading `event["type"] == "epcoh"` would silently never match."""
    seen = 0
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare) or not _reads_type(node.left):
                continue
            for comp in node.comparators:
                values = comp.elts if isinstance(comp, (ast.Tuple, ast.List, ast.Set)) else [comp]
                for value in values:
                    name = _member(value, EventKind)
                    if name is not None:
                        seen += 1
                        assert name in set(EventKind), f"{path.relative_to(REPO)}:{node.lineno}: {name!r}"
    assert seen >= 10  # the Train page alone reads ten kinds: a scan that finds none is broken


def _reads_type(node: ast.expr) -> bool:
    key = None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        key = node.args[0]
    elif isinstance(node, ast.Subscript):
        key = node.slice
    return isinstance(key, ast.Constant) and key.value == "type"


# ----------------------------------------------------------------------------------------------------------------
# Runtime: typos fail, the file format stays
# ----------------------------------------------------------------------------------------------------------------
def test_emit_refuses_an_unknown_kind_even_without_a_listener():
    with pytest.raises(ValueError, match="epcoh"):
        emit(None, "epcoh", epoch=1)


def test_events_on_disk_keep_their_plain_strings(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    seen: list[dict] = []
    progress = tee(seen.append, log)
    emit(progress, EventKind.STAGE, stage=Stage.EXPORT, message="Writing")
    emit(progress, "embed", done=1, total=2, cached=0, images_per_s=3.0)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert re.search(r'^\{"type": "stage", "time": [0-9.]+, "stage": "export", "message": "Writing"\}$', lines[0])
    assert json.loads(lines[1])["type"] == "embed"
    assert [type(e["type"]) for e in seen] == [str, str] and type(seen[0]["stage"]) is str
    back = read_events(tmp_path / "events.jsonl")
    assert back[0]["type"] == EventKind.STAGE and back[0]["stage"] == Stage.EXPORT  # readers compare either way


def test_progress_events_are_by_time_not_by_count(monkeypatch):
    from engine.core import events as events_module

    now = [100.0]
    monkeypatch.setattr(events_module.time, "monotonic", lambda: now[0])
    every = events_module.Every(0.25)
    due = []
    for step in range(1000):  # 1,000 items, 1 ms apart: one second of work
        now[0] += 0.001
        due.append(every.due(last=step == 999))
    assert due[0] and due[-1] and 4 <= sum(due) <= 6  # about one every quarter second, and the last one
