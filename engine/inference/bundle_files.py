"""Where the bundle's standalone files live: engine/bundle/ (predict.py, serve.py, the Dockerfile, the
requirements, the README template, www/, the server's pages, and web/, the in-browser demo with its vendored ONNX
Runtime Web). The engine serves every bundle with them
(engine.inference.serve) and the export copies them into every bundle (engine.export.bundle); they themselves never
import the engine.

The requirements are ranges, so that the bundle installs on the user's Python rather than only on ours: from the
oldest versions that predict.py and serve.py were run with (tests/test_cli.py::
test_the_bundle_works_with_the_lowest_versions_..., opt-in) to below the next major.
"""

from __future__ import annotations

from pathlib import Path

BUNDLE_SOURCES = Path(__file__).resolve().parents[1] / "bundle"
BUNDLE_README = "README.md"  # a string.Template, filled in from the model card
BUNDLE_PAGES = "www"  # serve.py's pages (engine/bundle/www/): its own files ship, not its folders
BUNDLE_WEB = "web"  # the in-browser demo (engine/bundle/web/): it ships with its folders (the vendored runtime)
# A source kept gzip-compressed in the repository (the vendored runtime's 15 MB .wasm) ships unpacked, under its name
# less this suffix; serve.py, run from engine/bundle/, serves it as it is with Content-Encoding: gzip.
GZIPPED = ".gz"
