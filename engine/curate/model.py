"""Which trained run a project's curation and inbox suggestions use, and the project's images embedded as it did.

The newest run with a stored head decides the backbone, image size and crop, so the findings, the map and the
suggestions see the images as that head does; the embedding cache (by SHA-256) makes a second look free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.config import runfiles as runfolder
from engine.config.backbones import DEFAULT_BACKBONE
from engine.core.fileio import read_json
from engine.features import backbones
from engine.features.embeddings import embed_files
from engine.learn.head import Head


@dataclass
class ProjectModel:
    """What a project's images are embedded with: the newest trained run's backbone, else the default."""

    handle: str
    image_size: int | None
    center_crop: bool
    run_dir: Path | None = None
    labels: list[str] = field(default_factory=list)
    l2: float | None = None  # the L2 strength the run's head was fitted with (its cross-validation chose it)


def newest_run(project) -> Path | None:
    """The newest run folder with a stored head (head.npz) and model card."""
    runs = [p.parent for p in Path(project.runs_dir).glob(f"*/{runfolder.HEAD}")
            if (p.parent / runfolder.MODEL_CARD).exists()]
    return max(runs, key=lambda p: (p / runfolder.HEAD).stat().st_mtime) if runs else None


def project_model(project) -> ProjectModel:
    run = newest_run(project)
    if run is None:
        return ProjectModel(DEFAULT_BACKBONE, None, False)
    card = read_json(run / runfolder.MODEL_CARD)
    bb = card.get("backbone") or {}
    cfg = card.get("config") or {}
    l2 = (card.get("metrics") or {}).get("l2")
    return ProjectModel(bb.get("handle") or DEFAULT_BACKBONE, bb.get("image_size"), bool(cfg.get("center_crop")),
                        run, list(card.get("labels") or []),
                        float(l2) if isinstance(l2, int | float) and l2 > 0 else None)


def load_head(run_dir: str | Path) -> Head:
    """The trained head of a run folder (<run_dir>/head.npz: kernel, bias, temperature) as engine.learn.head.Head."""
    path = Path(run_dir) / runfolder.HEAD
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: this run was trained before heads were stored; "
                                "train again to get suggestions.")
    return Head.load(path)


def embed_records(records: Sequence, model: ProjectModel,
                  progress: Callable[[dict], None] | None = None) -> tuple[np.ndarray, list[int]]:
    """Features of project ImageRecords (cached by SHA-256; only new images are embedded) and the rows that worked."""
    if not records:
        return np.zeros((0, 0), np.float32), []
    resolved = backbones.resolve(model.handle, model.image_size)
    res = embed_files([str(r.path) for r in records], [r.sha256 for r in records], resolved,
                      center_crop=model.center_crop, progress=progress)
    return res.features, res.ok
