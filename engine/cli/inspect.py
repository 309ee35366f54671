"""`python -m engine inspect`: label issues, near-duplicates and outliers of an image folder, printed or as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.data.dataset import DatasetError
from engine.features.backbones import BackboneError


def add_inspect_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image_dir", required=True, help="Folder with one subfolder of images per class.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object: label_issues, "
                        "near_duplicates, outliers (each most suspicious first).")
    parser.add_argument("--tfhub_module", default=None, help="Backbone (default: efficientnet-lite0).")
    parser.add_argument("--center_crop", action="store_true", help="Embed as training with --center_crop does.")


def run_inspect(args: argparse.Namespace) -> int:
    from engine.curate.findings import inspect_image_dir  # why: SciPy and the curate engine load for this command only

    try:
        report = inspect_image_dir(args.image_dir, backbone=args.tfhub_module, center_crop=args.center_crop)
    except (DatasetError, BackboneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: report[k] for k in ("label_issues", "near_duplicates", "outliers")}))
    else:
        print_findings(report)
    return 0


def print_findings(report: dict[str, Any], limit: int = 20) -> None:
    """Human-readable summary for the terminal (the command's default output)."""
    out = []
    li, nd, ol = report["label_issues"], report["near_duplicates"], report["outliers"]
    out.append(f"Label issues: {len(li)}")
    out += [f"  {r['score']:.3f}  {r['path']}  labelled {r['given']}, looks like {r['suggested']}" for r in li[:limit]]
    out.append(f"Near-duplicate groups: {len(nd)}")
    out += ["  " + "  |  ".join(g) for g in nd[:limit]]
    out.append(f"Outliers: {len(ol)}")
    out += [f"  {r['reason']:16s} {r['score']:.2f}  {r['path']}" for r in ol[:limit]]
    if any(len(x) > limit for x in (li, nd, ol)):
        out.append(f"(first {limit} of each; --json prints all)")
    print("\n".join(out))
