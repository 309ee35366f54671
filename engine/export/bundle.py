"""bundle.zip: the exported files with engine/bundle/'s (predict.py, serve.py, requirements, Dockerfile, the
server's pages in www/, the in-browser demo in web/, and README.md filled in from the model card), so the model runs
anywhere without this engine or TensorFlow."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import string
import time
import zipfile
from pathlib import Path
from typing import Any

from engine.config import runfiles as rf
from engine.config import variants
from engine.core.cache import cache_root
from engine.core.fileio import atomic_path, made_once
from engine.core.files import has_hidden_part, is_hidden
from engine.export.card import BUNDLE_RESAMPLING, TRAINING_RESAMPLING
from engine.inference.bundle_files import BUNDLE_PAGES, BUNDLE_README, BUNDLE_SOURCES, BUNDLE_WEB, GZIPPED

log = logging.getLogger(__name__)


def bundle_readme(card: dict[str, Any]) -> str:
    """engine/bundle/README.md filled in from the model card."""
    labels = card.get("labels") or []
    rows = "\n".join(
        f"| `{s['file']}` | {s['bytes'] / 1e6:.1f} MB | {s['input']} | {s['output']} | "
        f"{_pct(s.get('agreement_top1_vs_keras'))} | {_pct(s.get('val_accuracy'))} |"
        for s in (card.get("tflite") or {}).values())
    crop = ("yes: images more than 1.5x longer than wide (or wider than long) are cropped to a centred square "
            "first" if card.get("preprocessing", {}).get("center_crop") else "no")
    template = string.Template((BUNDLE_SOURCES / BUNDLE_README).read_text(encoding="utf-8"))
    return template.substitute(
        n_classes=len(labels), engine_version=card.get("engine_version", ""), created=card.get("created", ""),
        labels=", ".join(labels), rows=rows, size=card.get("image_size"), crop=crop,
        training_resampling=TRAINING_RESAMPLING, bundle_resampling=BUNDLE_RESAMPLING)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def zip_file(zf: zipfile.ZipFile, path: Path, name: str) -> None:
    """A file into a zip: weights (.tflite, .onnx, TF.js .bin shards, a checkpoint's data) stored as they are, since
    they barely compress (~7%) and deflating 30 MB of them costs seconds; the rest deflated."""
    weights = path.suffix in (".tflite", ".onnx", ".bin") or path.name.startswith("variables.data")
    zf.write(path, name, compress_type=zipfile.ZIP_STORED if weights else zipfile.ZIP_DEFLATED)


def zip_text(zf: zipfile.ZipFile, name: str, text: str | bytes, date_time: tuple[int, ...] | None = None) -> None:
    """Bytes made in memory into a zip, deflated, readable by all (writestr's default is 0600), dated now unless
    given."""
    info = zipfile.ZipInfo(name, date_time=date_time or time.localtime()[:6])
    info.external_attr, info.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
    zf.writestr(info, text)


def bundle_sources() -> list[Path]:
    """The files of engine/bundle/ that ship, those of its www/ folder (the server's pages) and all of its web/
    folder (the in-browser demo and its vendored runtime): by name, never a __pycache__ (or any other folder) left by
    running them, nor a hidden file or folder."""
    files = [p for p in BUNDLE_SOURCES.iterdir() if p.is_file() and not is_hidden(p.name)]
    pages = BUNDLE_SOURCES / BUNDLE_PAGES
    if pages.is_dir():
        files += [p for p in pages.iterdir() if p.is_file() and not is_hidden(p.name)]
    web = BUNDLE_SOURCES / BUNDLE_WEB
    if web.is_dir():
        files += [p for p in web.rglob("*") if p.is_file() and not has_hidden_part(p.relative_to(web).parts)
                  and "__pycache__" not in p.relative_to(web).parts]
    return sorted(files)


def shipped_name(source: Path) -> str:
    """A bundle source's name in the bundle: its path below engine/bundle/, less .gz for a file kept compressed."""
    name = source.relative_to(BUNDLE_SOURCES).as_posix()
    return name.removesuffix(GZIPPED)


def shipped_bytes(source: Path) -> bytes:
    """A bundle source's content in the bundle: unpacked when it is kept gzip-compressed."""
    data = source.read_bytes()
    return gzip.decompress(data) if source.name.endswith(GZIPPED) else data


def _sources_zip() -> Path:
    """engine/bundle/'s files as every bundle ships them (less the README, filled in per model), zipped once per
    content on this machine and copied into each bundle: deflating the vendored 15 MB .wasm alone takes a second."""
    sources = [p for p in bundle_sources() if shipped_name(p) != BUNDLE_README]
    digest = hashlib.sha256(str(BUNDLE_SOURCES).encode())
    for p in sources:
        digest.update(f"\0{shipped_name(p)}\0".encode())
        digest.update(p.read_bytes())
    path = cache_root() / "bundle-sources" / f"{digest.hexdigest()[:20]}.zip"
    with made_once(path) as to_make:
        if to_make:
            with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for p in sources:
                    zip_text(zf, shipped_name(p), shipped_bytes(p))
    return path


def write_bundle(out_dir: str | Path, bundle_path: str | Path) -> Path:
    """Zip an export folder's files with the bundle's own; atomically, so a bundle that exists is complete."""
    out, bundle = Path(out_dir), Path(bundle_path)
    card_path = out / rf.MODEL_CARD
    if not card_path.exists() or not (out / rf.LABELS).exists():
        raise FileNotFoundError(f"{out} has no exported model (model_card.json, labels.txt); export it first")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    models = sorted(out / name for name in (*variants.FILES, rf.ONNX))
    files = [p for p in [card_path, out / rf.LABELS, *models] if p.exists()]
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(bundle) as tmp:
        shutil.copyfile(_sources_zip(), tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            for p in files:
                zip_file(zf, p, p.name)
            for p in sorted((out / rf.SAVED_MODEL).rglob("*")):
                if p.is_file():
                    zip_file(zf, p, p.relative_to(out).as_posix())
            zip_text(zf, BUNDLE_README, bundle_readme(card))
    log.info("Bundle written: %s (%.1f MB)", bundle, bundle.stat().st_size / 1e6)
    return bundle
