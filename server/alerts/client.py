"""The MQTT side of classroom-alerts: subscribe to the rooms' alert and status topics,
feed the board and the outputs, publish ack/clear on a device's ``cmd`` topic.

Malformed payloads are ignored with one log line; the client keeps running.  A lost
broker connection is said on the teacher's screen at once (alerts may not be arriving)
and paho reconnects by itself; a refused login is not retried.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import Callable

from agent.errors import UserError
from agent.protocol import (DEFAULT_PREFIX, ID_RE, ProtocolError, encode, parse_broker_url, parse_message,
                            topic)

from . import PROG
from .board import UNANSWERED, Alert, AlertBoard
from .notify import Notifier
from .pager import Pager
from .view import TerminalView

log = logging.getLogger(PROG)


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
