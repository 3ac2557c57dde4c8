"""classroom-alerts: the teacher's room alert client (terminal, desktop notification,
optional staff-room pager).

It subscribes to ``{prefix}/{site}/{room}/+/alert`` and ``.../status`` with the teacher's own
broker account (the ACL lets a teacher read only their rooms), keeps a small board of alerts
(:class:`AlertBoard`), shows it in the terminal (:class:`TerminalView`, or JSON lines with
``--json``), pops a desktop notification (:class:`Notifier`, ``notify-send``) and, on a Pi,
drives a pager (:class:`Pager`: gpiozero Buzzer + LED + an ack Button).  Acknowledge ("I'm
coming") and clear are ``{"cmd": "ack"|"clear", "alert_id", "by"}`` published QoS 1 on the
device's ``cmd`` topic; the agent answers by publishing the new alert state, which is what
the board shows (the device is the source of truth).

Malformed payloads are ignored with one log line; the client keeps running.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Callable, Sequence

from agent import __version__
from agent.config.credentials import read_password
from agent.config.pins import make_pin_factory
from agent.errors import UserError, run_cli
from agent.heap import freeze_startup
from agent.protocol import (DEFAULT_PREFIX, ID_RE, ProtocolError, encode, parse_broker_url, parse_message, parse_ts,
                            topic)

PROG = "classroom-alerts"
log = logging.getLogger("classroom-alerts")

# A later state never goes back to an earlier one (a QoS 1 redelivery of "raised" after
# "acknowledged" must not start the pager again).
STATE_RANK = {"raised": 0, "escalated": 1, "acknowledged": 2, "cleared": 3}
UNANSWERED = ("raised", "escalated")
KEEP_CLEARED = 20


# --------------------------------------------------------------------------- the board


@dataclass
class Alert:
    id: str
    state: str
    site: str
    room: str
    device: str
    seat: str
    ts: str
    by: str | None = None
    escalated_to: str | None = None
    history: list[str] = field(default_factory=list)

    @property
    def is_unanswered(self) -> bool:
        return self.state in UNANSWERED

    @property
    def is_open(self) -> bool:
        return self.state != "cleared"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def _escalated_to(data: dict) -> str | None:
    """Who an escalation went to, as staff know them.  The agent sends ``contacts``
    (name, role, phone) and ``escalated_to`` (usernames); a string or list in ``to`` also works."""
    contacts = data.get("contacts")
    if isinstance(contacts, list):
        names = [f"{c['name']} ({c['phone']})" if c.get("phone") else c["name"]
                 for c in contacts if isinstance(c, dict) and isinstance(c.get("name"), str)]
        if names:
            return ", ".join(names)
    value = data.get("to", data.get("escalated_to"))
    if value is None:
        return data.get("by")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        names = [v.get("name") or v.get("staff") if isinstance(v, dict) else str(v) for v in value]
        return ", ".join(n for n in names if n)
    return str(value)


class AlertBoard:
    """Alerts and device status for the watched rooms; thread-safe, no I/O."""

    def __init__(self) -> None:
        self.alerts: dict[str, Alert] = {}
        self.devices: dict[str, str] = {}
        self.lock = threading.RLock()

    def apply_alert(self, data: dict) -> tuple[Alert, bool]:
        """Apply a validated alert payload; return (alert, changed)."""
        with self.lock:
            alert = self.alerts.get(data["id"])
            state = data["state"]
            if alert is None:
                alert = Alert(id=data["id"], state=state, site=data["site"], room=data["room"],
                              device=data["device"], seat=data.get("seat") or "", ts=data["ts"], by=data.get("by"))
                self.alerts[alert.id] = alert
            elif STATE_RANK[state] < STATE_RANK[alert.state] or (
                    state == alert.state and state != "escalated"):
                return alert, False
            alert.state = state
            if state == "raised":
                alert.ts = data["ts"]
            else:
                alert.by = data.get("by") or alert.by
            if state == "escalated":
                alert.escalated_to = _escalated_to(data)
            alert.history.append(f"{state} {data['ts']}")
            self._forget_old()
            return alert, True

    def apply_status(self, device: str, data: dict) -> bool:
        with self.lock:
            changed = self.devices.get(device) != data["state"]
            self.devices[device] = data["state"]
            return changed

    def _forget_old(self) -> None:
        cleared = [a.id for a in self.alerts.values() if not a.is_open]
        for alert_id in cleared[:-KEEP_CLEARED]:
            del self.alerts[alert_id]

    def listing(self) -> list[Alert]:
        """Newest first: the numbers teachers type are positions in this list."""
        with self.lock:
            return list(reversed(self.alerts.values()))

    def newest(self, *, unanswered: bool = False) -> Alert | None:
        for alert in self.listing():
            if (alert.is_unanswered if unanswered else alert.is_open):
                return alert
        return None

    def pick(self, ref: str | None, *, unanswered: bool = False) -> Alert | None:
        """An alert by list number ('2'), id prefix ('3f2a'), or the newest when ref is empty."""
        if not ref:
            return self.newest(unanswered=unanswered)
        listing = self.listing()
        if ref.isdigit() and 1 <= int(ref) <= len(listing):
            return listing[int(ref) - 1]
        matches = [a for a in listing if a.id.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    @property
    def is_alarming(self) -> bool:
        """True while any alert is raised/escalated and nobody has said "I'm coming"."""
        with self.lock:
            return any(a.is_unanswered for a in self.alerts.values())


# --------------------------------------------------------------------------- outputs


def _local_time(ts: str) -> str:
    try:
        return parse_ts(ts).astimezone().strftime("%H:%M:%S")
    except ProtocolError:
        return ts


class TerminalView:
    """The teacher's screen: a short table, redrawn on every change; or JSON lines."""

    def __init__(self, out=None, *, as_json: bool = False, title: str = "") -> None:
        self.out = out or sys.stdout
        self.as_json = as_json
        self.title = title
        self.ansi = not as_json and hasattr(self.out, "isatty") and self.out.isatty()
        self.lock = threading.Lock()

    def emit(self, kind: str, **fields) -> None:
        if self.as_json:
            with self.lock:
                self.out.write(json.dumps({"event": kind, **fields}, sort_keys=True) + "\n")
                self.out.flush()

    def alert(self, alert: Alert, board: AlertBoard) -> None:
        if self.as_json:
            self.emit("alert", **alert.to_dict())
        else:
            self.render(board)

    def message(self, text: str) -> None:
        if self.as_json:
            self.emit("message", text=text)
        else:
            with self.lock:
                self.out.write(text + "\n")
                self.out.flush()

    def render(self, board: AlertBoard) -> None:
        if self.as_json:
            return
        lines = []
        if self.ansi:
            lines.append("\x1b[2J\x1b[H")
        lines.append(f"{PROG}  {self.title}  {datetime.now().strftime('%H:%M:%S')}")
        listing = board.listing()
        if not listing:
            lines.append("  no reports")
        else:
            lines.append(f" {'#':>2}  {'STATE':<13} {'ROOM':<10} {'SEAT':<16} {'DEVICE':<16} {'TIME':<8}  NOTE")
            for n, a in enumerate(listing, 1):
                note = ""
                if a.state == "escalated":
                    note = f"escalated to {a.escalated_to or 'the DSL'}"
                elif a.state in ("acknowledged", "cleared") and a.by:
                    note = f"by {a.by}"
                state = a.state.upper()
                if self.ansi and a.is_unanswered:
                    state = f"\x1b[1;31m{state:<13}\x1b[0m"
                else:
                    state = f"{state:<13}"
                lines.append(f" {n:>2}  {state} {a.room:<10} {a.seat[:16]:<16} {a.device:<16} "
                             f"{_local_time(a.ts):<8}  {note}")
        with board.lock:
            online = sum(1 for s in board.devices.values() if s == "online")
            offline = sorted(d for d, s in board.devices.items() if s != "online")
        lines.append(f"devices: {online} online" + (f", offline: {', '.join(offline)}" if offline else ""))
        lines.append("keys: a [N] = I'm coming (acknowledge)   c [N] = clear   l = list   q = quit")
        with self.lock:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()


class Notifier:
    """Desktop notifications via ``notify-send`` (libnotify), when it is installed."""

    def __init__(self, runner: Callable[[list[str]], object] | None = None, binary: str | None = "auto") -> None:
        self.binary = shutil.which("notify-send") if binary == "auto" else binary
        self.runner = runner or self._run

    @property
    def is_available(self) -> bool:
        return bool(self.binary)

    @staticmethod
    def _run(argv: list[str]) -> None:
        # Fire and forget: a missing desktop session must never delay the terminal view.
        try:
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            log.warning("notify-send failed: %s", exc)

    def notify(self, alert: Alert) -> None:
        if not self.binary:
            return
        where = f"{alert.seat} ({alert.device})" if alert.seat else alert.device
        if alert.state == "escalated":
            summary = f"Report in {alert.room} escalated"
            body = f"{where}: nobody answered; escalated to {alert.escalated_to or 'the DSL'}"
        else:
            summary = f"Report in {alert.room}"
            body = f"{where} pressed 'I saw something' at {_local_time(alert.ts)}. Press a to say you're coming."
        self.runner([self.binary, "--urgency=critical", f"--app-name={PROG}", "--icon=dialog-warning",
                     summary, body])



class Pager:
    """Staff-room pager: buzzer and LED on while an alert is unanswered; its button acknowledges.

    gpiozero devices with a pluggable pin factory (MockFactory in tests)."""

    def __init__(self, *, buzzer_pin=None, led_pin=None, button_pin=None, pin_factory=None,
                 on_ack: Callable[[], object] | None = None) -> None:
        from gpiozero import LED, Button, Buzzer

        self.buzzer = Buzzer(buzzer_pin, pin_factory=pin_factory) if buzzer_pin is not None else None
        self.led = LED(led_pin, pin_factory=pin_factory) if led_pin is not None else None
        self.button = Button(button_pin, pin_factory=pin_factory) if button_pin is not None else None
        if self.button is not None:
            self.button.when_pressed = lambda: on_ack and on_ack()

    @property
    def is_active(self) -> bool:
        return bool((self.buzzer and self.buzzer.is_active) or (self.led and self.led.is_lit))

    def update(self, alarming: bool) -> None:
        for dev in (self.buzzer, self.led):
            if dev is not None:
                dev.on() if alarming else dev.off()

    def close(self) -> None:
        for dev in (self.buzzer, self.led, self.button):
            if dev is not None:
                dev.close()


# --------------------------------------------------------------------------- the client



class AlertsClient:
    """MQTT side: subscribe, feed the board and the outputs, publish ack/clear."""

    def __init__(self, *, broker: str, username: str, password: str, room: str = "+", site: str = "+",
                 prefix: str = DEFAULT_PREFIX, ca_file: str | None = None, view: TerminalView | None = None,
                 notifier: Notifier | None = None, pager: Pager | None = None,
                 client_id: str | None = None) -> None:
        import paho.mqtt.client as mqtt

        for name, value in (("room", room), ("site", site)):
            if value != "+" and not ID_RE.match(value):
                raise UserError(f"--{name}: {value!r} is not a valid id (lowercase letters, digits, '-'), or '+'")
        try:
            self.host, self.port, tls = parse_broker_url(broker, "--broker")
        except ProtocolError as exc:
            raise UserError(str(exc)) from None
        self.username, self.room, self.site, self.prefix = username, room, site, prefix
        self.board = AlertBoard()
        self.view = view or TerminalView(title=f"room {room} (site {site})")
        self.notifier = notifier
        self.pager = pager
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self.changed = threading.Condition()
        self.on_alert: Callable[[Alert], None] | None = None
        self._closing = False
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"alerts-{username}-{time.monotonic_ns() % 10**8}",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(1, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    @property
    def topics(self) -> list[str]:
        base = f"{self.prefix}/{self.site}/{self.room}/+"
        return [f"{base}/alert", f"{base}/status"]

    # ------------------------------------------------------------ connection
    def start(self, timeout: float = 10.0) -> "AlertsClient":
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise UserError(f"cannot reach broker {self.host}:{self.port} ({exc.strerror or exc})") from None
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.subscribed.is_set():
            if self.refused:
                self.close()
                raise UserError(f"broker refused {self.username}: {self.refused}")
            if time.monotonic() > deadline:
                self.close()
                raise UserError(f"no answer from broker {self.host}:{self.port} within {timeout:g}s")
            self.subscribed.wait(0.05)
        return self

    def close(self) -> None:
        self._closing = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        if self.pager is not None:
            self.pager.close()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            client.disconnect()  # a wrong password will not get better by retrying
            return
        self.connected.set()
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._closing and not self.refused:
            # Never fail silently: the teacher must know alerts may not be reaching them.
            self.view.message(f"{PROG}: lost the broker ({reason_code}); reconnecting. "
                              "Alerts will not arrive until it is back.")

    # ------------------------------------------------------------ incoming
    def _on_message(self, client, userdata, msg) -> None:
        try:
            where, data = parse_message(msg.topic, msg.payload, self.prefix)
        except ProtocolError as exc:
            log.warning("ignored malformed message on %s: %s", msg.topic, exc)
            return
        try:
            self.handle(where.kind, where.device, data)
        except Exception:  # noqa: BLE001 - one bad message must never stop the client
            log.exception("error handling message on %s", msg.topic)

    def handle(self, kind: str, device: str, data: dict) -> None:
        if kind == "status":
            if self.board.apply_status(device, data):
                self.view.render(self.board)
                self.view.emit("status", device=device, state=data["state"])
            return
        if kind != "alert":
            return
        alert, changed = self.board.apply_alert(data)
        if not changed:
            return
        if self.pager is not None:
            self.pager.update(self.board.is_alarming)
        self.view.alert(alert, self.board)
        if self.notifier is not None and alert.state in UNANSWERED:
            self.notifier.notify(alert)
        with self.changed:
            self.changed.notify_all()
        if self.on_alert is not None:
            self.on_alert(alert)

    # ------------------------------------------------------------ outgoing
    def send(self, cmd: str, alert: Alert | None = None, *, alert_id: str | None = None,
             site: str | None = None, room: str | None = None, device: str | None = None,
             timeout: float = 10.0) -> dict:
        """Publish ack/clear on the device's cmd topic (QoS 1) and wait for the broker's PUBACK."""
        if alert is not None:
            alert_id, site, room, device = alert.id, alert.site, alert.room, alert.device
        payload = {"cmd": cmd, "alert_id": alert_id, "by": self.username}
        try:
            where = topic(self.prefix, site, room, device, "cmd")
        except ProtocolError as exc:
            raise UserError(str(exc)) from None
        info = self.client.publish(where, encode(payload), qos=1)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise UserError(f"could not send {cmd} for alert {alert_id} (broker not answering)")
        return payload

    def ack(self, ref: str | None = None) -> Alert | None:
        alert = self.board.pick(ref, unanswered=not ref)
        if alert is not None:
            self.send("ack", alert)
        return alert

    def clear(self, ref: str | None = None) -> Alert | None:
        alert = self.board.pick(ref)
        if alert is not None:
            self.send("clear", alert)
        return alert

    def wait_for(self, predicate: Callable[[], object], timeout: float | None) -> bool:
        deadline = None if not timeout else time.monotonic() + timeout
        with self.changed:
            while not predicate():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.changed.wait(remaining if remaining is not None else 1.0)
        return True


# --------------------------------------------------------------------------- keyboard


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


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Receive and answer report-button alerts for a room.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--room", required=True, help="room id to watch, or + for every room (DSL/office)")
    parser.add_argument("--site", default="+", help="site id (default: any)")
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtts://host:8883 or mqtt://host:1883")
    parser.add_argument("--username", required=True, help="your broker (staff) username; sent as 'by'")
    parser.add_argument("--password-file", required=True, metavar="FILE",
                        help="file with your password (or the credentials file from broker-config)")
    parser.add_argument("--ca-file", metavar="FILE", help="CA certificate for mqtts://")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (default %(default)s)")
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


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s", stream=sys.stderr)
    password = read_password(args.password_file)
    one_shot = args.ack or args.clear
    if one_shot and (args.room == "+" or not args.device or args.site == "+"):
        raise UserError("--ack/--clear need --site, --room and --device")
    view = TerminalView(as_json=args.json or args.once, title=f"room {args.room} (site {args.site})")
    notifier = None if (args.no_notify or args.json or args.once or one_shot) else Notifier()
    client_box: dict[str, AlertsClient] = {}
    pager = None
    if args.pager_buzzer or args.pager_led or args.pager_button:
        pager = Pager(buzzer_pin=_pin(args.pager_buzzer), led_pin=_pin(args.pager_led),
                      button_pin=_pin(args.pager_button), pin_factory=make_pin_factory(args.pin_factory, "--pin-factory"),
                      on_ack=lambda: client_box["c"].ack())
    client = AlertsClient(broker=args.broker, username=args.username, password=password, room=args.room,
                          site=args.site, prefix=args.prefix, ca_file=args.ca_file, view=view,
                          notifier=notifier, pager=pager)
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
        freeze_startup()  # agent/heap.py: a long-lived listener; keep full collections short
        keyboard_loop(client)
        return 0
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    return sys.exit(run_cli(PROG, _main, argv))
