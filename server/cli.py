"""classroom-server: the command line for the collector and for config work.

``init``, ``config validate|schema|docs`` work on a config tree without any server
running; the serving commands live in their own modules and are wired in here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent import __version__
from agent.config import ConfigInvalid, load_tree
from agent.config.reference import json_schema, render_markdown
from agent.errors import CliParser, UserError, cli_main, print_problems

from .starter import copy_tree, starter_tree

PROG = "classroom-server"


def cmd_init(args) -> int:
    target = Path(args.dir)
    if target.exists() and any(target.iterdir()) and not args.force:
        raise UserError(f"{target}: not empty; choose a new folder or pass --force to overwrite starter files")
    copy_tree(starter_tree(), target)
    tree = load_tree(target)  # the starter must always be valid
    print(f"{target}: wrote a starter config tree (version {tree.version}); edit site.yaml first, then "
          f"`{PROG} config validate {target}`")
    return 0


def cmd_validate(args) -> int:
    try:
        tree = load_tree(args.dir)
    except ConfigInvalid as exc:
        return print_problems(PROG, exc.errors, args.dir)
    devices = tree.device_ids()
    print(f"{args.dir}: ok: {len(tree.profiles)} key stages, {len(tree.rooms)} rooms, "
          f"{len(devices)} devices, version {tree.version}")
    return 0


def cmd_schema(args) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_docs(args) -> int:
    sys.stdout.write(render_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog=PROG, description="The classroom-safety collector and config tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("init", help="write a complete, valid starter config tree for a new school")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=cmd_init)

    config = sub.add_parser("config", help="validate a config tree, export its schema or reference")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    p = csub.add_parser("validate", help="check every file; print file:line: key: message for each problem")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_validate)
    p = csub.add_parser("schema", help="print the JSON Schema (for editor autocompletion)")
    p.add_argument("-o", "--output", metavar="FILE")
    p.set_defaults(func=cmd_schema)
    p = csub.add_parser("docs", help="print the config reference (docs/config.md)")
    p.set_defaults(func=cmd_docs)
    from .rollout import add_cli as add_rollout_commands  # config publish / rollback (docs/rollout.md)

    add_rollout_commands(csub)

    from .broker_config import add_parser as add_broker_config  # broker security (docs/broker.md)

    add_broker_config(sub)

    from .serve import add_commands as add_serve_commands  # serve, user add, enrol-token (docs/server.md)

    add_serve_commands(sub)

    from .timetable.cli import add_parser as add_timetable_commands  # timetable import / show (docs/server.md)

    add_timetable_commands(sub)

    from .notify.commands import add_parser as add_notify_commands  # notify check / test (docs/server.md)

    add_notify_commands(sub)

    from .demo import add_commands as add_demo_commands  # the two-command demo (README)

    add_demo_commands(sub)
    return parser


main = cli_main(PROG, build_parser)
