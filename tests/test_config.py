"""TrainConfig refuses bad options where it is built (names, choices, bounds), the same way for the CLI, the app's
form and config.json; one backbone table and default."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import backbones as table
from engine.config import runfiles, variants
from engine.config.training import ConfigError, TrainConfig, check_option, option_bounds

REPO = Path(__file__).resolve().parents[1]
NUMERIC = [f.name for f in dataclasses.fields(TrainConfig) if "min" in f.metadata or "max" in f.metadata]


# ----------------------------------------------------------------------------------------------------------------
# Defaults and the values the project itself passes stay valid
# ----------------------------------------------------------------------------------------------------------------
def test_every_default_is_valid_and_inside_its_bounds():
    cfg = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        check_option(f.name, getattr(cfg, f.name))
        lo, hi = option_bounds(f.name)
        value = getattr(cfg, f.name)
        if value is not None and (lo is not None or hi is not None):
            assert (lo is None or value >= lo) and (hi is None or value <= hi), f.name


@pytest.mark.parametrize("kw", [
    # what tests, pages and bench pass (grep "TrainConfig(" and the CLI flags in tests/)
    dict(validation_split=0.25), dict(validation_split=0.2), dict(seed=7), dict(l2_regularizer=0.01),
    dict(do_fine_tuning=True, fine_tune_epochs=1, fine_tune_learning_rate=1e-4),
    dict(do_fine_tuning=True, fine_tune_epochs=100_000, quantize=["float32"]), dict(train_epochs=3),
    dict(train_epochs=30), dict(width_shift_range=0.2, height_shift_range=0.1, shear_range=20.0),
    dict(image_size=32, batch_size=8), dict(assert_accuracy_at_least=0.9), dict(quantize=[]),
    dict(preset="accuracy"), dict(distribution_strategy="multi_worker"), dict(validation_split=0),
])
def test_values_in_use_are_accepted(kw):
    cfg = TrainConfig(**kw)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


# ----------------------------------------------------------------------------------------------------------------
# Bad values are refused, naming the option, the value and what is allowed
# ----------------------------------------------------------------------------------------------------------------
def test_an_unknown_variant_names_itself_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        TrainConfig(quantize=["float32", "int9"])
    message = str(err.value)
    assert message.startswith("--quantize: ") and "'int9'" in message
    assert all(v in message for v in variants.NAMES)
    assert isinstance(err.value, ValueError) and err.value.option == "quantize"


@pytest.mark.parametrize("name, value, words", [
    ("validation_split", 0.95, ["0.95", "0", "0.9"]),
    ("validation_split", -0.1, ["-0.1"]),
    ("cv_folds", 1, ["1", "2", "20"]),
    ("target_precision", 0.2, ["0.2", "0.5", "1"]),
    ("train_epochs", 0, ["0", "1"]),
    ("fine_tune_epochs", 0, ["0", "at least 1"]),
    ("image_size", 8, ["8", "32", "1024"]),
    ("learning_rate", -1.0, ["-1.0"]),
    ("learning_rate", float("nan"), ["nan"]),
    ("seed", 1.5, ["whole number"]),
    ("train_epochs", True, ["whole number"]),
    ("batch_size", "32", ["'32'"]),
    ("do_fine_tuning", "yes", ["true or false"]),
    ("preset", "fastest", ["'fastest'", "fast", "accuracy"]),
    ("optimizer", "rmsprop", ["'rmsprop'", "adam", "sgd"]),
    ("class_weights", "weird", ["balanced"]),
    ("quantize", "float32", ["list"]),
    ("image_dir", None, ["required"]),
])
def test_bad_values_are_refused_with_a_readable_reason(name, value, words):
    with pytest.raises(ConfigError, match=f"^--{name}: ") as err:
        TrainConfig(**{name: value})
    assert err.value.option == name
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_from_dict_and_load_refuse_the_same_way(tmp_path):
    with pytest.raises(ConfigError, match="Unknown training option"):
        TrainConfig.from_dict({"nonsense": 1})
    with pytest.raises(ConfigError, match="--cv_folds: "):
        TrainConfig.from_dict({"cv_folds": 0})
    path = tmp_path / runfiles.CONFIG
    TrainConfig(train_epochs=7).save(path)
    assert TrainConfig.load(path).train_epochs == 7
    path.write_text(json.dumps({**json.loads(path.read_text()), "quantize": ["int9"]}))
    with pytest.raises(ConfigError, match="int9"):
        TrainConfig.load(path)  # the app's worker reads config.json this way


def test_replace_is_checked_too():
    with pytest.raises(ConfigError, match="--momentum"):
        dataclasses.replace(TrainConfig(), momentum=2.0)


def test_bounds_live_in_the_field_metadata():
    assert option_bounds("validation_split") == (0.0, 0.9)
    assert option_bounds("fine_tune_epochs") == (1, None)
    assert option_bounds("image_dir") == (None, None)
    for name in NUMERIC:  # only numbers have bounds
        assert isinstance(getattr(TrainConfig(), name), (int, float)) or getattr(TrainConfig(), name) is None, name


# ----------------------------------------------------------------------------------------------------------------
# The command line refuses them before anything is read or written
# ----------------------------------------------------------------------------------------------------------------
def _engine(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RETRAIN_STUDIO_CACHE": str(tmp_path / "cache"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    return proc, time.perf_counter() - t0


def _refused(proc: subprocess.CompletedProcess, seconds: float, tmp_path: Path, before: set[str]) -> None:
    assert proc.returncode == 2, proc.stderr  # argparse's exit status, not the 1 of a failed run
    assert "int9" in proc.stderr and all(v in proc.stderr for v in variants.NAMES), proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name for p in tmp_path.iterdir()} == before  # no runs/<timestamp>, no cache
    assert not any((tmp_path / "images").iterdir())  # nothing written next to the images either
    assert seconds < 5, seconds  # an argparse error: interpreter start-up plus the flags (~0.4 s here)


def test_cli_refuses_an_unknown_variant_before_any_work(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    proc, seconds = _engine(tmp_path, "train", "--image_dir", str(images), "--quantize", "int9")
    _refused(proc, seconds, tmp_path, {"images"})
    assert "--quantize" in proc.stderr and "usage:" in proc.stderr


def test_cli_refuses_a_bad_value_from_a_config_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "c.json").write_text(json.dumps({"quantize": ["float32", "int9"]}))
    proc, seconds = _engine(tmp_path, "--image_dir", str(images), "--config", str(tmp_path / "c.json"))
    _refused(proc, seconds, tmp_path, {"images", "c.json"})


def test_cli_help_shows_the_bounds():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "engine", "train", "--help"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60).stdout
    assert "0 to 0.9" in " ".join(out.split())  # --validation_split, wrapped by argparse


# ----------------------------------------------------------------------------------------------------------------
# The app's form takes its bounds from the same metadata
# ----------------------------------------------------------------------------------------------------------------
def test_the_form_uses_the_config_bounds(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from engine.store.workspace import Workspace

    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    project = Workspace().create_project("Bounds")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    at.query_params["project"] = project.slug
    at.run()
    at.switch_page("ui/pages/train.py").run()
    at.checkbox(key="cfg_do_fine_tuning").check().run()  # the fine-tuning options show when it is on
    assert not at.exception, [e.value for e in at.exception]
    shown = {n.key.removeprefix("cfg_"): n for n in at.number_input if n.key and n.key.startswith("cfg_")}
    assert {"validation_split", "cv_folds", "target_precision", "fine_tune_epochs"} <= set(shown)
    for name, widget in shown.items():
        assert (widget.min, widget.max) == option_bounds(name), name


def test_help_texts_are_for_a_person():
    """The form shows these texts: no other option's command-line flag in them (the form adds the option's own
    at the end), and every option has one."""
    for f in dataclasses.fields(TrainConfig):
        text = f.metadata.get("help", "")
        assert text and "--" not in text, (f.name, text)


# ----------------------------------------------------------------------------------------------------------------
# One backbone table, one default
# ----------------------------------------------------------------------------------------------------------------
def test_one_default_backbone_and_presets_name_table_entries():
    assert table.DEFAULT_BACKBONE in table.BACKBONES
    assert TrainConfig().tfhub_module == table.DEFAULT_BACKBONE
    assert table.PRESETS["fast"]["tfhub_module"] == table.DEFAULT_BACKBONE
    assert all(p["tfhub_module"] in table.BACKBONES for p in table.PRESETS.values())
    assert TrainConfig(preset="accuracy").tfhub_module == table.PRESETS["accuracy"]["tfhub_module"]


def test_the_port_reads_the_config_table():
    from engine.features import backbones

    assert backbones.BACKBONES is table.BACKBONES and backbones.DEFAULT_BACKBONE is table.DEFAULT_BACKBONE
    assert backbones.BackboneError is table.BackboneError


def test_config_imports_only_the_standard_library():
    """engine.config is read on every page load and before the CLI parses its flags: no NumPy, TensorFlow or
    engine module outside engine.config and engine.core."""
    code = ("import sys, engine.config.training, engine.config.backbones, engine.config.runfiles\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'tensorflow', 'cv2', 'scipy', "
            "'streamlit') or (m.startswith('engine.') and m.split('.')[1] not in ('config', 'core')))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
