"""Layer 3, projects on disk: the workspace of projects, each a plain image_dir layout plus a SQLite index
(index), with its names, errors and records, moves and undo, class edits, sorters' leases, adding images (ingest)
and the folder-against-index check. `workspace.Project` puts them together for the app and the CLI."""
