"""Temporary: `python -m engine inspect` (being moved here from engine.curate)."""

from engine.curate.curate import add_inspect_args, run_inspect  # noqa: F401
