"""User-facing errors and the one-line CLI error convention shared by every command.

Like gpiozero's tools: a problem the user can fix prints one line,
``classroom-agent: error: ...`` and exits 1.  ``DEBUG=1`` in the environment shows the
full traceback instead, for developers.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Sequence


class UserError(Exception):
    """A problem the user can fix (bad flag, bad file, unreachable service).

    The message is shown as is, on one line, without a traceback.
    """


def run_cli(prog: str, main: Callable[[Sequence[str] | None], int | None],
            argv: Sequence[str] | None = None) -> int:
    """Run *main* and turn exceptions into the one-line error convention."""
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - this is the top-level handler
        if os.environ.get("DEBUG") == "1":
            traceback.print_exc()
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        # One line, always: multi-line messages are joined so scripts can grep them.
        message = " | ".join(line for line in message.splitlines() if line.strip()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        if os.environ.get("DEBUG") != "1" and not isinstance(exc, UserError):
            print(f"{prog}: (set DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def print_problems(prog: str, problems: Sequence[object], where: str | None = None,
                   consequence: str | None = None) -> int:
    """The one way a command shows config problems: each ``file:line: key: message`` on
    its own line, then ``prog: N problem(s) found[ in WHERE][; CONSEQUENCE]``.  Returns 1
    (the exit status)."""
    for problem in problems:
        print(problem, file=sys.stderr)
    tail = (f" in {where}" if where else "") + (f"; {consequence}" if consequence else "")
    print(f"{prog}: {len(problems)} problem(s) found{tail}", file=sys.stderr)
    return 1


def problems_line(problems: Sequence[object], hint: str) -> str:
    """The one-line form, for a log line or a UserError: the first problem, how many more,
    and where to see them all (*hint*, e.g. "run `classroom-server config validate DIR`")."""
    if not problems:
        return hint
    first = " | ".join(str(problems[0]).splitlines())
    more = len(problems) - 1
    return f"{first} (+{more} more; {hint})" if more else f"{first} ({hint})"


class CliParser(__import__("argparse").ArgumentParser):
    """argparse, but a bad flag is a one-line ``prog: error: ...`` with exit 1 like any other
    user error (argparse's own default prints the whole usage and exits 2)."""

    def error(self, message: str):
        import difflib
        import re

        # Python 3.11's argparse has no suggestions of its own; add a did-you-mean.
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1)
            if close:
                message = f"{message} (did you mean {close[0]!r}?)"
        raise UserError(f"{message} (see {self.prog} --help)")


def cli_main(prog: str, build_parser: Callable[[], "CliParser"]) -> Callable[[Sequence[str] | None], None]:
    """The console-script entry point for a parser whose subcommands set ``func``."""

    def _main(argv: Sequence[str] | None) -> int:
        args = build_parser().parse_args(argv)
        return args.func(args)

    def main(argv: Sequence[str] | None = None) -> None:
        sys.exit(run_cli(prog, _main, argv))

    return main
