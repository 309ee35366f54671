"""`python -m engine export-extra --run_dir RUN --extra tfjs coreml`: make formats on request from a finished run's
SavedModel (TensorFlow.js, Core ML), after the bundle and without holding it back. The Export page starts the same
command in the background; here it runs in the foreground with a progress line."""

from __future__ import annotations

import argparse
import sys

EXTRA_NAMES = ("tfjs", "coreml")  # engine.export.extras.EXTRAS (tested equal): that module imports too much for --help


def add_export_extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run_dir", required=True, help="A finished run folder (python -m engine train --run_dir, "
                        "or the app's; it holds saved_model/ and labels.txt).")
    parser.add_argument("--extra", nargs="+", required=True, choices=EXTRA_NAMES,
                        help="tfjs: a TensorFlow.js graph model in RUN/tfjs/; coreml: RUN/model.mlpackage "
                             "(needs coremltools).")


def _progress(fraction: float, message: str) -> None:
    sys.stderr.write(f"\r{fraction:4.0%}  {message[:100]:<100}")
    sys.stderr.flush()


def run_export_extra(args: argparse.Namespace) -> int:
    from engine.export import extras  # why: TensorFlow and the converters load only when something is made
    from engine.runs.extras import record_process  # why: as above

    failed = 0
    for name in dict.fromkeys(args.extra):
        record_process(args.run_dir, name)
        try:
            status = extras.make_extra(args.run_dir, name, _progress)
        except Exception:  # noqa: BLE001 - make_extra stored the message in the user's words; show that one
            sys.stderr.write("\n")
            print(f"error: {extras.stored_status(args.run_dir, name)['message']}", file=sys.stderr)
            failed += 1
            continue
        sys.stderr.write("\n")
        print(f"{status['message']} Files: {', '.join(status['files'])}")
    return 1 if failed else 0
