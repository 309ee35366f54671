"""engine.config.variants: the one table of TFLite variants, and nobody else spelling its list (fast: no TensorFlow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config import runfiles, variants

REPO = Path(__file__).resolve().parents[1]


def test_the_table_names_files_and_preference_order():
    assert variants.NAMES == ("float32", "dynamic", "int8")
    assert variants.FILES == ("model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite")
    assert runfiles.MODEL_PREFERENCE == (*variants.FILES, runfiles.SAVED_MODEL)
    for v in variants.TABLE:
        assert v.label and v.input and v.output and v.runtimes, v.name
        assert v.input_dtype == v.recipe.io_dtype  # what the converter is told is what the card says goes in
    int8 = variants.get("int8")
    assert int8.recipe.calibrate and int8.recipe.integer_only and int8.input_range == (0.0, 255.0)
    assert not variants.get("float32").recipe.optimize and variants.get("dynamic").recipe.optimize


def test_unknown_names_are_refused_naming_them_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"int9.*float32, dynamic, int8"):
        variants.check(["float32", "int9"])
    with pytest.raises(ValueError, match="Unknown TFLite variant"):
        variants.get("float16")
    assert variants.check(["int8", "float32"]) == ["int8", "float32"]
    assert [v.name for v in variants.in_order(["int8", "float32", "int8"])] == ["float32", "int8"]


def test_the_card_entry_keeps_the_cards_words():
    assert set(variants.get("float32").card_entry()) == {"input", "output"}
    assert variants.get("int8").card_entry()["input"].startswith("uint8 RGB 0-255")
    assert set(variants.get("dynamic").card_entry()) == {"input", "output", "note"}


def test_no_other_module_spells_the_list():
    """The table is the owner: a module that lists the variants or builds their file names itself fails here. The
    bundle's standalone files cannot import the engine and are left out."""
    listed = re.compile(r"""["']float32["'],\s*["']dynamic["'],\s*["']int8["']""")
    named = re.compile(r"""f["']model_\{""")
    bundle = REPO / "engine" / "bundle"
    offenders = []
    for path in [*(REPO / "engine").rglob("*.py"), *(REPO / "ui").rglob("*.py"), *(REPO / "bench").glob("*.py")]:
        if path == REPO / "engine" / "config" / "variants.py" or bundle in path.parents:
            continue
        text = path.read_text(encoding="utf-8")
        if listed.search(text) or named.search(text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
