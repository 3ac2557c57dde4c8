"""classroom-alerts: the teacher's room alert client (terminal, desktop notification,
optional staff-room pager Pi).  Filled in by the report-button work."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from agent import __version__
from agent.errors import run_cli

PROG = "classroom-alerts"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Receive and answer report-button alerts for a room.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    build_parser().parse_args(argv)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return sys.exit(run_cli(PROG, _main, argv))
