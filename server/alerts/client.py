"""The MQTT side of classroom-alerts: subscribe to the rooms' alert and status topics,
feed the board and the outputs, answer on the device's reply topic.

* **Late joiners see the truth.**  Each device's latest alert transition is retained on
  the broker, so the open alerts of the watched rooms arrive the moment the client
  subscribes (at start and after every reconnection), collector down or not.
* **Answers in the teacher's own name.**  ack/clear go to
  ``{prefix}/{site}/{room}/{device}/reply/{username}`` as ``{"cmd", "alert_id"}``: the broker
  lets an account publish only under its own username, and the device takes ``by`` from
  that level.  (``cmd`` is the collector's alone.)
* **Presence.**  Watching one room of one site, the client says so, retained, on
  ``{prefix}/{site}/{room}/_watch/{username}`` (``watching``), with a Last Will saying
  ``gone`` (and says ``gone`` itself on a clean exit), so the collector knows which rooms
  have nobody watching.  An office/DSL client watching every room (``--room +``) is not a
  room's receiver and says nothing.
* **Fast recovery.**  A lost broker connection is said on the teacher's screen at once
  (alerts may not be arriving); paho reconnects with a short, jittered, bounded back-off
  (``RECONNECT_MAX`` seconds at most between tries).  A refused login is not retried.

Malformed payloads are ignored with one log line; the client keeps running.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from typing import Callable

from agent.errors import UserError
from agent.protocol import (DEFAULT_PREFIX, ID_RE, ProtocolError, encode, now_ts, parse_broker_url, parse_message,
                            reply_topic, watch_topic)

from . import PROG
from .board import UNANSWERED, Alert, AlertBoard
from .notify import Notifier
from .pager import Pager
from .view import TerminalView

log = logging.getLogger(PROG)

RECONNECT_MIN = (0.05, 0.2)   # seconds before the first retry (jittered); doubling from there ...
RECONNECT_MAX = 2.0           # ... up to between half this and this
CONNECT_TIMEOUT = 2.0


class AlertsClient:
    """MQTT side: subscribe, feed the board and the outputs, publish ack/clear."""

    def __init__(self, *, broker: str, username: str, password: str, room: str = "+", site: str = "+",
                 prefix: str = DEFAULT_PREFIX, ca_file: str | None = None, view: TerminalView | None = None,
                 notifier: Notifier | None = None, pager: Pager | None = None,
                 client_id: str | None = None, presence: bool = True) -> None:
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
        self.client.connect_timeout = CONNECT_TIMEOUT
        self._jitter_backoff()
        # Presence: only a client watching one room of one site is that room's receiver.
        self.watch = None
        if presence and room != "+" and site != "+":
            try:
                self.watch = watch_topic(prefix, site, room, username)
            except ProtocolError as exc:
                raise UserError(f"--username: {exc}") from None
            self.client.will_set(self.watch, self._presence("gone"), qos=1, retain=True)
        elif presence and room != "+":
            log.warning("--site not given: this client does not tell the collector it is watching room %s", room)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _jitter_backoff(self) -> None:
        low = random.uniform(*RECONNECT_MIN)
        self.client.reconnect_delay_set(low, max(low, RECONNECT_MAX * random.uniform(0.5, 1.0)))

    @staticmethod
    def _presence(state: str) -> bytes:
        return encode({"state": state, "ts": now_ts(), "client": PROG})

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
            if self.watch is not None and self.connected.is_set():
                # A clean disconnect sends no Last Will: say "gone" ourselves.
                self.client.publish(self.watch, self._presence("gone"), qos=1, retain=True).wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass
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
        if self.watch is not None:
            client.publish(self.watch, self._presence("watching"), qos=1, retain=True)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self._jitter_backoff()
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
        """Publish ack/clear on the device's reply topic in this account's name (QoS 1) and
        wait for the broker's PUBACK.  The device confirms by publishing the new state."""
        if alert is not None:
            alert_id, site, room, device = alert.id, alert.site, alert.room, alert.device
        payload = {"cmd": cmd, "alert_id": alert_id}
        try:
            where = reply_topic(self.prefix, site, room, device, self.username)
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
