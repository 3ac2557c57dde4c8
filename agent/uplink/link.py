"""The agent's MQTT link: one paho-mqtt 2.x client (MQTT v5) to the school's broker.

Owns the connection, never the meaning of messages (topics and payloads come from
agent/protocol.py).  mqtt-io idioms: a retained ``status`` topic that says ``online``
on connect, and the same topic as the Last Will saying ``offline`` so the server knows
when a device drops without a goodbye.

Sending goes through the durable outbox (agent/uplink/outbox.py): ``send()`` stores the
message, then publishes it; the PUBACK (``on_publish``) deletes the row.  Nothing bigger
than the contract's ``MAX_PAYLOAD`` is ever stored or sent (the broker would refuse it
and paho reconnect on the refusal, for ever): it is refused with one log line.

Order (docs/protocol.md, "Delivery").  Per device, messages leave in the order they
were committed, and after every (re)connection the backlog goes first:

1. CONNACK: paho re-sends, by itself and in order, what it was carrying when the
   connection dropped (older than anything only in the outbox).  Our ``on_connect`` runs
   *before* those re-sends, so it publishes nothing: it subscribes to the device's
   ``cmd`` and ``reply/+`` topics.
2. SUBACK (paho handles it after its re-sends are queued): the drain publishes every
   outbox row paho is not carrying, oldest first (a run of events as batches,
   ``{"batch": [...]}``, agent/protocol.py: the same order in fewer messages); then the latest alert transition
   again, retained, if the backlog does not hold it (a broker that lost it, or a
   receiver that joins later, gets the truth: ``republish``); then the retained
   ``online`` status; and only then does ``send()`` publish directly again.  Until then
   ``send()`` only stores, so nothing new jumps the backlog.

Commands.  The device reads its own ``cmd`` (the collector, with ``by`` from the staff
session it authenticated) and ``reply/+`` (a teacher client's ack/clear, ``by`` taken
from the topic's last level, which the broker ties to the staff account).  Retained
messages on either are never acted on (subscribed with "do not send retained", and
dropped if one arrives anyway): a planted retained command must never replay.

Reconnecting: bounded, jittered back-off (``reconnect_max``, 2 s by default: a school
LAN broker is back in moments, and a thousand devices must not all knock at once) and a
short connect timeout.

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
import random
import socket
import threading
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from .. import __version__, protocol
from .outbox import HEARTBEAT, Outbox, priority_for

log = logging.getLogger(__name__)

# How long bookkeeping waits after a send (see the module docstring).  A PUBACK on a
# school LAN takes a millisecond or two; an SD card's fsync takes 10-20 ms on its own.
SETTLE_SECONDS = 0.05
# A batch's events and the ``{"batch":[...]}`` around them fit the contract's size limit.
BATCH_BYTES = protocol.MAX_PAYLOAD - 64


def _ids(row: int | list[int]) -> list[int]:
    """The outbox rows one message carries: one, or a batch's."""
    return row if isinstance(row, list) else [row]


def _carrying(run: list) -> tuple:
    """The message for a run of event rows: the row itself if alone, else their batch."""
    if len(run) == 1:
        item = run[0]
        return item.id, item.topic, item.payload, item.qos, item.retain
    return [item.id for item in run], run[0].topic, protocol.encode_batch([item.payload for item in run]), 1, False


# Reconnecting: the first retry waits RECONNECT_MIN (jittered), each next one twice as
# long, up to the cap (jittered between half and all of reconnect_max).
RECONNECT_MIN = (0.05, 0.2)


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

    ``on_command(cmd: dict)`` receives validated ``cmd`` payloads and teacher replies
    (as ``{"cmd", "alert_id", "by"}``) on paho's thread: post them to the runtime.
    ``send(kind, payload)`` is thread-safe and returns the outbox row id (None if refused).
    ``republish()`` gives the messages to publish again after each backlog (the latest
    alert transition); ``degraded()`` the state-file trouble for the status, ``location()``
    where the device is (``offsite`` goes in the status);
    ``on_ready(first)`` is told when a connection has drained its backlog.
    ``is_connected`` (the socket is up); ``connected`` (a threading.Event) is set once the
    backlog has drained and ``send()`` publishes directly; ``subscribed`` on the SUBACK.
    """

    def __init__(self, *, broker_url: str, prefix: str, site: str, room: str, device: str,
                 outbox: Outbox, on_command: Callable[[dict], None] | None = None,
                 username: str | None = None, password: str | None = None, ca_file: str | None = None,
                 config_version: Callable[[], str] | str = "", agent_version: str = __version__,
                 keepalive: int = 30, later: Callable[..., Any] | None = None,
                 reconnect_max: float = 2.0, connect_timeout: float = 2.0,
                 republish: Callable[[], list[tuple[str, dict]]] | None = None,
                 degraded: Callable[[], str | None] | None = None,
                 location: Callable[[], str] | None = None,
                 on_ready: Callable[[bool], None] | None = None, batch_max: int = protocol.BATCH_MAX):
        self.host, self.port, self.tls = protocol.parse_broker_url(broker_url, "broker_url")
        self.prefix, self.site, self.room, self.device = prefix, site, room, device
        self.outbox = outbox
        self.on_command = on_command or (lambda cmd: None)
        self.agent_version = agent_version
        self._config_version = config_version
        self.keepalive = keepalive
        self.reconnect_max = reconnect_max
        self._later = later
        self._republish = republish or (lambda: [])
        self._degraded = degraded or (lambda: None)
        self._location = location or (lambda: "school")
        self._on_ready = on_ready
        self.batch_max = batch_max  # site.yaml broker.batch_events: 1 sends the backlog one event at a time
        self._thread: threading.Thread | None = None
        # Set once the backlog and the online status are out: send() publishes directly again.
        self.connected = threading.Event()
        # Set on SUBACK for our cmd topic: commands published from now on arrive.
        self.subscribed = threading.Event()
        self._ready = False
        self._connections = 0
        self._sub_mid: int | None = None
        # _send_lock orders outbox writes with publishes and the drain.  paho calls
        # on_publish while holding its own locks, so on_publish must never wait for
        # _send_lock (that deadlocks with a publish in progress): it only takes _map_lock,
        # which is never held across a call into paho.  on_disconnect may run while
        # paho's writer holds _write_lock, so it never takes _send_lock either.
        self._send_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._inflight: dict[int, int | list[int]] = {}  # paho mid -> outbox row id (ids: a batch)
        self._rows_inflight: set[int] = set()
        self._early: dict[int, Any] = {}      # PUBACKs that beat the mapping of their mid
        self._untracked: set[int] = set()     # mids of status messages (not in the outbox)
        self._acked_rows: list[int] = []      # acknowledged, to delete when settling
        self._settle_due = False
        self.acked = 0
        self.refused = 0
        self._stopping = False
        self.ignored_commands = 0

        self._network_thread: threading.Thread | None = None  # paho's, seen in on_connect
        self.client = _Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=device, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if self.tls:
            self.client.tls_set(ca_certs=ca_file)
        self.client.connect_timeout = connect_timeout
        self._jitter_backoff()
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
    def reply_filter(self) -> str:
        """The teacher replies to this device: ``.../{device}/reply/+``."""
        return f"{self.topic('status').rsplit('/', 1)[0]}/{protocol.REPLY}/+"

    @property
    def config_version(self) -> str:
        v = self._config_version
        return v() if callable(v) else v

    @property
    def is_connected(self) -> bool:
        return self.client.is_connected()

    def _status(self, state: str) -> dict[str, Any]:
        status = {"state": state, "ts": protocol.now_ts(), "agent_version": self.agent_version,
                  "config_version": self.config_version}
        degraded = self._degraded() if state == "online" else None
        if degraded:
            status["degraded"] = degraded
        if state == "online" and self._location() != "school":
            status["location"] = self._location()  # off the school network (agent/uplink/location.py)
        return status

    def _jitter_backoff(self) -> None:
        """A fresh random back-off for the next run of reconnect attempts (public paho API:
        paho doubles from min to max itself; the randomness keeps a room's devices apart)."""
        low = random.uniform(*RECONNECT_MIN)
        high = max(low, self.reconnect_max * random.uniform(0.5, 1.0))
        self.client.reconnect_delay_set(min_delay=low, max_delay=high)

    def start(self) -> None:
        """Connect in the background; paho retries (see _jitter_backoff) for ever."""
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
    def send(self, kind: str, payload: dict[str, Any], *, keep: tuple[str, dict | None] | None = None) -> int | None:
        """Store then publish one message on this device's *kind* topic; returns the outbox
        row id, or None when it is over the contract's size limit (refused, one log line).
        ``keep``: local state committed with the message (``Outbox.put``)."""
        topic = self.topic(kind)
        raw = protocol.encode(payload)
        if len(raw) > protocol.MAX_PAYLOAD:
            log.error("refused to send a %d-byte %s message (the limit is %d): %s %s", len(raw), kind,
                      protocol.MAX_PAYLOAD, payload.get("type") or payload.get("state") or "", payload.get("id", ""))
            if keep is not None:
                self.outbox.keep(*keep)
            return None
        qos = protocol.QOS[kind]
        retain = kind in protocol.RETAINED
        priority = priority_for(kind, payload.get("type") if kind == "event" else None)
        if priority != HEARTBEAT and self._later is not None and self._ready:
            self._settle_soon()  # now, not after the send: see agent/report/alert.py's follow-ups
        with self._send_lock:
            row = self.outbox.put(topic, raw, qos, kind, priority=priority, retain=retain, sync=False, keep=keep)
            # Until the backlog has drained (after every connect) new rows wait their turn in it.
            published = self._ready and self.is_connected
            if published:
                self._publish_locked(row, topic, raw, qos, retain)
        if published and not self.tls and threading.current_thread() is not self._network_thread:
            self.client.write_now()  # outside _send_lock: it may find paho writing
        if priority != HEARTBEAT:
            if not (published and self._later is not None):
                self.outbox.sync()  # offline: nothing else holds this message
            else:
                self._settle_soon()  # normally still due (no-op); not if the commit was slow
        return row

    def publish_status(self) -> None:
        """Publish the retained ``online`` status again (its ``degraded`` field or the
        config version it names changed)."""
        with self._send_lock:
            if self._ready and self.is_connected:
                self._publish_untracked(self.topic("status"), protocol.encode(self._status("online")),
                                        protocol.QOS["status"], True)

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

    def _publish_locked(self, row: int | list[int], topic: str, raw: bytes, qos: int, retain: bool) -> None:
        """Publish one outbox row, or (a list of ids) a batch of event rows as one message."""
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
                self._rows_inflight.update(_ids(row))
        if early is not None:
            self._acked(row, early)

    def _publish_untracked(self, topic: str, raw: bytes, qos: int, retain: bool):
        """Publish something that is not in the outbox (the retained status, a republished transition)."""
        info = self.client.publish(topic, raw, qos=qos, retain=retain)
        with self._map_lock:
            if self._early.pop(info.mid, None) is None:
                self._untracked.add(info.mid)
        return info

    def resend_pending(self) -> int:
        """Publish every stored row paho is not already carrying, oldest first."""
        with self._send_lock:
            return self._resend_locked()[0]

    def _resend_locked(self) -> tuple[int, set[bytes]]:
        n = messages = 0
        with self._map_lock:
            skip = self._rows_inflight | set(self._acked_rows)
        pending = self.outbox.pending()
        for rows, topic, raw, qos, retain in self._backlog([item for item in pending if item.id not in skip]):
            self._publish_locked(rows, topic, raw, qos, retain)
            n += len(_ids(rows))
            messages += 1
        if n:
            log.info("resent %d stored message(s)%s", n, f" in {messages}" if messages != n else "")
        return n, {item.payload for item in pending}

    def _backlog(self, items: list) -> Iterator[tuple]:
        """The messages that carry *items* (outbox rows, oldest first) in the same order:
        ``(row or [rows], topic, payload, qos, retain)``.  A run of consecutive events of one
        topic goes as batches (agent/protocol.py: ``batch_max`` events, ``BATCH_BYTES``)."""
        run: list = []
        size = 0
        for item in items:
            batchable = self.batch_max > 1 and item.kind == "event" and item.qos == 1 and not item.retain
            if run and (not batchable or item.topic != run[0].topic or len(run) >= self.batch_max
                        or size + len(item.payload) + 1 > BATCH_BYTES):
                yield _carrying(run)
                run, size = [], 0
            if batchable:
                run.append(item)
                size += len(item.payload) + 1
            else:
                yield item.id, item.topic, item.payload, item.qos, item.retain
        if run:
            yield _carrying(run)

    def _drain(self) -> None:
        """After a (re)connection: the backlog, the latest alert transition, ``online``; then live."""
        with self._send_lock:
            if not self.is_connected:
                return  # dropped again before the SUBACK was handled: the next connection drains
            _, stored = self._resend_locked()
            try:
                again = list(self._republish())
            except Exception:  # noqa: BLE001 - the backlog and the status must still go
                log.exception("could not read what to publish again")
                again = []
            for kind, payload in again:
                raw = protocol.encode(payload)
                where = (payload.get("site"), payload.get("room"), payload.get("device"))
                if raw in stored or where != (self.site, self.room, self.device):
                    continue  # on its way already, or about another room (the device has moved)
                self._publish_untracked(self.topic(kind), raw, protocol.QOS[kind], kind in protocol.RETAINED)
            self._publish_untracked(self.topic("status"), protocol.encode(self._status("online")),
                                    protocol.QOS["status"], True)
            self._ready = True
            self._connections += 1
            first = self._connections == 1
        self.connected.set()
        if self._on_ready is not None:
            try:
                self._on_ready(first)
            except Exception:  # noqa: BLE001
                log.exception("on_ready failed")

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
        # Nothing is published here: paho re-sends what it carried only after this returns,
        # and the backlog must not overtake it.  The drain starts from the SUBACK.
        options = SubscribeOptions(qos=protocol.QOS["cmd"], retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        _, self._sub_mid = client.subscribe([(self.topic("cmd"), options), (self.reply_filter, options)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid != self._sub_mid:
            return
        if reason_codes and not any(rc.is_failure for rc in reason_codes):
            self.subscribed.set()
        else:
            log.error("broker refused the cmd/reply subscription (%s): staff cannot reach this device", reason_codes)
        self._drain()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._ready = False  # an attribute write: never _send_lock here (see __init__)
        self.connected.clear()
        self.subscribed.clear()
        self._jitter_backoff()
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
            self._rows_inflight.difference_update(_ids(row))
        self._acked(row, reason_code)

    def _acked(self, row: int | list[int], reason_code) -> None:
        rows = _ids(row)
        if getattr(reason_code, "is_failure", False):
            self.refused += len(rows)
            log.warning("broker refused message %s (%s); it stays in the outbox",
                        row if len(rows) == 1 else f"of rows {rows[0]}-{rows[-1]}", reason_code)
            return
        self.acked += len(rows)
        if self._later is None:
            self.outbox.delete_many(rows)
            return
        with self._map_lock:
            self._acked_rows.extend(rows)
        self._settle_soon()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            if msg.retain:
                raise protocol.ProtocolError("retained: a stored command is never replayed")
            if f"/{protocol.REPLY}/" in msg.topic:
                where, data = protocol.parse_staff_message(msg.topic, msg.payload, self.prefix)
                if (where.kind, where.site, where.room, where.device) != ("reply", self.site, self.room, self.device):
                    raise protocol.ProtocolError("not a reply to this device")
                # Who answered is the topic's last level (the broker ties it to the account),
                # never a field the sender filled in.
                cmd = {"cmd": data["cmd"], "alert_id": data["alert_id"], "by": where.staff}
            else:
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
