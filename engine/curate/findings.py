"""Findings: everything curation reports about a labelled image set, and its two front ends (a folder for the
`inspect` command, a project for the Curate page).

Four signals, all from cached backbone embeddings plus one small decode per image (statistics cached by SHA-256):

* label issues: cleanlab on out-of-fold probabilities (engine.curate.label_issues);
* near-duplicates: exact copies, near-identical embeddings and perceptual-hash matches (engine.learn.groups, the
  groups cross-validation keeps in one fold); a group that spans classes is a label conflict;
* class outliers: images unlike their own class (engine.curate.outliers);
* odd images: near-blank, very dark or bright, blurry, extreme aspect ratio (engine.curate.outliers).

`find_issues` takes arrays and returns row indices; the front ends turn those into paths or SHA-256s. Nothing
here moves or deletes a file: the app and the CLI show findings, a person clicks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config.backbones import DEFAULT_BACKBONE
from engine.core.fileio import atomic_write_json, read_json
from engine.curate.decisions import Decisions, group_key, label_confirmed
from engine.curate.label_issues import CURATE_FOLDS, LabelIssue, label_issues, suspect_probabilities
from engine.curate.model import ProjectModel, embed_records, project_model
from engine.curate.outliers import Outlier, find_outliers
from engine.data.dataset import scan_image_dir
from engine.data.images import file_sha256
from engine.features import backbones
from engine.features.embeddings import embed_files
from engine.features.image_stats import ImageStats, image_stats
from engine.learn import warm_start
from engine.learn.crossval import LARGE_N, WarmStart
from engine.learn.groups import copy_groups, groups_to_lists, near_duplicate_groups
from engine.learn.kept_groups import duplicate_pairs_of


@dataclass
class Findings:
    """Everything curate found, indices into the rows it was given; each list most suspicious first."""

    label_issues: list[LabelIssue] = field(default_factory=list)
    duplicate_groups: list[list[int]] = field(default_factory=list)
    cross_class: list[bool] = field(default_factory=list)  # per duplicate group: spans several classes
    outliers: list[Outlier] = field(default_factory=list)
    group_ids: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


def find_issues(features: np.ndarray, labels: np.ndarray, n_classes: int, shas: Sequence[str],
                stats: ImageStats | None = None, probs: np.ndarray | None = None, seed: int = 42,
                l2: float | None = None, warm: WarmStart | None = None) -> Findings:
    """All findings for labelled rows. `probs` are out-of-fold probabilities (computed here when None, at `l2`,
    from `warm`: see suspect_probabilities)."""
    t = {}
    t0 = time.perf_counter()
    labels = np.asarray(labels, np.int64)
    hashes = None if stats is None else stats.hashes
    pairs = duplicate_pairs_of(features, shas, hashes)  # one search for both rules below (a run's, when kept)
    groups = near_duplicate_groups(features, shas, hashes=hashes, pairs=pairs)  # folds for the suspects: loose
    found = Findings(group_ids=groups)
    found.duplicate_groups = groups_to_lists(copy_groups(features, shas, hashes=hashes, pairs=pairs))  # to thin out
    t["duplicates_s"] = time.perf_counter() - t0
    found.cross_class = [len(set(labels[m].tolist())) > 1 for m in found.duplicate_groups]
    # conflicts (one photo, two labels) first: they are certain mistakes
    order = sorted(range(len(found.duplicate_groups)), key=lambda g: (not found.cross_class[g], g))
    found.duplicate_groups = [found.duplicate_groups[g] for g in order]
    found.cross_class = [found.cross_class[g] for g in order]

    t1 = time.perf_counter()
    counts = np.bincount(labels, minlength=n_classes)
    if probs is None and (counts > 0).sum() >= 2 and len(labels) >= 4:
        probs = suspect_probabilities(features, labels, n_classes, groups, seed=seed, l2=l2, warm=warm)
    t["out_of_fold_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    if probs is not None:
        found.label_issues = label_issues(labels, probs)
    t["label_issues_s"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    found.outliers = find_outliers(features, labels, stats)
    t["outliers_s"] = time.perf_counter() - t3
    found.timings = {k: round(v, 3) for k, v in t.items()}
    return found


# ------------------------------------------------------------------------------------------------------------------
# an image folder (the `inspect` command)
# ------------------------------------------------------------------------------------------------------------------
def inspect_image_dir(image_dir: str | Path, backbone: str | None = None, center_crop: bool = False,
                      progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Findings for `<image_dir>/<class>/<image>` as the CLI's JSON object (paths as scanned)."""
    ds = scan_image_dir(image_dir, check_images=False, progress=progress)
    paths = [it.path for it in ds.items]
    shas = [it.sha256 or file_sha256(it.path) for it in ds.items]
    resolved = backbones.resolve(backbone or DEFAULT_BACKBONE)
    emb = embed_files(paths, shas, resolved, center_crop=center_crop, progress=progress)
    ok = emb.ok
    y = ds.y[ok]
    stats = image_stats([paths[i] for i in ok], [shas[i] for i in ok])
    found = find_issues(emb.features, y, len(ds.labels), [shas[i] for i in ok], stats)
    report = findings_json(found, [paths[i] for i in ok], ds.labels)
    report["outliers"] = ([{"path": paths[i], "reason": "unreadable", "score": 10.0} for i, _ in emb.failed]
                          + report["outliers"])
    report["skipped"] = [{"path": s.path, "reason": s.reason} for s in ds.skipped]
    return report


def findings_json(found: Findings, paths: Sequence[str], class_names: Sequence[str]) -> dict[str, Any]:
    """The CLI's `--json` object: label_issues, near_duplicates, outliers, most suspicious first."""
    return {
        "label_issues": [{"path": str(paths[li.index]), "given": class_names[li.given],
                          "suggested": class_names[li.suggested], "score": round(li.score, 4)}
                         for li in found.label_issues],
        "near_duplicates": [[str(paths[i]) for i in g] for g in found.duplicate_groups],
        "outliers": [{"path": str(paths[o.index]), "reason": o.reason, "score": round(o.score, 3)}
                     for o in found.outliers],
    }


# ------------------------------------------------------------------------------------------------------------------
# a project (the Curate page)
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class ProjectFindings:
    """Findings of a project's labelled images, keyed by SHA-256 (what the Curate page shows)."""

    shas: list[str]
    classes: list[str]  # class name per row
    label_issues: list[dict]  # {"sha256", "given", "suggested", "score"}
    duplicates: list[dict]  # {"key", "shas", "classes", "cross_class"}
    outliers: list[dict]  # {"sha256", "class", "reason", "score"}
    timings: dict[str, float]
    n_failed: int = 0
    checked_at: float = 0.0  # time.time() of the check: a reload shows how old the findings are

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_findings(project, progress: Callable[[dict], None] | None = None,
                     hide_kept: bool = True) -> ProjectFindings:
    """Findings for every labelled image of a project; ones a person kept are left out."""
    t0 = time.perf_counter()
    records = [r for r in project.images() if r.class_name is not None]
    class_names = sorted({r.class_name for r in records})
    if len(records) < 2:
        return ProjectFindings([], [], [], [], [], {}, checked_at=time.time())
    model = project_model(project)
    feats, ok = embed_records(records, model, progress)
    recs = [records[i] for i in ok]
    shas = [r.sha256 for r in recs]
    y = np.array([class_names.index(r.class_name) for r in recs], np.int64)
    t1 = time.perf_counter()
    stats = image_stats([str(r.path) for r in recs], shas)
    t2 = time.perf_counter()
    # The newest run's L2 when it was trained on these classes: its cross-validation chose it, and a search of the
    # check's own cost 4-16 s at 24,000 images.
    l2 = model.l2 if model.labels == class_names else None
    found = find_issues(feats, y, len(class_names), shas, stats, l2=l2,
                        warm=_last_folds(model, class_names, shas) if l2 is not None else None)
    kept = Decisions(project.path).kept() if hide_kept else set()
    issues = [{"sha256": shas[li.index], "given": class_names[li.given], "suggested": class_names[li.suggested],
               "score": li.score} for li in found.label_issues
              if f"label:{shas[li.index]}" not in kept
              and not label_confirmed(kept, shas[li.index], class_names[li.given])]
    dups = []
    for members, cross in zip(found.duplicate_groups, found.cross_class, strict=True):
        g_shas = [shas[i] for i in members]
        key = group_key(g_shas)
        if f"duplicates:{key}" not in kept:
            dups.append({"key": key, "shas": g_shas, "classes": [recs[i].class_name for i in members],
                         "cross_class": cross})
    outliers = [{"sha256": shas[o.index], "class": recs[o.index].class_name, "reason": o.reason, "score": o.score}
                for o in found.outliers if f"outlier:{shas[o.index]}" not in kept]
    timings = {"embed_s": round(t1 - t0, 3), "stats_s": round(t2 - t1, 3), **found.timings,
               "total_s": round(time.perf_counter() - t0, 3)}
    return ProjectFindings(shas, [r.class_name for r in recs], issues, dups, outliers, timings,
                           len(records) - len(recs), time.time())


def _last_folds(model: ProjectModel, class_names: list[str], shas: list[str]) -> WarmStart | None:
    """A large project's last run's folds and fold heads (engine.learn.warm_start), where the check's
    cross-validation starts: its groups are the run's (the same near-duplicate rule), so each image keeps its fold
    and a fold whose held-out rows that run's head never trained on starts from it (crossval's rule; others from
    zero). On 24,227 photos the check's cross-validation took 2.6 s from zero, 0.2 s from them."""
    if len(shas) < LARGE_N:
        return None
    resolved = backbones.resolve(model.handle, model.image_size)
    last = warm_start.load(warm_start.project_key(resolved.backbone_id, resolved.image_size, class_names))
    if last is None:
        return None
    return WarmStart(folds=last.folds_of(warm_start.image_keys(shas), CURATE_FOLDS), heads=last.fold_heads)


# The last check of a project, so a reload (or another person) sees it without checking again.
FINDINGS_FILE = "findings.json"  # in <project>/curate/, beside the map


def save_findings(project_path: str | Path, found: Mapping[str, Any]) -> None:
    """Keep a check's findings (ProjectFindings.as_dict()) as the project's last check."""
    atomic_write_json(Path(project_path) / "curate" / FINDINGS_FILE, dict(found))


def load_findings(project_path: str | Path) -> dict[str, Any] | None:
    """The project's last check as save_findings kept it; None when there was none (or it cannot be read)."""
    data = read_json(Path(project_path) / "curate" / FINDINGS_FILE)
    needed = {f for f in ProjectFindings.__dataclass_fields__ if f not in ("n_failed", "checked_at")}
    return data if needed <= set(data) else None


def still_open(found: Mapping[str, Any], where: Mapping[str, str | None], kept: set[str]) -> dict[str, Any]:
    """The findings of a check that still need a person: an image moved, trashed or kept since is left out.

    `where`: every image now in the project, SHA-256 -> its class (None: the inbox; trashed images absent);
    `kept`: Decisions.kept(). A duplicate group that lost members is shown with the rest, if two or more remain."""
    def stays(sha: str, cls: str | None) -> bool:
        return sha in where and where[sha] == cls

    out = dict(found)
    out["label_issues"] = [r for r in found["label_issues"]
                           if stays(r["sha256"], r["given"]) and f"label:{r['sha256']}" not in kept
                           and not label_confirmed(kept, r["sha256"], r["given"])]
    out["outliers"] = [o for o in found["outliers"]
                       if stays(o["sha256"], o["class"]) and f"outlier:{o['sha256']}" not in kept]
    groups = []
    for g in found["duplicates"]:
        members = [(s, c) for s, c in zip(g["shas"], g["classes"], strict=True) if stays(s, c)]
        if len(members) < 2:
            continue
        shas, classes = [s for s, _ in members], [c for _, c in members]
        key = g["key"] if len(members) == len(g["shas"]) else group_key(shas)
        if f"duplicates:{key}" not in kept:
            groups.append({**g, "key": key, "shas": shas, "classes": classes, "cross_class": len(set(classes)) > 1})
    out["duplicates"] = groups
    return out
