"""classroom-agent: the command line on a device.

Subcommands are small functions here; the long-running parts live in their own
modules.  Errors follow the one-line convention in agent/errors.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Sequence

from . import __version__
from .config import ConfigInvalid, ConfigTree, effective_policy, load_bootstrap, load_tree
from .errors import CliParser, UserError, run_cli

PROG = "classroom-agent"


def _parse_when(text: str | None) -> datetime:
    if not text:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--at: {text!r} is not a date and time (use ISO 8601, e.g. 2026-11-24T09:30+00:00)") from None
    if moment.tzinfo is None:
        raise UserError(f"--at: {text!r} has no timezone (add +00:00 or Z)")
    return moment


def cmd_check_config(args) -> int:
    """Validate the device bootstrap file and, if given, a config tree or compiled config."""
    problems: list[str] = []
    bootstrap = None
    try:
        bootstrap = load_bootstrap(args.file)
    except ConfigInvalid as exc:
        problems += [str(e) for e in exc.errors]
    tree = None
    if args.tree:
        try:
            tree = load_tree(args.tree)
        except ConfigInvalid as exc:
            problems += [str(e) for e in exc.errors]
    if bootstrap is not None and tree is not None:
        try:
            tree.find_device(bootstrap.device)
        except KeyError as exc:
            from .config.yamlsrc import load_yaml

            line = load_yaml(args.file)[0].line_of(("device",))
            problems.append(f"{args.file}:{line}: device: {exc.args[0]} in {args.tree}")
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{PROG}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.file}: ok" + (f" ({bootstrap.device} in tree {args.tree}, version {tree.version})" if tree else ""))
    return 0


def _load_any(path: str) -> ConfigTree:
    """A config tree directory, or a compiled per-device JSON file."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        return load_tree(p)
    try:
        return ConfigTree.from_dict(json.loads(p.read_text()))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read compiled config: {exc}") from None


def cmd_policy(args) -> int:
    try:
        tree = _load_any(args.config)
    except ConfigInvalid as exc:
        raise UserError(f"{args.config}: config is invalid ({len(exc.errors)} problem(s)); "
                        f"run `classroom-server config validate {args.config}`") from None
    try:
        policy = effective_policy(tree, args.device, _parse_when(args.at))
    except KeyError as exc:
        raise UserError(f"--device: {exc.args[0]}") from None
    print(json.dumps(policy.to_dict(), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog=PROG, description="The classroom-safety agent for a classroom device.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check-config", help="validate the device's agent.yaml (and optionally a config tree)")
    p.add_argument("file", metavar="FILE", help="agent.yaml to check")
    p.add_argument("--tree", metavar="DIR", help="also check this config tree and that it knows the device")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("policy", help="print what a device must enforce at a moment")
    p.add_argument("--config", required=True, metavar="DIR|FILE", help="config tree or compiled device config")
    p.add_argument("--device", required=True, metavar="ID")
    p.add_argument("--at", metavar="ISO8601", help="moment to evaluate (default: now)")
    p.set_defaults(func=cmd_policy)
    return parser



def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    return sys.exit(run_cli(PROG, _main, argv))
