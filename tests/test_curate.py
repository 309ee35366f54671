"""Curate (issue 10): label issues, outliers, the model-assisted inbox, the map, the `inspect` CLI and the Curate
page, on images made here with OpenCV (tests/curate_data.py) and the real backbone (embeddings are cached by
SHA-256). Near-duplicate groups: tests/test_groups.py; image statistics: tests/test_image_stats.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from curate_data import KINDS, PER_CLASS, altered, blobs, drawing, fake_run, jpeg  # noqa: E402

from engine.curate.decisions import Decisions  # noqa: E402
from engine.curate.findings import find_issues, inspect_image_dir, project_findings  # noqa: E402
from engine.curate.label_issues import knn_probabilities, label_issues  # noqa: E402
from engine.curate.map import cached_map, project_2d  # noqa: E402
from engine.curate.model import embed_records, load_head, project_model  # noqa: E402
from engine.curate.outliers import OUTLIER_Z, class_outlier_scores, odd_image_reasons  # noqa: E402
from engine.curate.suggestions import (  # noqa: E402
    accept_suggestions,
    inbox_suggestions,
    order_suggestions,
    run_suggestion_temperature,
    suggestion_temperature,
)
from engine.features.image_stats import image_stats  # noqa: E402
from engine.learn.groups import near_duplicate_groups  # noqa: E402
from engine.learn.head import Head  # noqa: E402
from engine.store.names import INBOX  # noqa: E402
from engine.store.workspace import Workspace  # noqa: E402


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """3 classes x 8, plus: a red disc labelled blue, an altered copy of red/0 in green, a blank image in red."""
    root = tmp_path_factory.mktemp("curate") / "image_dir"
    for k, kind in enumerate(KINDS):
        (root / kind).mkdir(parents=True)
        for i in range(PER_CLASS):
            (root / kind / f"{kind}{i}.jpg").write_bytes(jpeg(drawing(kind, 100 * k + i)))
    (root / "blue" / "mislabelled.jpg").write_bytes(jpeg(drawing("red", 999)))
    (root / "green" / "copy_of_red0.jpg").write_bytes(altered(drawing("red", 0)))
    (root / "red" / "blank.jpg").write_bytes(jpeg(np.full((128, 128, 3), 128, np.uint8)))
    return root


@pytest.fixture(scope="module")
def report(image_dir) -> dict:
    return inspect_image_dir(image_dir)


# ----------------------------------------------------------------------------------------------------------------
# engine: odd images, label issues, class outliers
# ----------------------------------------------------------------------------------------------------------------
def test_odd_images_have_reasons(tmp_path):
    grad = np.tile(np.linspace(0, 255, 256, dtype=np.float32), (256, 1))
    texture = drawing("red", 5, 256)
    cases = {
        "blank": np.full((200, 200, 3), 127, np.uint8),
        "dark": (texture * 0.06).astype(np.uint8),
        "bright": np.clip(texture.astype(np.int32) + 200, 0, 255).astype(np.uint8),
        "blurry": cv2.cvtColor(cv2.GaussianBlur(grad, (0, 0), 8).astype(np.uint8), cv2.COLOR_GRAY2BGR),
        "panorama": cv2.resize(texture, (900, 120)),
        "normal": texture,
    }
    paths = []
    for name, img in cases.items():
        cv2.imwrite(str(tmp_path / f"{name}.png"), img)
        paths.append(str(tmp_path / f"{name}.png"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    paths.append(str(tmp_path / "broken.png"))
    stats = image_stats(paths, [f"x{i}" for i in range(len(paths))], cache=False)
    reasons = {name: {r for r, _ in rs} for name, rs in zip([*cases, "broken"], odd_image_reasons(stats),
                                                             strict=True)}
    assert "near-blank" in reasons["blank"]
    assert "very dark" in reasons["dark"]
    assert "very bright" in reasons["bright"]
    assert "blurry" in reasons["blurry"]
    assert "extreme aspect" in reasons["panorama"]
    assert reasons["normal"] == set()
    assert reasons["broken"] == {"unreadable"}


def test_label_issues_find_flipped_labels():
    x, y = blobs()
    flipped = np.array([3, 50, 100])
    y_noisy = y.copy()
    y_noisy[flipped] = (y[flipped] + 1) % 3
    found = find_issues(x, y_noisy, 3, [f"s{i}" for i in range(len(y))])
    top = [li.index for li in found.label_issues[:3]]
    assert set(top) == set(flipped.tolist())
    for li in found.label_issues[:3]:
        assert li.given == y_noisy[li.index] and li.suggested == y[li.index] and 0.5 < li.score <= 1
    assert found.timings["out_of_fold_s"] >= 0


def test_suggestion_temperature_is_conservative_only_for_small_samples():
    from engine.learn.confidence import fit_temperature
    from engine.learn.crossval import softmax

    rng = np.random.default_rng(0)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:  # calibrated 3-class probabilities and labels drawn from them
        p = softmax(rng.normal(scale=3.0, size=(n, 3)))
        return p, np.array([rng.choice(3, p=row) for row in p])

    for n, head_t in ((40, 0.6), (3000, 0.6)):
        p, y = sample(n)
        point = fit_temperature(np.log(p) * head_t, y)  # what fit_head would choose on these rows
        t = suggestion_temperature(head_t, p, y)
        assert t >= head_t
        if n == 40:
            assert t > 1.1 * point  # a small sample: the upper end of what it supports
        else:
            assert abs(t - point) < 0.05 * point  # thousands of rows: as fitted
    p, y = sample(3)
    assert suggestion_temperature(0.7, p[:1], y[:1]) == 0.7  # too few rows: the head's own


def test_label_issues_tolerate_an_empty_class_column():
    x, y = blobs(k=2)
    probs = np.column_stack([np.where(y == 0, 0.9, 0.1), np.where(y == 0, 0.1, 0.9), np.zeros(len(y))])
    probs[5] = [0.05, 0.95, 0.0]  # a class-0 image the model calls class 1
    issues = label_issues(y, probs)
    assert [li.index for li in issues] == [5] and issues[0].suggested == 1


def test_class_outlier_and_knn_probabilities():
    x, y = blobs(n_per=20)
    x[7] = x[7] + 25.0  # far from its class
    _, z = class_outlier_scores(x, y)
    assert int(np.argmax(z)) == 7 and z[7] > OUTLIER_Z
    p = knn_probabilities(x, y, 3)
    assert np.allclose(p.sum(axis=1), 1) and (p.argmax(1) == y).mean() > 0.9
    # a copy carrying the same wrong label must not vouch for it
    x2 = np.vstack([x, x[25:26]])
    y2 = np.append(y, 0)
    y2[25] = 0
    groups = near_duplicate_groups(x2, [f"s{i}" for i in range(len(y2))])
    with_groups = knn_probabilities(x2, y2, 3, groups)
    without = knn_probabilities(x2, y2, 3)
    assert with_groups[25, 0] < without[25, 0]


# ----------------------------------------------------------------------------------------------------------------
# an image folder and the CLI
# ----------------------------------------------------------------------------------------------------------------
def test_inspect_image_dir_finds_the_planted_problems(report, image_dir):
    names = lambda paths: {Path(p).name for p in paths}  # noqa: E731
    issue_names = [Path(r["path"]).name for r in report["label_issues"]]
    assert "mislabelled.jpg" in issue_names[:2]
    mis = next(r for r in report["label_issues"] if r["path"].endswith("mislabelled.jpg"))
    assert (mis["given"], mis["suggested"]) == ("blue", "red")
    assert any(names(g) == {"red0.jpg", "copy_of_red0.jpg"} for g in report["near_duplicates"])
    assert any(r["path"].endswith("blank.jpg") and r["reason"] == "near-blank" for r in report["outliers"])
    scores = [r["score"] for r in report["label_issues"]]
    assert scores == sorted(scores, reverse=True)


def test_cli_inspect_json_shape(image_dir, report, capsys):
    from engine.cli.main import main

    assert main(["inspect", "--image_dir", str(image_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"label_issues", "near_duplicates", "outliers"}
    assert all(set(r) == {"path", "given", "suggested", "score"} for r in out["label_issues"])
    assert all(isinstance(g, list) and len(g) >= 2 and all(isinstance(p, str) for p in g)
               for g in out["near_duplicates"])
    assert all(set(r) == {"path", "reason", "score"} for r in out["outliers"])
    assert out["near_duplicates"] == report["near_duplicates"]
    assert main(["inspect", "--image_dir", str(image_dir / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["inspect", "--image_dir", str(image_dir)]) == 0
    assert "Label issues:" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# a project: decisions, inbox suggestions, ordered leases, the map
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def project(project, image_dir):
    """conftest's empty project with five shapes of each kind per class and three of each unsorted."""
    p = project
    for kind in KINDS:
        p.add_files([str(f) for f in sorted((image_dir / kind).glob(f"{kind}[0-4].jpg"))], kind)
    p.add_files([str(f) for kind in KINDS for f in sorted((image_dir / kind).glob(f"{kind}[5-7].jpg"))], None)
    return p


def test_decisions_are_remembered(tmp_path):
    d = Decisions(tmp_path)
    assert d.kept() == set()
    assert d.keep("label", "abc") is True
    assert Decisions(tmp_path).kept() == {"label:abc"}
    assert d.forget_all() == 1 and d.kept() == set()


def test_inbox_suggestions_accept_and_refresh_without_reembedding(project):
    assert inbox_suggestions(project) == []  # no model yet
    labelled = [r for r in project.images() if r.class_name]
    model = project_model(project)
    feats, ok = embed_records(labelled, model)
    y = np.array([KINDS.index(labelled[i].class_name) for i in ok])
    from engine.learn.crossval import fit_logreg

    kernel, bias, _ = fit_logreg(feats, y, 3, 1e-3)
    run = fake_run(project, list(KINDS), kernel, bias)
    head = load_head(run)
    assert isinstance(head, Head) and head.n_classes == 3
    sugg = inbox_suggestions(project)
    assert len(sugg) == 9
    truth = {r.sha256: r.source_name.rstrip("0123456789.jpg") for r in project.images(INBOX)}
    assert sum(s.class_name == truth[s.sha256] for s in sugg) >= 8
    ordered = order_suggestions(sugg, least_confident_first=True)
    assert [s.confidence for s in ordered] == sorted(s.confidence for s in sugg)
    # an ordered lease hands out the least confident image first
    first = project.lease_in_order("me", [s.sha256 for s in ordered])
    assert first.sha256 == ordered[0].sha256
    # a retrain: a new head, same cached embeddings (nothing embedded again)
    from engine.features import embeddings

    calls = []
    original = embeddings.Embedder.__init__
    embeddings.Embedder.__init__ = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        fake_run(project, list(KINDS), -kernel, bias, name="run2")
        flipped = inbox_suggestions(project)
    finally:
        embeddings.Embedder.__init__ = original
    assert calls == [] and len(flipped) == 9
    assert [s.class_name for s in flipped] != [s.class_name for s in sugg]
    # a run whose out-of-fold predictions (metrics.json) are few and partly wrong: suggestions get less sure, same class
    from engine.learn.crossval import softmax

    run3 = fake_run(project, list(KINDS), kernel, bias, name="run3")
    probs = softmax(feats @ kernel + bias)
    truth_l = [KINDS[i] for i in y]
    truth_l[0], truth_l[5] = KINDS[(y[0] + 1) % 3], KINDS[(y[5] + 1) % 3]  # two mistakes the T fit must explain
    (run3 / "metrics.json").write_text(json.dumps({"labels": list(KINDS), "predictions": [
        {"sha256": labelled[i].sha256, "true": t, "probs": p.tolist()} for i, t, p in zip(ok, truth_l, probs,
                                                                                          strict=True)]}))
    assert run_suggestion_temperature(run3, load_head(run3)) > 1.0
    humble = {s.sha256: s for s in inbox_suggestions(project)}
    assert {s.sha256: s.class_name for s in sugg} == {k: s.class_name for k, s in humble.items()}
    assert all(humble[s.sha256].confidence <= s.confidence + 1e-6 for s in sugg)
    assert any(humble[s.sha256].confidence < s.confidence - 1e-3 for s in sugg)
    # accept >= threshold moves only those
    sure = [s for s in sugg if s.confidence >= 0.5]
    moved = accept_suggestions(project, sugg, 0.5)
    assert moved == len(sure)
    assert project.count(INBOX) == 9 - moved


def test_project_findings_and_cached_map(project):
    found = project_findings(project)
    assert len(found.shas) == 15 and found.timings["total_s"] > 0
    feats, ok = embed_records(project.images(), project_model(project))
    shas = [project.images()[i].sha256 for i in ok]
    xy = cached_map(project.path, shas, feats, "pca")
    assert xy.shape == (len(shas), 2)
    cached = list((project.path / "curate").glob("map-pca-*.npz"))
    assert len(cached) == 1
    again = cached_map(project.path, list(reversed(shas)), feats[::-1], "pca")
    assert np.allclose(again, xy[::-1])
    assert project_2d(feats, "tsne").shape == (len(shas), 2)


def test_a_big_projects_check_starts_from_its_last_runs_folds(project, monkeypatch, caplog):
    """Issue 22: a large project's check keeps its last run's folds (engine.learn.warm_start: its groups are the
    check's, the same near-duplicate rule) and starts each fold from that run's head there (24,227 photos: the
    check's cross-validation 2.6 s -> 0.2 s); a small one, or one without such a run, fits every fold from zero."""
    import logging

    from engine.curate import findings
    from engine.features import backbones
    from engine.learn import crossval, warm_start

    labelled = [r for r in project.images() if r.class_name]
    model = project_model(project)
    feats, ok = embed_records(labelled, model)
    recs = [labelled[i] for i in ok]
    shas, names = [r.sha256 for r in recs], sorted(KINDS)
    y = np.array([names.index(r.class_name) for r in recs])
    groups = near_duplicate_groups(feats, shas, hashes=image_stats([str(r.path) for r in recs], shas).hashes)
    last = crossval.out_of_fold(feats, y, 3, groups=groups, l2=1e-3)
    kernel, bias, _ = crossval.fit_logreg(feats, y, 3, 1e-3)
    run = fake_run(project, names, kernel, bias)
    card = json.loads((run / "model_card.json").read_text())
    (run / "model_card.json").write_text(json.dumps({**card, "metrics": {"l2": 1e-3}}))
    caplog.set_level(logging.INFO, logger="engine.learn.crossval")
    warm = "folds start from the previous run's heads"
    monkeypatch.setattr(findings, "LARGE_N", 1)
    resolved = backbones.resolve(model.handle, model.image_size)
    key = warm_start.project_key(resolved.backbone_id, resolved.image_size, names)
    warm_start._path(key).unlink(missing_ok=True)  # another test's run of these classes may have kept one
    cold = project_findings(project)  # no run kept its folds yet
    assert warm not in caplog.text
    warm_start.save(key, warm_start.with_folds(
        warm_start.PreviousFit(1e-3, kernel, bias), warm_start.image_keys(shas), last.fold, last.n_folds,
        last.fold_heads, y))
    again = project_findings(project)
    assert f"{last.n_folds} of {last.n_folds} {warm}" in caplog.text
    assert [i["sha256"] for i in again.label_issues] == [i["sha256"] for i in cold.label_issues]
    caplog.clear()
    monkeypatch.setattr(findings, "LARGE_N", crossval.LARGE_N)
    project_findings(project)  # 15 images: never from a previous run
    assert warm not in caplog.text


def test_knn_votes_of_a_big_check_search_their_neighbours_and_agree_with_all_pairs(monkeypatch):
    """Above EXACT_NEIGHBOURS_MAX images the k-NN votes come from a cluster search (engine.learn.pairs), not all
    pairs."""
    from engine.curate import label_issues as li
    from engine.learn import pairs

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (4, 48)) * 2
    y = rng.integers(0, 4, 1500)
    feats = (centres[y] + rng.normal(0, 1, (1500, 48))).astype(np.float32)
    groups = np.arange(1500) // 3
    exact = li.knn_probabilities(feats, y, 4, groups)
    monkeypatch.setattr(pairs, "EXACT_NEIGHBOURS_MAX", 100)
    searched = li.knn_probabilities(feats, y, 4, groups)
    assert np.allclose(searched.sum(axis=1), 1) and not np.allclose(searched, exact)  # the other path ran
    assert np.mean(searched.argmax(1) == exact.argmax(1)) > 0.97 and np.abs(searched - exact).mean() < 0.03


def test_a_big_map_places_a_sample_and_puts_the_rest_among_their_neighbours(monkeypatch):
    """Above MAP_SAMPLE images t-SNE places a sample (its cost grows faster than n); each other image lands among
    the placed images nearest to it in feature space, so classes stay apart on the map."""
    from engine.curate import map as map_module

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 64)) * 4
    y = np.repeat([0, 1, 2], 100)
    feats = (centres[y] + rng.normal(0, 1, (300, 64))).astype(np.float32)
    monkeypatch.setattr(map_module, "MAP_SAMPLE", 60)
    xy = map_module.project_2d(feats, "tsne")
    assert xy.shape == (300, 2) and np.isfinite(xy).all() and len(np.unique(xy, axis=0)) > 250
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    assert np.mean(y[d2.argmin(axis=1)] == y) > 0.95  # the nearest point on the map is of the same class


# ----------------------------------------------------------------------------------------------------------------
# the Curate page (AppTest)
# ----------------------------------------------------------------------------------------------------------------
def test_curate_page_check_keep_and_fix(tmp_path, image_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    ws = Workspace()
    p = ws.create_project("Shapes")
    p.import_image_dir(image_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.query_params["project"] = p.slug
    at.run()
    at.switch_page("ui/pages/curate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    next(b for b in at.button if b.label == "Check the data").click().run()
    assert not at.exception, [e.value for e in at.exception]
    issues = at.session_state[f"curate::{p.slug}"]["label_issues"]
    mis = next(r for r in issues if p.get(r["sha256"]).source_name == "mislabelled.jpg")
    next(b for b in at.button if b.key == f"li_move_{mis['sha256']}").click().run()
    assert p.get(mis["sha256"]).class_name == "red"  # moved by the click
    other = next((r for r in issues if r["sha256"] != mis["sha256"]), None)
    if other is not None:
        next(b for b in at.button if b.key == f"li_keep_{other['sha256']}").click().run()
        assert f"label:{other['sha256']}" in Decisions(p.path).kept()
        assert not any(b.key == f"li_keep_{other['sha256']}" for b in at.button)
    at.segmented_control(key="curate_section").set_value(
        next(o for o in at.segmented_control(key="curate_section").options if o.startswith("Duplicates"))).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Label conflict" in str(m.value) for m in at.markdown)
    at.segmented_control(key="curate_section").set_value("Map").run()
    assert not at.exception, [e.value for e in at.exception]
    assert list((p.path / "curate").glob("map-tsne-*.npz"))
    # a new check remembers the kept suspect
    next(b for b in at.button if b.label == "Check again").click().run()
    if other is not None:
        assert all(r["sha256"] != other["sha256"] for r in at.session_state[f"curate::{p.slug}"]["label_issues"])


def test_sorter_suggests_orders_and_accepts(project, tmp_path, monkeypatch):
    """The Data page's Sort inbox with a trained head: Enter-able 'Accept' button, ordering, bulk accept."""
    from streamlit.testing.v1 import AppTest

    from engine.learn.crossval import fit_logreg

    labelled = [r for r in project.images() if r.class_name]
    feats, ok = embed_records(labelled, project_model(project))
    y = np.array([KINDS.index(labelled[i].class_name) for i in ok])
    kernel, bias, _ = fit_logreg(feats, y, 3, 1e-3)
    fake_run(project, list(KINDS), kernel, bias)
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(project.path.parent))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.query_params["project"] = project.slug
    at.run()
    at.switch_page("ui/pages/data.py").run()
    at.segmented_control(key="data_section").set_value("Sort inbox").run()
    assert not at.exception, [e.value for e in at.exception]
    at.segmented_control(key="sort_order").set_value("Least confident first").run()
    sugg = {s.sha256: s for s in inbox_suggestions(project)}
    least = min(sugg.values(), key=lambda s: s.confidence)
    accept = next(b for b in at.button if b.key == "sort_accept")
    assert accept.label.startswith(f"Accept: {least.class_name}")
    accept.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert project.get(least.sha256).class_name == least.class_name
    at.slider(key="bulk_threshold").set_value(0.5).run()
    rest = [s for s in sugg.values() if s.sha256 != least.sha256 and s.confidence >= 0.5]
    next(b for b in at.button if b.key == "bulk_accept").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert project.count(INBOX) == 8 - len(rest)


def test_curate_page_without_labelled_images(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    p = Workspace().create_project("Empty")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.query_params["project"] = p.slug
    at.run()
    at.switch_page("ui/pages/curate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("needs at least two classes" in str(i.value) for i in at.info)




# ----------------------------------------------------------------------------------------------------------------
# issue 20: the Curate page and the bulk accept for someone who is not an ML engineer
# ----------------------------------------------------------------------------------------------------------------
def test_class_colours_are_distinct_and_kept(tmp_path):
    from engine.curate.map import CLASS_PALETTE, class_colours, project_class_colours

    names = ["daisy", "dandelion", "roses", "sunflowers", "tulips", "red", "blue", "green"]
    colours = class_colours(names)
    assert len(set(colours.values())) == len(names) and set(colours.values()) <= set(CLASS_PALETTE)
    assert class_colours(list(reversed(names))) == colours  # the order names come in does not matter
    assert len(set(class_colours([f"class {i}" for i in range(20)]).values())) == 20
    # a project keeps each class's colour when classes come and go (the map reads them from <project>/curate/)
    first = project_class_colours(tmp_path, ["roses", "tulips"])
    more = project_class_colours(tmp_path, ["daisy", "dandelion", "roses", "sunflowers", "tulips"])
    assert {k: more[k] for k in first} == first and len(set(more.values())) == 5
    assert project_class_colours(tmp_path, ["tulips"]) == {"tulips": first["tulips"]}


def test_findings_are_kept_and_what_was_handled_is_not_shown_again(tmp_path):
    from engine.curate.decisions import group_key
    from engine.curate.findings import load_findings, save_findings, still_open

    assert load_findings(tmp_path) is None
    found = {"shas": ["a", "b", "c", "d", "e"], "classes": ["x", "x", "y", "y", "y"], "timings": {},
             "label_issues": [{"sha256": "a", "given": "x", "suggested": "y", "score": 0.9},
                              {"sha256": "b", "given": "x", "suggested": "y", "score": 0.8},
                              {"sha256": "e", "given": "y", "suggested": "x", "score": 0.7}],
             "duplicates": [{"key": group_key("cde"), "shas": ["c", "d", "e"], "classes": ["y", "y", "y"],
                             "cross_class": False}],
             "outliers": [{"sha256": "d", "class": "y", "reason": "blurry", "score": 3.0}], "checked_at": 5.0}
    save_findings(tmp_path, found)
    assert load_findings(tmp_path) == found
    where = {"a": "y", "b": "x", "d": "y", "e": "y"}  # a moved to y, c trashed
    kept = {"correct:b:x", "outlier:d"}  # b's label confirmed on Review
    left = still_open(load_findings(tmp_path), where, kept)
    assert [r["sha256"] for r in left["label_issues"]] == ["e"] and left["outliers"] == []
    assert left["duplicates"] == [{"key": group_key("de"), "shas": ["d", "e"], "classes": ["y", "y"],
                                   "cross_class": False}]
    assert still_open(found, where, {f"duplicates:{group_key('de')}"})["duplicates"] == []


def test_threshold_check_counts_what_a_threshold_accepted(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from engine.curate import suggestions

    run = fake_run(SimpleNamespace(runs_dir=tmp_path), ["a", "b", "c"], np.zeros((4, 3)), np.zeros(3))
    assert suggestions.threshold_check(run, 0.9) is None  # no out-of-fold predictions kept
    rows = [([0.95, 0.03, 0.02], "a"), ([0.92, 0.05, 0.03], "b"), ([0.6, 0.3, 0.1], "a"),
            ([0.1, 0.85, 0.05], "b"), ([0.2, 0.2, 0.6], "c")]
    (run / "metrics.json").write_text(json.dumps({"labels": ["a", "b", "c"], "predictions": [
        {"true": t, "probs": p} for p, t in rows]}))
    monkeypatch.setattr(suggestions, "run_suggestion_temperature", lambda run_dir, head: 1.0)  # as the head's
    check = suggestions.threshold_check(run, 0.9)
    assert (check.total, check.accepted, check.right, check.per_class) == (5, 2, 1, {"a": (1, 2)})
    assert check.precision == 0.5
    check = suggestions.threshold_check(run, 0.8)
    assert (check.accepted, check.right, check.per_class) == (3, 2, {"a": (1, 2), "b": (1, 1)})
    check = suggestions.threshold_check(run, 0.5, classes=["b", "c"])  # class a was deleted: never suggested
    assert (check.accepted, check.right, check.per_class) == (2, 2, {"b": (1, 1), "c": (1, 1)})


def test_bulk_accept_says_what_the_threshold_meant_and_previews_every_image(project, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from engine.curate.suggestions import threshold_check
    from engine.learn.crossval import fit_logreg, softmax

    labelled = [r for r in project.images() if r.class_name]
    feats, ok = embed_records(labelled, project_model(project))
    y = np.array([KINDS.index(labelled[i].class_name) for i in ok])
    kernel, bias, _ = fit_logreg(feats, y, 3, 1e-3)
    run = fake_run(project, list(KINDS), kernel, bias)
    truth = [KINDS[i] for i in y]
    truth[0], truth[5] = KINDS[(y[0] + 1) % 3], KINDS[(y[5] + 1) % 3]  # two sure but wrong in cross-validation
    (run / "metrics.json").write_text(json.dumps({"labels": list(KINDS), "predictions": [
        {"sha256": labelled[i].sha256, "true": t, "probs": p.tolist()}
        for i, t, p in zip(ok, truth, softmax(feats @ kernel + bias), strict=True)]}))
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(project.path.parent))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.query_params["project"] = project.slug
    at.run()
    at.switch_page("ui/pages/data.py").run()
    at.segmented_control(key="data_section").set_value("Sort inbox").run()
    at.session_state["bulk_open"] = True
    at.slider(key="bulk_threshold").set_value(0.5).run()
    assert not at.exception, [e.value for e in at.exception]
    check = threshold_check(run, 0.5, project.classes())
    assert check.right < check.accepted
    captions = [c.value for c in at.caption]
    assert any(f"right about {check.right} of them: **{check.precision:.1%}**" in c for c in captions), captions
    sugg = {s.sha256: s for s in inbox_suggestions(project)}
    chosen = [s for s in sugg.values() if s.confidence >= 0.5]
    boxes = [c for c in at.checkbox if c.key.startswith("bulk_out_")]
    assert {c.key for c in boxes} == {f"bulk_out_{s.sha256}" for s in chosen}  # every image that would move
    surest = max(chosen, key=lambda s: s.confidence)
    at.checkbox(key=f"bulk_out_{surest.sha256}").check().run()
    accept = at.button(key="bulk_accept")
    assert accept.label == f"Move {len(chosen) - 1} image(s)"
    accept.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert project.get(surest.sha256).class_name is None  # left out: still unsorted
    assert project.count(INBOX) == 9 - len(chosen) + 1


def curate_project(tmp_path, image_dir, monkeypatch):
    """The planted image_dir as a project, plus a smaller copy of blue1 in blue, and a way to open Curate as a new
    browser session (nothing in it but the URL)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    p = Workspace().create_project("Shapes")
    p.import_image_dir(image_dir)
    p.add_files([("blue1_small.jpg", altered(drawing("blue", 101)))], "blue")

    def page() -> AppTest:
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.query_params["project"] = p.slug
        at.run()
        at.switch_page("ui/pages/curate.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return p, page


def curate_section(at, name: str) -> None:
    control = at.segmented_control(key="curate_section")
    control.set_value(next(o for o in control.options if o.startswith(name))).run()
    assert not at.exception, [e.value for e in at.exception]


def source(p, name: str):
    return next(r for r in p.images() if r.source_name == name)


def test_curate_page_keeps_the_copy_the_user_picks(tmp_path, image_dir, monkeypatch):
    p, page = curate_project(tmp_path, image_dir, monkeypatch)
    original, copy = source(p, "blue1.jpg").sha256, source(p, "blue1_small.jpg").sha256
    at = page()
    next(b for b in at.button if b.label == "Check the data").click().run()
    curate_section(at, "Duplicates")
    group = next(g for g in at.session_state[f"curate::{p.slug}"]["duplicates"] if set(g["shas"]) == {original, copy})
    assert "**2 copies in blue**" in [m.value for m in at.markdown]
    # each copy has its own "keep this one": the largest (likely the original) is the suggested one, but any can be
    keep_original = at.button(key=f"dup_keep_one_{group['key']}_{original[:16]}")
    keep_copy = at.button(key=f"dup_keep_one_{group['key']}_{copy[:16]}")
    assert keep_original.label == keep_copy.label == "Keep this, trash 1"
    assert keep_original.proto.type == "primary" and keep_copy.proto.type == "secondary"
    keep_copy.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert p.get(original) is None and p.get(copy).class_name == "blue"
    assert not any(b.key.startswith(f"dup_keep_one_{group['key']}") for b in at.button)


def test_curate_page_remembers_the_check_and_says_what_it_means(tmp_path, image_dir, monkeypatch):
    from engine.curate.findings import load_findings, save_findings
    from engine.curate.map import UNSORTED_COLOUR, project_class_colours

    p, page = curate_project(tmp_path, image_dir, monkeypatch)
    at = page()
    next(b for b in at.button if b.label == "Check the data").click().run()
    assert not at.exception, [e.value for e in at.exception]
    captions = " ".join(c.value for c in at.caption)
    assert "Last checked just now" in captions
    assert "A suspect is an image whose label may be wrong" in captions and "The score says" in captions
    assert "cleanlab" not in captions
    found = load_findings(p.path)
    mis = next(r for r in found["label_issues"] if r["sha256"] == source(p, "mislabelled.jpg").sha256)
    blank = source(p, "blank.jpg").sha256
    assert any(o["sha256"] == blank for o in found["outliers"])
    p.delete_images([blank])

    # a reload shows the last check, how old it is, and not what was handled since
    at = page()
    assert any(b.label == "Check again" for b in at.button)
    assert "Last checked just now" in " ".join(c.value for c in at.caption)
    assert at.button(key=f"li_move_{mis['sha256']}")
    curate_section(at, "Outliers")
    assert not any(b.key.startswith(f"out_trash_{blank}") for b in at.button)

    # the map: one distinct hue per class, the colours the project keeps for its classes; the inbox grey
    p.add_files([("unsorted.jpg", jpeg(drawing("red", 4242)))])
    curate_section(at, "Map")
    scale = json.loads(at.get("vega_lite_chart")[0].proto.spec)["encoding"]["color"]["scale"]
    colours = project_class_colours(p.path, p.classes())
    assert scale["domain"] == [*sorted(KINDS), "Unsorted (inbox)"]
    assert scale["range"] == [*(colours[c] for c in sorted(KINDS)), UNSORTED_COLOUR]
    assert len(set(scale["range"])) == 4

    # a check that found no label issue says so; "left" is for after some were handled
    save_findings(p.path, {**found, "label_issues": [mis]})
    at = page()
    at.button(key=f"li_keep_{mis['sha256']}").click().run()
    assert "No label issues left." in [s.value for s in at.success]
    save_findings(p.path, {**found, "label_issues": []})
    at = page()
    assert "No label issues found." in [s.value for s in at.success]
