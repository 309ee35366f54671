"""Where the bundle's standalone files live: engine/bundle/ (predict.py, serve.py, the Dockerfile, the
requirements, the README template and www/, the server's pages). The engine serves every bundle with them
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
BUNDLE_PAGES = "www"  # serve.py's pages (engine/bundle/www/): the one folder of engine/bundle/ that ships
