"""classroom-agent: the command line on a device.

Subcommands are small functions here; the long-running parts live in their own
modules.  Errors follow the one-line convention in agent/errors.py.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from . import __version__
from .config import ConfigInvalid, ConfigTree, effective_policy, load_bootstrap, load_tree
from .errors import CliParser, UserError, cli_main, print_problems, problems_line

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
    if bootstrap is not None and bootstrap.staff_pin_file:
        problems += _pin_file_problems(bootstrap.staff_pin_file)
    if bootstrap is not None and tree is not None:
        try:
            tree.find_device(bootstrap.device)
        except KeyError as exc:
            from .config.yamlsrc import load_yaml

            line = load_yaml(args.file)[0].line_of(("device",))
            problems.append(f"{args.file}:{line}: device: {exc.args[0]} in {args.tree}")
    if problems:
        return print_problems(PROG, problems)
    print(f"{args.file}: ok" + (f" ({bootstrap.device} in tree {args.tree}, version {tree.version})" if tree else ""))
    return 0


def _pin_file_problems(path: str) -> list[str]:
    """The staff PIN file's problems, as config problem lines (none if it is absent: no PIN)."""
    from .desktop.pin import read_pin_file

    try:
        read_pin_file(path)
    except FileNotFoundError:
        return []
    except PermissionError:
        return [f"{path}:1: staff_pin_file: cannot read it (run check-config as root or as the agent's user)"]
    except OSError as exc:
        return [f"{path}:1: staff_pin_file: {exc.strerror or exc}"]
    except ValueError as exc:
        return [f"{path}:1: staff_pin_file: {str(exc).removeprefix(f'{path}: ')}"]
    return []


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


def load_policy(args):
    """(tree, effective policy) for ``--config``, ``--device`` and ``--at``; one-line errors."""
    try:
        tree = _load_any(args.config)
    except ConfigInvalid as exc:
        raise UserError(problems_line(exc.errors, f"run `classroom-server config validate {args.config}`")) from None
    try:
        return tree, effective_policy(tree, args.device, _parse_when(getattr(args, "at", None)))
    except KeyError as exc:
        raise UserError(f"--device: {exc.args[0]}") from None


def cmd_policy(args) -> int:
    _, policy = load_policy(args)
    print(json.dumps(policy.to_dict(), indent=2, default=str))
    return 0


# --------------------------------------------------------------------------- the running agent (report button)


def _setup_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _bootstrap(path: str):
    try:
        return load_bootstrap(path)
    except ConfigInvalid as exc:
        raise UserError(problems_line(exc.errors, f"run `classroom-agent check-config {path}`")) from None


def cmd_run(args) -> int:
    """Run the agent in the foreground until SIGTERM/SIGINT (systemd runs exactly this)."""
    from .core.heap import freeze_startup
    from .core.runtime import Runtime, default_components
    from .signals import StopSignals

    _setup_logging(args.verbose)
    bootstrap = _bootstrap(args.config)
    overrides = {}
    if args.simulate:
        overrides.update(pin_factory="mock", screen_backend="headless")
    if args.pin_factory:
        overrides["pin_factory"] = args.pin_factory
    if args.screen:
        overrides["screen_backend"] = args.screen
    if overrides:
        bootstrap = bootstrap.model_copy(update=overrides)
    stop = StopSignals()  # agent/signals.py: why not an Event set from a handler
    # A simulated device (demo, bench) runs only the report path: no dnsmasq, browser
    # policies, locks or process guard touching the machine it runs on.
    if args.simulate:
        runtime = Runtime(bootstrap)
    else:
        from .policy.sessions import SessionsComponent

        sessions = SessionsComponent()  # who is at the device: for the runtime and the desktop backends
        runtime = Runtime(bootstrap, sessions=sessions, components=default_components(sessions))
    runtime.start()
    freeze_startup()  # agent/core/heap.py: no 40 ms collection in the middle of a press
    try:
        stop.wait()
    finally:
        runtime.stop()  # publishes the retained offline status
    return 0


def _control_request(args, req: dict) -> dict:
    from .core.control import request

    path = args.socket
    if path is None:
        path = _bootstrap(args.config).control_socket if args.config else "/run/classroom-agent/control.sock"
    try:
        reply = request(path, req)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the agent at {path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}") from None
    if not reply.get("ok"):
        raise UserError(f"agent refused: {reply.get('error', 'no reason given')}")
    return reply


def cmd_press(args) -> int:
    _control_request(args, {"op": "press", "source": args.source})
    print("pressed")
    return 0


def cmd_status(args) -> int:
    reply = _control_request(args, {"op": "status"})
    print(json.dumps(reply.get("status"), indent=2, default=str))
    return 0


def cmd_hash_pin(args) -> int:
    import getpass

    from .desktop.pin import MAX_DIGITS, MIN_DIGITS, hash_pin

    pin = args.pin if args.pin is not None else getpass.getpass(f"Staff PIN ({MIN_DIGITS}-{MAX_DIGITS} digits): ")
    try:
        hashed = hash_pin(pin)
    except ValueError as exc:
        raise UserError(f"PIN: {exc}") from None
    if args.out is None:
        print(hashed)
        return 0
    from .files import atomic_write

    try:
        atomic_write(args.out, hashed + "\n", 0o600)
    except OSError as exc:
        raise UserError(f"--out: cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"wrote {args.out} (mode 0600); make the agent's user its owner: chown classroom-agent {args.out}")
    return 0



def cmd_enrol(args) -> int:
    """Redeem a one-time enrolment token for this device's credentials (agent/uplink/enrol.py)."""
    import sys

    from .uplink.enrol import DEFAULT_CREDENTIALS, check_collector_url, credentials_text, redeem, \
        resolve_owner, write_credentials

    bootstrap = _bootstrap(args.config) if args.config else None
    collector = check_collector_url(args.collector or (str(bootstrap.collector_url) if bootstrap else ""))
    if args.token is not None and args.token_file is not None:
        raise UserError("give --token or --token-file, not both")
    if args.token_file == "-":
        token = sys.stdin.readline().strip()
    elif args.token_file:
        try:
            token = open(args.token_file, encoding="utf-8").readline().strip()
        except OSError as exc:
            raise UserError(f"--token-file: {args.token_file}: {exc.strerror}") from None
    elif args.token is not None:
        token = args.token
    else:
        raise UserError("--token is required (the one `classroom-server enrol-token` printed)")
    path = args.credentials or (bootstrap.credentials if bootstrap else DEFAULT_CREDENTIALS)
    owner = resolve_owner(args.owner)  # before the token is used up
    ca_file = args.ca_file or (bootstrap.ca_file if bootstrap else None)
    data = redeem(collector, token, ca_file=ca_file)
    device = args.device or (bootstrap.device if bootstrap else None)
    if device and data["username"] != device:
        raise UserError(f"the token was for {data['username']!r}, but this device is {device!r}; nothing was "
                        f"written; ask a technician for a token for {device}")
    write_credentials(path, credentials_text(data, collector), owner)
    where = f" (room {data['room']})" if data.get("room") else ""
    who = f", owner {owner[2]}" if owner else ""
    print(f"{data['username']}: enrolled{where}; credentials written to {path} (0600{who})")
    if bootstrap is not None and data.get("broker_url") and data["broker_url"] != str(bootstrap.broker_url):
        print(f"note: the collector says the broker is {data['broker_url']}, agent.yaml says {bootstrap.broker_url}")
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

    p = sub.add_parser("run", help="run the agent in the foreground (SIGTERM stops it cleanly)")
    p.add_argument("--config", required=True, metavar="FILE", help="the device's agent.yaml")
    p.add_argument("--pin-factory", metavar="NAME", help="gpiozero pin factory (mock for a simulated device)")
    p.add_argument("--screen", choices=("auto", "wayland", "swaylock", "x11", "headless"), help="override screen_backend")
    p.add_argument("--simulate", action="store_true",
                   help="a simulated device: mock pins, headless screen, report path only (demo, bench)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)

    for name, func, text in (("press", cmd_press, "press the report button on the running agent"),
                             ("status", cmd_status, "show the running agent's state")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--socket", metavar="PATH", help="control socket (default: from --config, else "
                                                         "/run/classroom-agent/control.sock)")
        p.add_argument("--config", metavar="FILE", help="agent.yaml to take control_socket from")
        if name == "press":
            p.add_argument("--source", choices=("control", "key"), default="control",
                           help="what pressed it ('key' for the desktop's report key binding)")
        p.set_defaults(func=func)

    p = sub.add_parser("enrol", help="redeem a one-time enrolment token: write this device's credentials (0600)")
    p.add_argument("--collector", metavar="URL", help="classroom-server URL (default: agent.yaml collector_url)")
    p.add_argument("--token", metavar="TOKEN", help="the token `classroom-server enrol-token` printed")
    p.add_argument("--token-file", metavar="FILE", help="read the token from FILE ('-': stdin) instead")
    p.add_argument("--config", metavar="FILE", help="the device's agent.yaml: credentials path, device id, CA file")
    p.add_argument("--credentials", metavar="FILE",
                   help="where to write (default: agent.yaml credentials, else /etc/classroom-safety/credentials.yaml)")
    p.add_argument("--device", metavar="ID", help="refuse a token for any other device (default: agent.yaml device)")
    p.add_argument("--owner", metavar="USER", help="who owns the file when run as root (default classroom-agent)")
    p.add_argument("--ca-file", metavar="FILE", help="CA certificate of the collector, if not a public CA")
    p.set_defaults(func=cmd_enrol)

    p = sub.add_parser("hash-pin", help="hash a staff PIN (6-12 digits) for the staff PIN file")
    p.add_argument("--pin", metavar="DIGITS", help="the PIN (default: ask without echo)")
    p.add_argument("--out", metavar="FILE", help="write the hash to FILE, mode 0600 (the staff_pin_file), "
                                                  "instead of printing it")
    p.set_defaults(func=cmd_hash_pin)

    from .filter.commands import add_parser as add_filter_parser  # filter show / filter check
    add_filter_parser(sub, load_policy)
    return parser


main = cli_main(PROG, build_parser)
