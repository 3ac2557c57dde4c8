"""MQTT ingest: device messages from the broker into the store, validated, de-duplicated, batched.

One ``Ingest`` is one worker.  It joins the MQTT 5 shared subscription
``$share/classroom-server/{prefix}/+/+/+/+`` with clean start and session expiry 0, so
several workers (processes or machines) split the load and a dead worker leaves no
session behind.  Shared subscriptions never deliver retained messages, so each worker
also subscribes (non-shared) to ``{prefix}/+/+/+/status`` to learn every device's
retained status / Last Will at start; status is idempotent (newest ts wins).

Each worker also subscribes, non-shared, to every ``alert`` topic, so the live dashboard of
every process hears every alert whichever worker stored it.

Why the shape: paho's network thread is the bottleneck at 20k msg/s, so ``on_message``
only appends (topic, payload, mid) to a list.  A parser thread validates each payload
with ``agent.protocol`` (parse_topic, decode, validate: what parse_message does) and hands whole batches to the store (one
transaction each; on SQLite the writer thread commits while the next batch parses).
Acknowledgements are manual: PUBACK is sent only after the batch is committed, so a
crash loses nothing (DESIGN rule 5); the event id makes redelivery harmless.

Malformed messages (bad JSON, wrong types, unknown kinds, a payload naming another
device than its topic, oversized) are counted in ``Metrics``, logged as one line and
dropped; they are acknowledged so the broker does not redeliver them forever.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from typing import Any, Callable

from agent.protocol import DEFAULT_PREFIX, ProtocolError, decode, parse_broker_url, parse_topic, validate

from .store import Store

log = logging.getLogger(__name__)

SHARE_GROUP = "classroom-server"
INGEST_KINDS = ("status", "alert", "event", "heartbeat")


class Metrics:
    """Counters for /metrics (Prometheus text).  Thread-safe, cheap."""

    HELP = {
        "ingest_received_total": "MQTT messages received by ingest",
        "ingest_malformed_total": "messages dropped because they broke the protocol",
        "ingest_ignored_total": "well-formed messages ingest does not store (cmd)",
        "ingest_events_stored_total": "device events stored",
        "ingest_duplicates_total": "events and alert transitions dropped as duplicates (same id)",
        "ingest_alerts_stored_total": "alert transitions stored",
        "ingest_heartbeats_total": "heartbeats stored",
        "ingest_status_total": "status messages applied",
        "ingest_batches_total": "store transactions written by ingest",
        "ingest_store_errors_total": "failed store writes (retried)",
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {name: 0 for name in self.HELP}

    def inc(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + value

    def get(self, name: str) -> int:
        with self._lock:
            return self.counters.get(name, 0)

    def render(self, gauges: dict[str, tuple[float, str]] | None = None) -> str:
        lines = []
        with self._lock:
            counters = dict(self.counters)
        for name, value in counters.items():
            lines += [f"# HELP classroom_{name} {self.HELP.get(name, name)}", f"# TYPE classroom_{name} counter",
                      f"classroom_{name} {value}"]
        for name, (value, help_text) in (gauges or {}).items():
            lines += [f"# HELP classroom_{name} {help_text}", f"# TYPE classroom_{name} gauge",
                      f"classroom_{name} {value}"]
        return "\n".join(lines) + "\n"


class _LogLimiter:
    """At most *rate* malformed-message lines per second, then a count of what was skipped."""

    def __init__(self, rate: int = 20) -> None:
        self.rate = rate
        self.window = 0.0
        self.count = 0
        self.skipped = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.window >= 1.0:
            if self.skipped:
                log.warning("ingest: %d more malformed messages not logged", self.skipped)
            self.window, self.count, self.skipped = now, 0, 0
        self.count += 1
        if self.count > self.rate:
            self.skipped += 1
            return False
        return True


def _fast_client_class():
    import paho.mqtt.client as mqtt

    class FastReadClient(mqtt.Client):
        """paho reads ONE packet per select() and each packet in 3-5 recv() calls; at 20k
        msg/s that, not our code, is the ceiling.  This reads the socket in 256 KiB chunks
        and parses every complete packet in the buffer before going back to select(), and
        decodes property-less PUBLISH packets without paho's per-message Properties object.
        Overrides paho 2.x internals (pinned <3 in pyproject); every ingest test runs it."""

        _rbuf = b""
        _rpos = 0
        direct_on_message = None  # set to skip paho's callback dispatch (one handler, all topics)
        direct_on_publish = None  # (topic bytes, payload, mid, qos): skips MQTTMessage as well

        def _sock_recv(self, bufsize: int) -> bytes:
            if self._rpos >= len(self._rbuf):
                data = super()._sock_recv(262144)  # BlockingIOError when drained: paho's "again"
                if not data:
                    return data
                self._rbuf, self._rpos = data, 0
            chunk = self._rbuf[self._rpos:self._rpos + bufsize]
            self._rpos += len(chunk)
            return chunk

        def _packet_read(self):
            # Whole packet already in the buffer (the usual case at load): hand it to
            # paho's packet handler directly instead of paho's byte-at-a-time reader.
            buf, pos = self._rbuf, self._rpos
            if self._in_packet["command"] == 0 and pos + 2 <= len(buf):
                i, mult, length = pos + 1, 1, 0
                while i < len(buf) and i - pos <= 4:
                    byte = buf[i]
                    length += (byte & 127) * mult
                    mult *= 128
                    i += 1
                    if not byte & 128:
                        if i + length <= len(buf):
                            return self._handle_buffered(buf[pos], buf[i:i + length], length, i + length)
                        break
            return super()._packet_read()  # partial packet: paho reads the rest as usual

        def _handle_buffered(self, command: int, packet: bytes, length: int, end: int):
            from paho.mqtt.exception import MalformedPacket

            self._rpos = end
            self._in_packet.update(command=command, packet=packet, remaining_length=length, have_remaining=1,
                                   to_process=0, pos=0)
            try:
                rc = self._packet_handle()
            except MalformedPacket:
                rc = mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
            self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                               "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()
            return rc

        def loop_read(self, max_packets: int = 1):
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            for _ in range(100000):
                if self._sock is None:
                    return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                    break
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

        def _handle_publish(self):
            # paho builds a v5 Properties object per PUBLISH (~10 us, half its decode
            # cost) even when the packet has none, as device messages never do.  Fast
            # path for exactly that case; anything else takes paho's own code.
            header, packet = self._in_packet["command"], self._in_packet["packet"]
            qos = (header & 0x06) >> 1
            if self._protocol != mqtt.MQTTv5 or qos == 2:
                return super()._handle_publish()
            try:
                end = 2 + ((packet[0] << 8) | packet[1])
                topic = bytes(packet[2:end])
                mid = 0
                if qos:
                    mid = (packet[end] << 8) | packet[end + 1]
                    end += 2
                if packet[end] != 0 or not topic:
                    return super()._handle_publish()
            except IndexError:
                return super()._handle_publish()  # short packet: paho reports it as malformed
            if self.direct_on_publish is not None:
                # No MQTTMessage (it builds a Condition per message): raw fields straight through.
                self.direct_on_publish(topic, bytes(packet[end + 1:]), mid, qos)
                if qos == 1 and not self._manual_ack:
                    return self._send_puback(mid)
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
            message = mqtt.MQTTMessage(mid=mid, topic=topic)
            message.dup = bool(header & 0x08)
            message.qos = qos
            message.retain = bool(header & 0x01)
            message.payload = bytes(packet[end + 1:])
            message.timestamp = time.monotonic()
            if self.direct_on_message is not None:
                self.direct_on_message(self, self._userdata, message)  # no per-message topic matching
            else:
                self._handle_on_message(message)
            if qos == 1 and not self._manual_ack:
                return self._send_puback(mid)
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

        def ack_many(self, mids: list[int]) -> None:
            """PUBACK many QoS 1 messages with ONE queued write: the same bytes as
            ``ack(mid, 1)`` for each, without a wake-up and a send() per message."""
            if not mids:
                return
            packet = b"".join(struct.pack("!BBH", mqtt.PUBACK, 2, mid) for mid in mids)
            self._packet_queue(mqtt.PUBACK, packet, 0, 1)

        def reconnect(self):
            self._rbuf, self._rpos = b"", 0  # never parse bytes from a previous connection
            return super().reconnect()

    return FastReadClient



class Ingest:
    """One ingest worker.  ``start()`` connects and runs; ``stop()`` flushes and disconnects.

    ``listeners``: callables ``(kind, topic, data)`` called after commit for each alert
    transition (once per process) and every status message (the live dashboard subscribes here)."""

    def __init__(self, store: Store, broker_url: str, *, prefix: str = DEFAULT_PREFIX,
                 username: str | None = None, password: str | None = None, ca_file: str | None = None,
                 metrics: Metrics | None = None, batch_size: int = 5000, client_id: str | None = None,
                 share_group: str = SHARE_GROUP, receive_maximum: int = 20000, session_expiry: int = 0) -> None:
        self.store = store
        self.host, self.port, self.tls = parse_broker_url(broker_url, "--broker")
        self.prefix = prefix
        self.username = username
        self.password = password
        self.ca_file = ca_file
        self.metrics = metrics or Metrics()
        self.batch_size = batch_size
        self.share_group = share_group
        self.receive_maximum = receive_maximum
        self.session_expiry = session_expiry
        self._session = 0  # counts broker sessions (a reconnect without session_present is a new one)
        self.client_id = client_id or f"classroom-server-{id(self):x}"
        self.listeners: list[Callable[[str, Any, dict], None]] = []
        # Network thread -> parser thread: a deque (append/popleft are atomic) and an
        # Event, so the hot path takes no lock.
        self._pending: deque = deque()
        self._wake = threading.Event()
        self._arrived = 0  # messages handed over by the network thread (written by it alone)
        self.first_arrival: float | None = None  # perf_counter() of the first message (bench)
        self._done = 0  # messages whose batch is committed (or that were dropped)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._log_limit = _LogLimiter()
        self._topics: dict = {}
        self._seen_alerts: dict = {}  # (alert id, state) already given to listeners (insertion-ordered)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = self._make_client()

    # ------------------------------------------------------------------ MQTT

    def _make_client(self):
        import paho.mqtt.client as mqtt

        client = _fast_client_class()(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                      client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_file)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.direct_on_message = self._on_message
        client.direct_on_publish = self._on_publish_raw
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(1, 30)
        return client

    def start(self) -> "Ingest":
        from paho.mqtt.properties import Properties
        from paho.mqtt.packettypes import PacketTypes

        self._thread = threading.Thread(target=self._run, name="ingest-parser", daemon=True)
        self._thread.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        props.ReceiveMaximum = self.receive_maximum
        # Expiry 0 (default): clean start, nothing left behind by a dead worker.  Expiry > 0
        # with a stable client id: the broker queues QoS 1 messages while this worker is
        # restarting, so nothing published in that window is lost.
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=self.session_expiry == 0,
                                  properties=props)
        self.client.loop_start()
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("ingest: broker refused the connection: %s", reason_code)
            return
        if not getattr(flags, "session_present", False):
            self._session += 1
        # Non-shared too: every worker sees every status (retained, so only a plain
        # subscription gets it) and every alert (so each process's live dashboard shows all
        # rooms, whichever worker stored it).  Both are idempotent in the store.
        client.subscribe([(f"$share/{self.share_group}/{self.prefix}/+/+/+/+", 1),
                          (f"{self.prefix}/+/+/+/status", 1), (f"{self.prefix}/+/+/+/alert", 1)])
        self.connected.set()
        log.info("ingest: connected to %s:%s", self.host, self.port)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("ingest: subscription refused: %s", [str(rc) for rc in reason_codes])
        else:
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping:
            log.warning("ingest: disconnected (%s); reconnecting", reason_code)

    def _on_publish_raw(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        # Keep the network thread free: decoding and validation happen on the parser thread.
        self._pending.append((topic, payload, mid, qos, self._session))
        self._arrived += 1
        if self.first_arrival is None:
            self.first_arrival = time.perf_counter()
        if not self._wake.is_set():
            self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        # paho's own path (packets with properties): same hand-over.
        try:
            topic = message.topic.encode("utf-8")
        except UnicodeDecodeError:
            topic = b"\xff"  # counted as malformed by the parser, in order
        self._on_publish_raw(topic, message.payload, message.mid, message.qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        """Publish with this worker's connection (commands to devices)."""
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    # ------------------------------------------------------------------ parsing and storing

    def _run(self) -> None:
        inflight = None  # (future, items, acks) of the batch the store is committing
        pending = self._pending
        while True:
            if not pending and inflight is None:
                if self._stopping:
                    return
                self._wake.wait(0.5)
            # Clear before draining: a message appended after this sets it again.
            self._wake.clear()
            batch = []
            while pending and len(batch) < self.batch_size:
                batch.append(pending.popleft())
            prepared = self._prepare(batch) if batch else None
            if inflight is not None:
                self._finish(*inflight)
                inflight = None
            if prepared is not None:
                items, acks = prepared
                inflight = (self._submit(items), items, acks)

    def _prepare(self, batch: list[tuple[str, bytes, int, int]]):
        items = []
        acks = []
        malformed = ignored = 0
        topics = self._topics
        for topic, payload, mid, qos, session in batch:
            acks.append((mid, qos, session))
            try:
                # parse_message, with the topic parse cached (devices reuse few topics).
                where = topics.get(topic)
                if where is None:
                    try:
                        text = topic.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError("topic is not UTF-8") from None
                    where = parse_topic(text, self.prefix)
                    if len(topics) < 100000:
                        topics[topic] = where
                data = validate(where.kind, decode(payload), where)
                if b"\\u0000" in payload:
                    # Valid JSON, but PostgreSQL text cannot hold NUL: refused on every backend alike.
                    raise ProtocolError("payload contains a NUL character (\\u0000)")
            except ProtocolError as exc:
                malformed += 1
                if self._log_limit.allow():
                    log.warning("ingest: dropped malformed message on %.200s: %s", topic.decode("utf-8", "replace"),
                                str(exc)[:300])
                continue
            except Exception as exc:  # noqa: BLE001 - a validator bug must not stop ingest
                malformed += 1
                if self._log_limit.allow():
                    log.warning("ingest: dropped message on %.200s: %s", topic.decode("utf-8", "replace"),
                                repr(exc)[:300])
                continue
            if where.kind not in INGEST_KINDS:
                ignored += 1
                continue
            # The payload as the device sent it is what gets stored (no re-encoding).
            items.append((where, data, payload))
        self.metrics.inc("ingest_received_total", len(batch))
        if malformed:
            self.metrics.inc("ingest_malformed_total", malformed)
        if ignored:
            self.metrics.inc("ingest_ignored_total", ignored)
        return items, acks

    def _submit(self, items):
        if not items:
            return None
        try:
            return self.store.ingest(items, wait=False)
        except Exception as exc:  # noqa: BLE001 - retried in _finish
            return exc

    def _finish(self, future, items, acks) -> None:
        delay = 0.1
        while True:
            try:
                if future is None:
                    result = None
                elif isinstance(future, BaseException):
                    raise future
                else:
                    result = future.result()
                break
            except Exception as exc:  # noqa: BLE001 - never lose a batch: retry until the store is back
                self.metrics.inc("ingest_store_errors_total")
                log.error("ingest: store write failed (%s); retrying in %.1fs", str(exc).splitlines()[0], delay)
                if delay > 0.1:  # the batch failed twice: look for a message the store refuses
                    salvaged = self._one_by_one(items)
                    if salvaged is not None:
                        result = salvaged
                        break
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                if self._stopping and delay >= 10.0:
                    log.error("ingest: giving up on %d messages at shutdown; the broker will not redeliver", len(items))
                    return
                future = self._submit(items)
        if result is not None:
            m = self.metrics
            m.inc("ingest_batches_total")
            m.inc("ingest_events_stored_total", result["events"])
            m.inc("ingest_duplicates_total", result["duplicates"] + result["alert_duplicates"])
            m.inc("ingest_alerts_stored_total", len(result["alerts"]))
            m.inc("ingest_heartbeats_total", result["heartbeats"])
            m.inc("ingest_status_total", result["status"])
        with self._cond:
            self._done += len(acks)
            self._cond.notify_all()
        # Acknowledge only now: the batch is committed.
        try:
            # A mid belongs to the broker session it came in on; after a new session
            # it could name another, uncommitted message, so old ones are not acked.
            self.client.ack_many([mid for mid, qos, session in acks if qos == 1 and session == self._session])
        except Exception:  # noqa: BLE001 - connection gone; the broker keeps nothing for us anyway
            pass
        if result is not None and self.listeners:
            for where, data, _ in items:
                if where.kind == "alert":
                    key = (data["id"], data["state"])
                    if key in self._seen_alerts:
                        continue
                    self._seen_alerts[key] = None
                    if len(self._seen_alerts) > 10000:
                        self._seen_alerts.pop(next(iter(self._seen_alerts)))
                if where.kind in ("status", "alert"):
                    for listener in list(self.listeners):
                        try:
                            listener(where.kind, where, data)
                        except Exception:  # noqa: BLE001
                            log.exception("ingest listener failed")

    def _one_by_one(self, items) -> dict | None:
        """After a failed batch: store items singly.  If some work, the others are poison
        (valid protocol, unstorable data) and are dropped as malformed; if none work, the
        store itself is down and the caller retries the whole batch."""
        total: dict | None = None
        failed = 0
        for item in items:
            try:
                one = self.store.ingest([item])
            except Exception as exc:  # noqa: BLE001
                failed += 1
                last = exc
                continue
            if total is None:
                total = {k: (list(v) if isinstance(v, list) else v) for k, v in one.items()}
            else:
                for key, value in one.items():
                    total[key] = total[key] + value
        if total is None:
            try:
                self.store.query("SELECT 1 AS ok")
            except Exception:  # noqa: BLE001 - the store is down: retry the batch later
                return None
            total = {"events": 0, "duplicates": 0, "alerts": [], "alert_duplicates": 0, "status": 0, "heartbeats": 0}
        if failed:
            self.metrics.inc("ingest_malformed_total", failed)
            log.warning("ingest: dropped %d unstorable message(s): %s", failed, str(last).splitlines()[0])
        return total

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything received so far is committed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._arrived
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @property
    def queue_depth(self) -> int:
        """Messages received but not yet parsed."""
        return len(self._pending)

    @property
    def processed(self) -> int:
        """Messages received and fully handled (stored, duplicate, or dropped)."""
        with self._cond:
            return self._done

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
