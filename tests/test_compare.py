"""engine.runs.compare: what changed between two runs (accuracy, per-class scores, flipped predictions, settings)."""

from __future__ import annotations

from engine.runs.compare import config_diff, diff_runs, prediction_key


def pred(name: str, true: str, predicted: str, sha: str | None = None, folder: str | None = None) -> dict:
    p = {"path": f"/ws/p/images/{folder or true}/{name}", "true": true, "predicted": predicted, "probability": 0.9}
    if sha:
        p["sha256"] = sha
    return p


def test_flips_are_matched_by_sha256_or_file_name_and_classified():
    before = {"val_accuracy": 0.5, "labels": ["a", "b"],
              "per_class": {"a": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
                            "b": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}},
              "predictions": [pred("1.jpg", "a", "b"), pred("2.jpg", "a", "a"), pred("3.jpg", "b", "b"),
                              pred("4.jpg", "b", "a"), pred("5.jpg", "a", "a", sha="f" * 64)]}
    # 1.jpg was relabelled from a to b (its path changed): judged by its new label, found by its file name
    after = {"val_accuracy": 0.75, "labels": ["a", "b"],
             "per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2},
                           "b": {"precision": 0.67, "recall": 1.0, "f1": 0.8, "support": 2}},
             "predictions": [pred("1.jpg", "b", "b"), pred("2.jpg", "a", "b"), pred("3.jpg", "b", "b"),
                             pred("new.jpg", "b", "b"), pred("renamed.jpg", "a", "b", sha="f" * 64)]}
    diff = diff_runs(before, after, {"seed": 1, "run_dir": "/x", "quantize": ["float32"]},
                     {"seed": 2, "run_dir": "/y", "quantize": ["float32"]})
    assert diff.accuracy == (0.5, 0.75) and abs(diff.accuracy_delta - 0.25) < 1e-9
    assert diff.n_common == 4  # 4.jpg is gone, new.jpg is new; the SHA-256 match survives a rename
    assert [(f["key"], f["change"]) for f in diff.flips] == [("1.jpg", "now right"), ("2.jpg", "now wrong"),
                                                             ("f" * 64, "now wrong")]
    assert (diff.fixed, diff.broken) == (1, 2)
    assert diff.flips[0]["true before"] == "a" and diff.flips[0]["true"] == "b"
    a, b = diff.per_class
    assert a["class"] == "a" and a["recall change"] == 0.0 and abs(b["f1 change"] - 0.3) < 1e-9
    assert diff.config == [("seed", 1, 2)]  # where a run was written is not a setting


def test_missing_fields_give_empty_answers():
    diff = diff_runs({}, {"predictions": [pred("1.jpg", "a", "a")]})
    assert diff.accuracy == (None, None) and diff.accuracy_delta is None
    assert diff.flips == [] and diff.n_common == 0 and diff.per_class == [] and diff.config == []
    assert config_diff(None, {"seed": 3}) == [("seed", None, 3)]
    assert prediction_key({"path": "C:/x/y/z.png"}) == "z.png"
