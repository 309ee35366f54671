"""`python -m engine predict`: TensorFlow's label_image example, same flags and the same "0.912345: label" lines,
for a .tflite file, a SavedModel folder, a run folder or a bundle .zip (engine.inference.predict loads them)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.bundle import predict as bundle
from engine.data import images
from engine.inference.predict import PredictError, load_predictor


def add_predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", nargs="+", required=True, metavar="PATH",
                        help="Image file(s) or folder(s) of images to classify.")
    parser.add_argument("--model_file", required=True,
                        help="A .tflite model, a SavedModel folder, a run folder or a bundle .zip.")
    parser.add_argument("--label_file", default=None, help="labels.txt (default: the one beside the model).")
    parser.add_argument("--input_mean", type=float, default=0.0,
                        help="Subtracted from each pixel before dividing by --input_std (label_image semantics).")
    parser.add_argument("--input_std", type=float, default=255.0,
                        help="Pixels are fed as (pixel - input_mean) / input_std; the defaults give our models' "
                             "[0, 1] inputs. For uint8 models the result is quantized with the model's own scale.")
    parser.add_argument("--top_k", type=int, default=5, help="How many labels to print per image.")
    parser.add_argument("--num_threads", type=int, default=None, help="Interpreter threads (default: all cores).")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of 'probability: label' lines.")
    parser.add_argument("--threshold", type=float, default=None,
                        help="Call an image 'unknown' when its top probability is below this (default: the model "
                             "card's threshold, read off cross-validated predictions for its target precision; "
                             "0: never).")


def expand_images(inputs: list[str]) -> list[str]:
    """Files as given; folders become their image files, sorted (not recursive)."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            paths += [str(f) for f in sorted(p.iterdir()) if f.is_file() and f.suffix.lower() in images.SUPPORTED]
        else:
            paths.append(str(p))
    return paths


def run_predict(args: argparse.Namespace) -> int:
    """Print the top-k per image; 0 when every image was classified, 1 when some could not be (or no model)."""
    try:
        predictor = load_predictor(args.model_file, args.label_file, getattr(args, "num_threads", None))
    except (PredictError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.input_std == 0:
        print("error: --input_std must not be 0", file=sys.stderr)
        return 1
    predictor.input_mean, predictor.input_std = args.input_mean, args.input_std
    paths = expand_images(args.image)
    if not paths:
        print("error: no images found in " + ", ".join(args.image), file=sys.stderr)
        return 1
    threshold = predictor.threshold if getattr(args, "threshold", None) is None else float(args.threshold)
    # The top-1 probability decides "unknown", whatever --top_k prints.
    results = predictor.predict_files(paths, top_k=max(1, args.top_k))
    unknown = [bool(top) and bundle.is_unknown(top[0][1], threshold) for _, top, _ in results]
    results = [(p, top[: args.top_k] if top else top, err) for p, top, err in results]
    if args.json:
        print(json.dumps([{"path": p, "predictions": [{"label": lab, "probability": round(pr, 6)} for lab, pr in
                                                      top] if top is not None else None, "error": err,
                           "unknown": unk if err is None else None, "threshold": threshold}
                          for (p, top, err), unk in zip(results, unknown, strict=True)], indent=2))
    else:
        _print_lines(results, unknown, threshold, several=len(paths) > 1)
    return 1 if any(err for _, _, err in results) else 0


def _print_lines(results, unknown: list[bool], threshold: float, several: bool) -> None:
    for (path, top, err), unk in zip(results, unknown, strict=True):
        if err:
            print(f"error: {err}", file=sys.stderr)
            continue
        if several:
            print(path)
        for label, prob in top:
            print(f"{prob:.6f}: {label}")
        if unk:
            print(f"unknown: the top probability is below the {threshold:.6f} threshold")
