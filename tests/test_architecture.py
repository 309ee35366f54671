"""The folder tree is the architecture (docs/architecture.md): engine packages by stage, each importing only the
packages below it, no import circles, no Streamlit in the engine, and a reason beside every function-level import
of the project's own modules. Fast: reads the sources, runs nothing."""

from __future__ import annotations

import ast
import enum
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Bottom to top; a package may import the ones before it. ui/ (and app.py) sit above all of them.
LAYERS = ("core", "config", "data", "store", "features", "learn", "inference", "export", "curate", "runs", "cli")
MAX_LINES = 600
# engine/bundle/ holds the files a bundle ships, run on the user's machine without the engine: they import no
# engine module, so any layer may reuse them (the zip-member check, quantization, top-k), and the server is a
# standalone program allowed its length.
BUNDLE = "engine.bundle"
STANDALONE = {"engine.bundle.serve"}


def _modules() -> dict[str, Path]:
    mods = {}
    for root in ("engine", "ui"):
        for path in sorted((REPO / root).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported own module, line, inside a function) for every import statement of the project's modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                   for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name:
                found.append((target, node.lineno, id(node) in in_function))
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    if module.startswith(BUNDLE + "."):
        return -1  # below everything: it imports nothing of ours
    if parts[0] == "ui":
        return len(LAYERS)
    if len(parts) < 2 or parts[1] not in LAYERS:  # engine itself (__init__, __main__)
        return len(LAYERS) if parts[-1] == "__main__" else -1
    return LAYERS.index(parts[1])


def test_every_engine_module_sits_in_a_layer():
    loose = [m for m in MODULES if m.startswith("engine.") and m != "engine.__main__"
             and m.split(".")[1] not in LAYERS and not m.startswith(BUNDLE + ".")]
    assert not loose, f"modules outside the stage packages: {loose} (add them to a package, see docs/architecture.md)"


def test_lower_layers_never_import_higher_ones():
    upward = [f"{m} -> {t} (line {line})" for m, p in MODULES.items() for t, line, _ in _imports(m, p)
              if _layer(t) > _layer(m)]
    assert not upward, upward


def test_the_bundle_files_import_nothing_of_the_engine():
    for m, p in MODULES.items():
        if m.startswith(BUNDLE + "."):
            assert not [t for t, _, _ in _imports(m, p) if not t.startswith(BUNDLE + ".")], m
    assert not (REPO / "engine" / "bundle" / "__init__.py").exists()  # not a package: nothing extra ships


def test_no_import_circles():
    graph = {m: {t for t, _, _ in _imports(m, p)} for m, p in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_function_level_imports_of_own_modules_say_why():
    """They exist only to keep TensorFlow (or another heavy import) out of a process that does not need it; each
    says so in a comment on its line or the line above."""
    def explained(lines: list[str], line: int) -> bool:
        if "#" in lines[line - 1]:
            return True
        above = line - 2  # a comment may head a block of such imports
        while above >= 0 and lines[above].strip().startswith(("from ", "import ")) and "#" not in lines[above]:
            above -= 1
        return above >= 0 and ("#" in lines[above] and lines[above].strip().startswith(("#", "from ", "import ")))

    silent = []
    for m, p in MODULES.items():
        lines = p.read_text(encoding="utf-8").splitlines()
        for _, line, inside in _imports(m, p):
            if inside and not explained(lines, line):
                silent.append(f"{p.relative_to(REPO)}:{line}: {lines[line - 1].strip()}")
    assert not silent, silent


def test_the_engine_has_no_streamlit_and_no_print():
    for m, p in MODULES.items():
        if not m.startswith("engine.") or m.startswith(("engine.cli", "engine.bundle")):
            continue  # the command line and the shipped bundle scripts decide what the user sees
        text = p.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from) streamlit", text, re.M), m
        assert not re.search(r"^\s*print\(", text, re.M), f"{m} prints: use logging (the CLI prints)"


@pytest.mark.parametrize("module", [m for m in MODULES if m not in STANDALONE])
def test_modules_are_short_enough_to_read(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


def test_the_architecture_document_lists_the_layers_in_order():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    positions = [text.find(f"engine/{layer}/") for layer in LAYERS]
    assert -1 not in positions, [layer for layer, pos in zip(LAYERS, positions, strict=True) if pos < 0]
    # the picture draws the top first
    assert positions == sorted(positions, reverse=True), "docs/architecture.md draws the layers out of order"
    for layer in LAYERS:
        assert (REPO / "engine" / layer / "__init__.py").is_file(), layer


# Words with one owner each (docs/architecture.md): no other engine or ui module spells them as a string; they import
# the owner's name for it. engine/bundle/ ships alone and restates what it must (its tests compare it with the owner).
OWNED_WORDS = {
    **{name: "engine.config.runfiles" for name in ("config.json", "events.jsonl", "status.json", "metrics.json",
                                                   "head.npz", "snapshot.json", "model_card.json", "labels.txt",
                                                   "bundle.zip", "run.json", "log.txt")},
    **{f"model_{v}.tflite": "engine.config.variants" for v in ("float32", "dynamic", "int8")},
    "efficientnet-lite0": "engine.config.backbones",
    "succeeded": "engine.runs.status",
    "__inbox__": "engine.store.names",
    "__trash__": "engine.store.names",
    "project.db": "engine.store.index",
}


def _spelled_words(module: str, source: str) -> list[tuple[str, int]]:
    """(owned word, line) for every string constant of `source` that is an owned word of another module
    (docstrings are prose and do not count)."""
    tree = ast.parse(source)
    prose = {id(node.body[0].value) for node in ast.walk(tree)
             if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.body
             and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
            and OWNED_WORDS.get(node.value, module) != module]


def test_shared_words_are_spelled_only_by_their_owner():
    for word, owner in OWNED_WORDS.items():  # each owner really names the word (a constant, a table, an enum)
        values = [v for v in vars(importlib.import_module(owner)).values() if not callable(v) or isinstance(v, type)]
        spelled = [x for v in values for x in (v if isinstance(v, tuple | list | set | frozenset | enum.EnumMeta)
                                                else [v])]
        assert word in spelled, f"{owner} does not define {word!r}"
    copies = [f"{MODULES[m].relative_to(REPO)}:{line}: {word!r} belongs to {OWNED_WORDS[word]}"
              for m in MODULES if not m.startswith(BUNDLE + ".")
              for word, line in _spelled_words(m, MODULES[m].read_text(encoding="utf-8"))]
    assert not copies, copies


def test_the_owner_check_sees_a_second_spelling():
    """The check above can fail: a page writing its own "metrics.json" is a second owner of the name."""
    assert _spelled_words("ui.pages.review", 'path = run_dir / "metrics.json"\n') == [("metrics.json", 1)]
    assert _spelled_words("engine.config.runfiles", 'METRICS = "metrics.json"\n') == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The layer rule above can fail: a data-layer module importing the runs layer is an upward import."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from engine.runs import jobs\n")
    found = _imports("engine.data.bad", path)
    assert found == [("engine.runs.jobs", 2, True)]
    assert _layer("engine.runs.jobs") > _layer("engine.data.bad")
