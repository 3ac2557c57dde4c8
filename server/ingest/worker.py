"""MQTT ingest: device messages from the broker into the store, validated, de-duplicated, batched.

One ``Ingest`` is one worker.  It joins the MQTT 5 shared subscription
``$share/classroom-server/{prefix}/+/+/+/+``, so several workers (processes or machines)
split the load; with a session expiry (``serve``'s default) the broker keeps a stopped
worker's messages until it is back under the same client id, and it always takes up the
session its id left (client.py).  Shared subscriptions never deliver retained messages, so each worker
also subscribes (non-shared) to ``{prefix}/+/+/+/status`` to learn every device's
retained status / Last Will at start; status is idempotent (newest ts wins).

Each worker also subscribes, non-shared, to every ``alert`` topic, so the live dashboard of
every process hears every alert whichever worker stored it, and to every receiver's presence
(``{prefix}/+/+/_watch/+``, retained, before the alerts so a (re)connect learns who is watching
before it hears of an open alert): those are not stored, only handed to the listeners in the
order they came (server/presence.py).

Why the shape: the network thread (``client.Connection``) reads every packet the socket
holds, then validates that burst in one go with ``agent.protocol`` (parse_topic, decode,
validate: what parse_message does, with the topic parse cached); doing both on one thread
saves a hand-over per message and the GIL ping-pong between threads.  The committer thread
gives the store everything validated so far whenever the store is free, so a transaction
grows with the load (SQLite's writer thread commits while the next bursts are read), and
acknowledges a batch's messages only once it is committed: a crash loses nothing (DESIGN
rule 5) and the event id makes redelivery harmless.

A device's backlog may come as batches, ``{"batch": [event, ...]}`` on its event topic
(agent/protocol.py); each event of a batch is validated, bounded and stored as if it had
come alone, and a malformed one costs only itself.  The batch message is acknowledged
once all of its events are committed, like any other.

Malformed messages (bad JSON, wrong types, unknown kinds, a payload naming another
device than its topic, oversized, a non-alert ts more than a day ahead of the collector's
clock: bounds.py) are counted in ``Metrics``, logged as one line and dropped; they are
acknowledged so the broker does not redeliver them forever.  Every stored ts is in one
text form (bounds.py).  A transition or evidence naming another device's incident is
refused by the store in the batch and counted here (``ingest_refused_total``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable

from agent.protocol import (DEFAULT_PREFIX, WATCH, ProtocolError, batch_events, decode, encode, is_batch,
                            parse_broker_url, parse_staff_topic, parse_topic, validate)

from ..store import Store
from .bounds import TooFarAhead, bound_ts
from .client import Connection, check_paho_version
from .metrics import LogLimiter, Metrics

log = logging.getLogger("server.ingest")

SHARE_GROUP = "classroom-server"
INGEST_KINDS = ("status", "alert", "event", "heartbeat")
# Read and handed to the listeners, never stored: a teacher client's presence for a room.
PRESENCE_KINDS = ("watch",)
LISTENED_KINDS = ("status", "alert", "watch")
# The few event types the listeners hear as well (the room page shows them live): a
# device's answer to a teacher's command and its lock changing.  Not blocked events and
# the rest of the hot path.
LISTENED_EVENTS = frozenset({"cmd_result", "lock", "unlock"})
# Messages validated in one go by the network thread: 200 batch messages are at most
# 20,000 events (protocol.BATCH_MAX each), one transaction of a sane size.
PREPARE_CHUNK = 200


class Ingest:
    """One ingest worker.  ``start()`` connects and runs; ``stop()`` flushes and disconnects.

    ``listeners``: callables ``(kind, topic, data)`` called after commit for each alert
    transition (once per process), every status message (the live dashboard subscribes here),
    every receiver presence message (kind ``watch``, topic an ``agent.protocol.StaffTopic``)
    and the events of ``LISTENED_EVENTS`` this worker stored (kind ``event``)."""

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
        # Network thread -> committer thread: parsed bursts (items, mids to ack, message count,
        # broker session) in a deque (append/popleft are atomic) and an Event, so no lock.
        self._parsed: deque = deque()
        self._wake = threading.Event()
        self._arrived = 0  # messages handed over by the network thread (written by it alone)
        self.first_arrival: float | None = None  # perf_counter() of the first message (bench)
        self._done = 0  # messages whose batch is committed (or that were dropped)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._log_limit = LogLimiter()
        self._topics: dict = {}
        self._seen_alerts: dict = {}  # (alert id, state) already given to listeners (insertion-ordered)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connection = Connection(self.host, self.port, self.client_id, on_messages=self._on_messages,
                                     on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                                     on_subscribe=self._on_subscribe, username=username, password=password,
                                     tls=self.tls, ca_file=ca_file, session_expiry=session_expiry,
                                     receive_maximum=receive_maximum)

    # ------------------------------------------------------------------ MQTT

    def start(self) -> "Ingest":
        check_paho_version()
        self._thread = threading.Thread(target=self._run, name="ingest-committer", daemon=True)
        self._thread.start()
        self.connection.start()
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
        # Presence before alerts: the broker sends retained messages in subscription order, so
        # a (re)connect knows who is watching a room before it hears of that room's open alert.
        client.subscribe([(f"$share/{self.share_group}/{self.prefix}/+/+/+/+", 1),
                          (f"{self.prefix}/+/+/+/status", 1), (f"{self.prefix}/+/+/{WATCH}/+", 1),
                          (f"{self.prefix}/+/+/+/alert", 1)])
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

    def _on_messages(self, messages: list) -> None:
        # Network thread, once per read burst (all on one broker session).
        if self.first_arrival is None:
            self.first_arrival = time.perf_counter()
        self._arrived += len(messages)  # before the hand-over: queue_depth never goes below 0
        # In chunks: a chunk of batch messages (up to protocol.BATCH_MAX events each) is
        # still a transaction of a sane size; the committer joins small ones up again.
        step = min(self.batch_size, PREPARE_CHUNK)
        for start in range(0, len(messages), step):
            self._parsed.append(self._prepare(messages[start:start + step], self._session))
        self._wake.set()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        """Publish with this worker's connection (commands to devices)."""
        return self.connection.publish(topic, payload, qos=qos, retain=retain)

    # ------------------------------------------------------------------ parsing and storing

    def _run(self) -> None:
        # Hand the store everything parsed so far whenever it is free: batches grow with the
        # load (one transaction per commit time, not per burst) and stay small when quiet.
        parsed = self._parsed
        inflight = None  # (future, items, acks) of the batch the store is committing
        items: list = []
        acks: list = []  # (session, mids, count) per burst
        count = 0
        while True:
            # Clear before draining: a burst (or a commit) after this sets it again.
            self._wake.clear()
            while parsed and count < self.batch_size:
                burst_items, mids, n, session = parsed.popleft()
                items += burst_items
                acks.append((session, mids, n))
                count += max(n, len(burst_items))  # messages, or the events of batches in them
            if inflight is not None and (_settled(inflight[0]) or count >= self.batch_size
                                         or (self._stopping and not parsed)):
                self._finish(*inflight)  # waits only when the next batch is full (or at stop)
                inflight = None
            if inflight is None and acks:
                inflight = (self._submit(items), items, acks)
                items, acks, count = [], [], 0
                continue
            if inflight is None and not parsed and self._stopping:
                return
            if not parsed:
                self._wake.wait(0.5)

    def _prepare(self, messages: list, session: int) -> tuple[list, list[int], int, int]:
        """Validate one burst: (storable items, QoS 1 mids to ack once stored, count, session).
        Malformed and ignored messages are acknowledged with the rest: redelivery would not
        make them any better."""
        items = []
        mids = []
        malformed = ignored = 0
        topics = self._topics
        now = datetime.now(timezone.utc)
        for topic, payload, mid, qos in messages:
            if qos == 1:
                mids.append(mid)
            try:
                # parse_message, with the topic parse cached (devices reuse few topics).
                where = topics.get(topic)
                if where is None:
                    if topic is None:
                        raise ProtocolError("topic is not UTF-8")
                    where = _parse_where(topic, self.prefix)
                    if len(topics) < 100000:
                        topics[topic] = where
                data = decode(payload)
                if where.kind == "event" and is_batch(data):
                    # A device's backlog, several events in one message (agent/protocol.py).
                    malformed += self._prepare_batch(where, data, topic, now, items)
                    continue
                data = validate(where.kind, data, where)
                _refuse_nul(payload)
                # The collector's clock and the store's one time format (bounds.py).
                note = bound_ts(where.kind, data, now) if where.kind in INGEST_KINDS else None
                if note is not None and self._log_limit.allow():
                    log.warning("ingest: alert %s on %.200s: %s", data.get("id"), topic, note)
            except (ProtocolError, TooFarAhead) as exc:
                malformed += 1
                if self._log_limit.allow():
                    log.warning("ingest: dropped malformed message on %.200s: %s", topic, str(exc)[:300])
                continue
            except Exception as exc:  # noqa: BLE001 - a validator bug must not stop ingest
                malformed += 1
                if self._log_limit.allow():
                    log.warning("ingest: dropped message on %.200s: %s", topic, repr(exc)[:300])
                continue
            if where.kind not in INGEST_KINDS and where.kind not in PRESENCE_KINDS:
                ignored += 1
                continue
            # The payload as the device sent it is what gets stored (no re-encoding).
            items.append((where, data, payload))
        self.metrics.inc("ingest_received_total", len(messages))
        if malformed:
            self.metrics.inc("ingest_malformed_total", malformed)
        if ignored:
            self.metrics.inc("ingest_ignored_total", ignored)
        return items, mids, len(messages), session

    def _prepare_batch(self, where, data: dict, topic: str, now: datetime, items: list) -> int:
        """The events of one batch message into *items*, each as if it had come alone (its
        own JSON stored as its raw payload); returns how many were malformed.  A bad event
        costs only itself; a message that is not a batch raises ProtocolError."""
        events, bad = batch_events(data, where)
        for one in events:
            raw = encode(one)  # before bound_ts rewrites its ts: stored as the device sent it
            try:
                _refuse_nul(raw)
                bound_ts("event", one, now)
            except (ProtocolError, TooFarAhead) as exc:
                bad.append(f"event {one.get('id')}: {exc}")
                continue
            items.append((where, one, raw))
        for why in bad:
            if self._log_limit.allow():
                log.warning("ingest: dropped malformed event in a batch on %.200s: %s", topic, why[:300])
        return len(bad)

    def _submit(self, items):
        if not items:
            return None
        try:
            future = self.store.ingest(items, wait=False)
        except Exception as exc:  # noqa: BLE001 - retried in _finish
            return exc
        future.add_done_callback(self._committed)
        return future

    def _committed(self, future) -> None:
        self._wake.set()

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
            refused = result.get("refused") or []
            if refused:
                # Another device's incident named (store/incidents.py): kept out, said once each.
                m.inc("ingest_refused_total", len(refused))
                for why in refused:
                    if self._log_limit.allow():
                        log.warning("ingest: %s", why)
        with self._cond:
            self._done += sum(n for _, _, n in acks)
            self._cond.notify_all()
        # Acknowledge only now: the batch is committed.  A mid belongs to the broker session
        # it came in on; after a new session it could name another, uncommitted message, so
        # old ones are not acked (the broker redelivers them, and the store drops the copy).
        session_now = self._session
        mids = [mid for session, burst_mids, _ in acks if session == session_now for mid in burst_mids]
        try:
            self.connection.ack(mids)
        except Exception:  # noqa: BLE001 - connection gone; the broker redelivers what it still holds
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
                if where.kind in LISTENED_KINDS or where.kind == "event" and data["type"] in LISTENED_EVENTS:
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
                self.store.ping()
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
        """Messages received but not yet committed (or dropped)."""
        with self._cond:
            return self._arrived - self._done

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
        self.connection.stop()


def _parse_where(topic: str, prefix: str):
    """A device topic, or a receiver's presence (``.../_watch/{staff}``), which ingest also reads."""
    try:
        return parse_topic(topic, prefix)
    except ProtocolError:
        if f"/{WATCH}/" not in topic:
            raise
        return parse_staff_topic(topic, prefix)


def _refuse_nul(raw: bytes) -> None:
    """Valid JSON, but PostgreSQL text cannot hold NUL: refused on every backend alike."""
    if b"\\u0000" in raw:
        raise ProtocolError("payload contains a NUL character (\\u0000)")


def _settled(future) -> bool:
    """The store has finished with this batch (committed, failed, or there was nothing to write)."""
    return future is None or isinstance(future, BaseException) or future.done()
