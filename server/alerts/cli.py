"""``classroom-alerts``: the command line of the teacher's alert client.

Watch a room (``--room 5b``, or ``+`` for the DSL/office), answer alerts from the
keyboard (``a [N]`` = I'm coming, ``c [N]`` = clear, ``l``, ``q``), or one-shot:
``--once`` (the first alert as JSON), ``--ack ID`` / ``--clear ID`` (scripts, the demo).
The password comes from a file (never the command line, which ``ps`` shows).  Times are
shown in ``--timezone`` (the site's, e.g. Europe/London), else the computer's own.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import threading
from typing import Sequence

from agent import __version__
from agent.config.credentials import read_password
from agent.config.pins import make_pin_factory
from agent.errors import UserError, run_cli
from agent.protocol import DEFAULT_PREFIX

from . import PROG
from .client import AlertsClient
from .notify import Notifier
from .pager import Pager
from .view import TerminalView


def keyboard_loop(client: AlertsClient, stdin=None, stop: threading.Event | None = None) -> None:
    """Read one command per line: a [N] / c [N] / l / q.  EOF (e.g. under systemd) keeps running."""
    stdin = stdin or sys.stdin
    stop = stop or threading.Event()
    view = client.view
    for line in stdin:
        words = line.strip().split()
        if not words:
            continue
        key, ref = words[0].lower(), (words[1] if len(words) > 1 else None)
        try:
            if key in ("a", "ack", "y"):
                alert = client.ack(ref)
                view.message(f"told {alert.seat or alert.device} you're coming" if alert
                             else "nothing to acknowledge" if not ref else f"no alert {ref!r}")
            elif key in ("c", "clear"):
                alert = client.clear(ref)
                view.message(f"clearing {alert.seat or alert.device}" if alert
                             else "nothing to clear" if not ref else f"no alert {ref!r}")
            elif key in ("l", "list"):
                view.render(client.board)
            elif key in ("q", "quit", "exit"):
                stop.set()
                return
            else:
                view.message(f"unknown key {key!r}: a [N] = I'm coming, c [N] = clear, l = list, q = quit")
        except UserError as exc:
            view.message(f"{PROG}: {exc}")
    stop.wait()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Receive and answer report-button alerts for a room.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--room", required=True, help="room id to watch, or + for every room (DSL/office)")
    parser.add_argument("--site", default="+", help="site id (default: any)")
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtts://host:8883 or mqtt://host:1883")
    parser.add_argument("--username", required=True,
                        help="your broker (staff) username: the device records your answers under it")
    parser.add_argument("--password-file", required=True, metavar="FILE",
                        help="file with your password (or the credentials file from broker-config)")
    parser.add_argument("--ca-file", metavar="FILE", help="CA certificate for mqtts://")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (default %(default)s)")
    parser.add_argument("--timezone", metavar="ZONE",
                        help="show times in this IANA zone, the site's (site.yaml timezone, e.g. Europe/London); "
                             "default: this computer's")
    parser.add_argument("--json", action="store_true", help="print one JSON object per change (for scripts)")
    parser.add_argument("--once", action="store_true", help="print the first alert as JSON and exit (exit 1 on --timeout)")
    parser.add_argument("--timeout", type=float, default=0, metavar="SECONDS", help="with --once: give up after this")
    parser.add_argument("--ack", metavar="ALERT_ID", help="acknowledge this alert and exit (needs --device)")
    parser.add_argument("--clear", metavar="ALERT_ID", help="clear this alert and exit (needs --device)")
    parser.add_argument("--device", help="device of --ack/--clear")
    parser.add_argument("--no-notify", action="store_true", help="no desktop notifications")
    parser.add_argument("--pager-buzzer", metavar="PIN", help="GPIO pin of the pager buzzer")
    parser.add_argument("--pager-led", metavar="PIN", help="GPIO pin of the pager LED")
    parser.add_argument("--pager-button", metavar="PIN", help="GPIO pin of the pager's 'I'm coming' button")
    parser.add_argument("--pin-factory", metavar="NAME", help="gpiozero pin factory (lgpio, rpigpio, mock, ...)")
    return parser


def _pin(value: str | None):
    return int(value) if value is not None and value.isdigit() else value


def _timezone(name: str | None):
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        import difflib

        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
        raise UserError(f"--timezone: unknown timezone {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")) \
            from None


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s", stream=sys.stderr)
    tz = _timezone(args.timezone)
    password = read_password(args.password_file)
    one_shot = args.ack or args.clear
    if one_shot and (args.room == "+" or not args.device or args.site == "+"):
        raise UserError("--ack/--clear need --site, --room and --device")
    view = TerminalView(as_json=args.json or args.once, title=f"room {args.room} (site {args.site})", tz=tz)
    notifier = None if (args.no_notify or args.json or args.once or one_shot) else Notifier()
    client_box: dict[str, AlertsClient] = {}
    pager = None
    if args.pager_buzzer or args.pager_led or args.pager_button:
        pager = Pager(buzzer_pin=_pin(args.pager_buzzer), led_pin=_pin(args.pager_led),
                      button_pin=_pin(args.pager_button), pin_factory=make_pin_factory(args.pin_factory, "--pin-factory"),
                      on_ack=lambda: client_box["c"].ack())
    client = AlertsClient(broker=args.broker, username=args.username, password=password, room=args.room,
                          site=args.site, prefix=args.prefix, ca_file=args.ca_file, view=view,
                          notifier=notifier, pager=pager, presence=not (one_shot or args.once))
    client_box["c"] = client
    client.start()
    if args.json and not one_shot and not args.once:
        view.emit("ready", room=args.room)  # scripts can wait for this instead of guessing
    try:
        if one_shot:
            cmd = "ack" if args.ack else "clear"
            payload = client.send(cmd, alert_id=args.ack or args.clear, site=args.site, room=args.room,
                                  device=args.device)
            view.emit("sent", **payload) if args.json else view.message(f"sent {cmd} for {payload['alert_id']}")
            return 0
        if args.once:
            if not client.wait_for(lambda: client.board.alerts, args.timeout):
                raise UserError(f"no alert within {args.timeout:g}s")
            return 0
        view.render(client.board)
        # Start-up is over: collect once, then move everything alive out of the collector's
        # way (gc.freeze), so no full collection walking the whole start-up heap (tens of ms)
        # lands on an alert.  The agent does the same (its heap.freeze_startup, not part of
        # the contract this client may import).
        gc.collect()
        gc.freeze()
        keyboard_loop(client)
        return 0
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    return sys.exit(run_cli(PROG, _main, argv))
