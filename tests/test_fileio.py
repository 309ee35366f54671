"""engine.core.fileio: atomic writes, and cache entries made once per machine however many processes ask at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.core.fileio import atomic_write_bytes, made_once

REPO = Path(__file__).resolve().parents[1]

MAKER = r"""
import sys, time
from pathlib import Path
from engine.core.fileio import atomic_write_bytes, made_once
entry, log = Path(sys.argv[1]), Path(sys.argv[2])
with made_once(entry) as to_make:
    if to_make:
        with open(log, "a") as fh:
            fh.write("made\n")
        time.sleep(1.0)  # a conversion takes seconds: the others ask meanwhile
        atomic_write_bytes(entry, b"model")
print(entry.read_bytes().decode())
"""


def test_an_entry_asked_for_by_three_processes_at_once_is_made_once(tmp_path):
    entry, log = tmp_path / "cache" / "backbone.tflite", tmp_path / "made.log"
    procs = [subprocess.Popen([sys.executable, "-c", MAKER, str(entry), str(log)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE) for _ in range(3)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outputs == ["model"] * 3  # the ones that waited found it made
    assert log.read_text() == "made\n"


def test_a_made_entry_is_not_made_again_and_a_failed_one_is_retried(tmp_path):
    entry = tmp_path / "template"
    try:
        with made_once(entry) as to_make:
            assert to_make
            raise RuntimeError("the conversion failed")
    except RuntimeError:
        pass
    with made_once(entry) as to_make:  # nothing was left half-made: the next caller tries again
        assert to_make
        atomic_write_bytes(entry, b"ok")
    with made_once(entry) as to_make:
        assert not to_make
