"""The agent's MQTT link: one paho-mqtt 2.x client (MQTT v5) to the school's broker.

Owns the connection, never the meaning of messages (topics and payloads come from
agent/protocol.py).  mqtt-io idioms: a retained ``status`` topic that says ``online``
on connect, and the same topic as the Last Will saying ``offline`` so the server knows
when a device drops without a goodbye.

Sending goes through the durable outbox (agent/uplink/outbox.py): ``send()`` stores the
message, then publishes it; the PUBACK (``on_publish``) deletes the row.  Rows that
paho is not already carrying (written while offline, or left by a previous run of the
agent) are published again, oldest first, each time the connection comes up.

The report's path to the teacher is kept short (DESIGN.md performance targets):

- On a plain-TCP link the thread that sends writes its message to the socket itself
  (:class:`_Client`), instead of waking paho's network thread to write it.
- Bookkeeping waits until the message is on its way (``later``: the runtime's
  ``defer``, ``SETTLE_SECONDS`` on): the PUBACK's delete, and the fsync that makes an
  unacknowledged row survive a power cut, run then, in one go, and not while the
  broker and the teacher's client are busy with the alert.  A row the broker has
  acknowledged by then is never fsynced at all (the broker has it); one it has not is,
  and so is every unacknowledged row the moment the connection drops.  Without
  ``later`` (tools, tests of the link alone) both happen at once.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable

import paho.mqtt.client as mqtt

from .. import __version__, protocol
from .outbox import HEARTBEAT, Outbox, priority_for

log = logging.getLogger(__name__)

# How long bookkeeping waits after a send (see the module docstring).  A PUBACK on a
# school LAN takes a millisecond or two; an SD card's fsync takes 10-20 ms on its own.
SETTLE_SECONDS = 0.05


class _Client(mqtt.Client):
    """paho's client, made safe to write from the thread that publishes.

    The link runs paho's ``loop_forever()`` on its own thread instead of ``loop_start()``,
    so paho's ``publish()`` writes the packet on the caller's thread (paho's "no network
    thread" mode) rather than waking a network thread to do it.  paho's writer,
    ``loop_write()``, is not safe on two threads at once (a partial write is put back at
    the head of the queue), so every call of it, paho's and ours, holds ``_write_lock``.
    Reads stay on the network thread: a TCP socket may be read on one thread while
    written on another, an OpenSSL one may not, so TLS links use ``loop_start()``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._write_lock = threading.RLock()

    def loop_write(self) -> mqtt.MQTTErrorCode:
        with self._write_lock:
            return super().loop_write()

    def write_now(self) -> None:
        """Write what ``publish()`` left queued: it does not write while the network
        thread is inside one of our callbacks.  Never waits: a network thread that is
        writing writes our packet too, and one that has just finished sees it queued on
        its next turn."""
        if self._write_lock.acquire(blocking=False):
            try:
                if self.want_write():
                    super().loop_write()
            finally:
                self._write_lock.release()


class Link:
    """MQTT connection for one device.

    ``on_command(cmd: dict)`` receives validated ``cmd`` payloads (paho's thread; post
    them to the runtime).  ``send(kind, payload)`` is thread-safe and returns the
    outbox row id.  ``is_connected``; ``connected`` is a threading.Event for tests.
    """

    def __init__(self, *, broker_url: str, prefix: str, site: str, room: str, device: str,
                 outbox: Outbox, on_command: Callable[[dict], None] | None = None,
                 username: str | None = None, password: str | None = None, ca_file: str | None = None,
                 config_version: Callable[[], str] | str = "", agent_version: str = __version__,
                 keepalive: int = 30, later: Callable[..., Any] | None = None):
        self.host, self.port, self.tls = protocol.parse_broker_url(broker_url, "broker_url")
        self.prefix, self.site, self.room, self.device = prefix, site, room, device
        self.outbox = outbox
        self.on_command = on_command or (lambda cmd: None)
        self.agent_version = agent_version
        self._config_version = config_version
        self.keepalive = keepalive
        self._later = later
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        # Set on SUBACK for our cmd topic: "connected" alone does not mean commands arrive yet.
        self.subscribed = threading.Event()
        # _send_lock orders outbox writes with publishes and the resend.  paho calls
        # on_publish while holding its own locks, so on_publish must never wait for
        # _send_lock (that deadlocks with a publish in progress): it only takes _map_lock,
        # which is never held across a call into paho.
        self._send_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._inflight: dict[int, int] = {}   # paho mid -> outbox row id
        self._rows_inflight: set[int] = set()
        self._early: dict[int, Any] = {}      # PUBACKs that beat the mapping of their mid
        self._untracked: set[int] = set()     # mids of status messages (not in the outbox)
        self._acked_rows: list[int] = []      # acknowledged, to delete when settling
        self._settle_due = False
        self.acked = 0
        self._stopping = False
        self.ignored_commands = 0

        self._network_thread: threading.Thread | None = None  # paho's, seen in on_connect
        self.client = _Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=device, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if self.tls:
            self.client.tls_set(ca_certs=ca_file)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.will_set(self.topic("status"), protocol.encode(self._status("offline")),
                             qos=protocol.QOS["status"], retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # ------------------------------------------------------------------ basics
    def topic(self, kind: str) -> str:
        return protocol.topic(self.prefix, self.site, self.room, self.device, kind)

    @property
    def config_version(self) -> str:
        v = self._config_version
        return v() if callable(v) else v

    @property
    def is_connected(self) -> bool:
        return self.client.is_connected()

    def _status(self, state: str) -> dict[str, Any]:
        return {"state": state, "ts": protocol.now_ts(), "agent_version": self.agent_version,
                "config_version": self.config_version}

    def start(self) -> None:
        """Connect in the background; paho retries with 1..30 s backoff for ever."""
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        if self.tls:
            self.client.loop_start()
        else:
            # loop_forever is what loop_start runs, minus the wake-up pipe (see _Client).
            self._thread = threading.Thread(target=self.client.loop_forever, kwargs={"retry_first_connection": True},
                                            name=f"mqtt-{self.device}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Say goodbye (retained offline status), then disconnect."""
        try:
            if self.is_connected:
                info = self._publish_untracked(self.topic("status"), protocol.encode(self._status("offline")),
                                               protocol.QOS["status"], True)
                info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            log.warning("could not publish offline status: %s", exc)
        self._stopping = True
        self.client.disconnect()
        if self.tls:
            self.client.loop_stop()
        elif self._thread is not None:
            self._thread.join(5)  # loop_forever returns once the DISCONNECT is out (or within 1 s if offline)
        self._settle()  # the runtime's timers have stopped: settle here

    # ------------------------------------------------------------------ sending
    def send(self, kind: str, payload: dict[str, Any], *, keep: tuple[str, dict | None] | None = None) -> int:
        """Store then publish one message on this device's *kind* topic; returns the outbox row id.
        ``keep``: local state committed with the message (``Outbox.put``)."""
        topic = self.topic(kind)
        raw = protocol.encode(payload)
        qos = protocol.QOS[kind]
        priority = priority_for(kind, payload.get("type") if kind == "event" else None)
        if priority != HEARTBEAT and self._later is not None and self.is_connected:
            self._settle_soon()  # now, not after the send: see agent/report/alert.py's follow-ups
        with self._send_lock:
            row = self.outbox.put(topic, raw, qos, kind, priority=priority, sync=False, keep=keep)
            published = self.is_connected
            if published:
                self._publish_locked(row, topic, raw, qos, False)
        if published and not self.tls and threading.current_thread() is not self._network_thread:
            self.client.write_now()  # outside _send_lock: it may find paho writing
        if priority != HEARTBEAT:
            if not (published and self._later is not None):
                self.outbox.sync()  # offline: nothing else holds this message
            else:
                self._settle_soon()  # normally still due (no-op); not if the commit was slow
        return row

    # ------------------------------------------------------------------ settling
    def _settle_soon(self) -> None:
        with self._map_lock:
            if self._settle_due:
                return
            self._settle_due = True
        self._later(SETTLE_SECONDS, self._settle)

    def _settle(self) -> None:
        """Delete acknowledged rows; fsync if any sent row is still unacknowledged."""
        with self._map_lock:
            self._settle_due = False
            acked, self._acked_rows = self._acked_rows, []
            unacked = bool(self._rows_inflight)
        if unacked:
            self.outbox.sync()
        if acked:
            self.outbox.delete_many(acked)

    def _publish_locked(self, row: int, topic: str, raw: bytes, qos: int, retain: bool) -> None:
        info = self.client.publish(topic, raw, qos=qos, retain=retain)
        if qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:
            return  # paho dropped it (not connected); the row stays for the next resend
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed (%s); will retry on reconnect", topic, mqtt.error_string(info.rc))
            return
        # QoS 1 with NO_CONN is queued inside paho and sent on reconnect: track it.
        with self._map_lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._inflight[info.mid] = row
                self._rows_inflight.add(row)
        if early is not None:
            self._acked(row, early)

    def _publish_untracked(self, topic: str, raw: bytes, qos: int, retain: bool):
        """Publish something that is not in the outbox (the retained status)."""
        info = self.client.publish(topic, raw, qos=qos, retain=retain)
        with self._map_lock:
            if self._early.pop(info.mid, None) is None:
                self._untracked.add(info.mid)
        return info

    def resend_pending(self) -> int:
        """Publish every stored row paho is not already carrying, oldest first."""
        n = 0
        with self._send_lock:
            with self._map_lock:
                skip = self._rows_inflight | set(self._acked_rows)
            for item in self.outbox.pending():
                if item.id in skip:
                    continue
                self._publish_locked(item.id, item.topic, item.payload, item.qos, item.retain)
                n += 1
        if n:
            log.info("resent %d stored message(s)", n)
        return n

    # ------------------------------------------------------------------ callbacks (paho's thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        try:
            # Alerts are tiny and urgent: do not let Nagle hold them back for an ACK.
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self._network_thread = threading.current_thread()
        log.info("connected to %s:%d as %s", self.host, self.port, self.device)
        client.subscribe(self.topic("cmd"), qos=protocol.QOS["cmd"])
        # Stored messages first: an alert raised while offline is the most urgent thing we
        # have, and a consumer that sees "online" can rely on the backlog before it.
        self.resend_pending()
        self._publish_untracked(self.topic("status"), protocol.encode(self._status("online")),
                                protocol.QOS["status"], True)
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if reason_codes and not any(rc.is_failure for rc in reason_codes):
            self.subscribed.set()
        else:
            log.error("broker refused the cmd subscription (%s): staff cannot reach this device", reason_codes)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        with self._map_lock:
            unacked = bool(self._rows_inflight)
        if unacked and self._later is not None:
            self.outbox.sync()  # they will not be acknowledged now: make them survive a power cut
        if not self._stopping:
            log.warning("disconnected from broker (%s); reconnecting", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._map_lock:
            if mid in self._untracked:
                self._untracked.discard(mid)
                return
            row = self._inflight.pop(mid, None)
            if row is None:
                # The PUBACK beat send() to the map (or a status one beat _publish_untracked).
                self._early[mid] = reason_code
                return
            self._rows_inflight.discard(row)
        self._acked(row, reason_code)

    def _acked(self, row: int, reason_code) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning("broker refused message %d (%s); it stays in the outbox", row, reason_code)
            return
        self.acked += 1
        if self._later is None:
            self.outbox.delete(row)
            return
        with self._map_lock:
            self._acked_rows.append(row)
        self._settle_soon()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            where, cmd = protocol.parse_message(msg.topic, msg.payload, self.prefix)
            if where.kind != "cmd" or where.device != self.device:
                raise protocol.ProtocolError("not this device's cmd topic")
        except protocol.ProtocolError as exc:
            self.ignored_commands += 1
            log.warning("ignored cmd on %s: %s", msg.topic, exc)
            return
        try:
            self.on_command(cmd)
        except Exception:  # noqa: BLE001 - a bad handler must not kill paho's thread
            log.exception("cmd handler failed for %r", cmd.get("cmd"))
