"""Temporary: `python -m engine check` (being moved here from engine.store.check)."""

import argparse

from engine.store.check import main


def add_check_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER)


def run_check(args: argparse.Namespace) -> int:
    return main(["check", *args.rest])
