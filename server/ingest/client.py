"""The MQTT connection ingest runs on: one paho 2.x client, driven through paho's public API only.

Why a module of its own: it is the one place that knows paho.  Ingest needs manual
acknowledgements (``manual_ack=True``, then ``Client.ack`` once the batch is committed, so
a crash loses nothing), MQTT 5 (shared subscription, session expiry, receive maximum) and
a network loop that keeps up with tens of thousands of messages a second.

Why not ``loop_start()``: paho's own loop runs select(), the keepalive check and a
wake-up socket read for every single packet, and wakes itself through a socketpair
for every ``ack()`` made from another thread.  paho documents an external event loop
instead (``socket()``, ``loop_read()``, ``loop_write()``, ``loop_misc()``, ``want_write()``
and the ``on_socket_register_write`` callback); ``Connection`` is that loop, in one
thread: it reads every packet the socket has before selecting again, writes all queued
acknowledgements in one pass, and is woken once per batch rather than once per message.

paho is pinned to the version the tests and bench/ingest.py ran against
(``TESTED_PAHO``); ``check_paho_version`` warns at start-up when another one is installed.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import protocol

log = logging.getLogger("server.ingest")

TESTED_PAHO = "2.2.0"  # keep in step with pyproject.toml's pin

# Packets read before the loop writes acknowledgements and checks the keepalive again.
READ_BURST = 2000

# Seconds between attempts to reach the broker: doubling from the first to the last.  The
# broker is on the collector's own machine or network, so trying every 5 s costs nothing,
# while waiting up to 30 s (as it once did) left the collector deaf for that long after a
# broker restart of a few seconds: alerts reached the dashboard and the escalation
# e-mails late, and devices' retained statuses were read late.
RECONNECT_DELAY = (0.5, 5.0)


def check_paho_version(installed: str | None = None) -> str | None:
    """One warning line (logged and returned) when the installed paho is not the one
    ingest was tested with; None when it is."""
    if installed is None:
        try:
            installed = version("paho-mqtt")
        except PackageNotFoundError:  # e.g. a source checkout on sys.path: nothing to compare
            return None
    if installed == TESTED_PAHO:
        return None
    message = (f"ingest: paho-mqtt {installed} is installed but ingest was tested with {TESTED_PAHO}; "
               f"run bench/ingest.py and the ingest tests before relying on it")
    log.warning(message)
    return message


class Connection:
    """One MQTT 5 connection with manual acknowledgements and its network thread.

    ``on_messages(messages)`` gets each run of messages read in one go, as a list of
    ``(topic, payload, mid, qos)`` (topic None if it is not UTF-8); ``on_connect``,
    ``on_disconnect`` and ``on_subscribe`` are paho's VERSION2 callbacks.  All of them run on
    the network thread.
    ``ack(mids)`` and ``publish(...)`` may be called from any thread."""

    def __init__(self, host: str, port: int, client_id: str, *, on_messages: Callable[[list], None],
                 on_connect: Callable, on_disconnect: Callable, on_subscribe: Callable, username: str | None = None,
                 password: str | None = None, tls: bool = False, ca_file: str | None = None, keepalive: int = 30,
                 session_expiry: int = 0, receive_maximum: int = 20000,
                 reconnect_delay: tuple[float, float] = RECONNECT_DELAY, name: str = "ingest-mqtt") -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.name = name
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.min_delay, self.max_delay = reconnect_delay
        self._burst: list = []  # messages of the read burst under way
        self._on_messages = on_messages
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        if username:
            client.username_pw_set(username, password)
        if tls:
            client.tls_set(ca_certs=ca_file)
        client.max_queued_messages_set(0)
        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        client.on_message = self._on_message
        # With this callback set, paho never writes to the socket from the caller's thread
        # (ack/publish from the parser or HTTP threads): it asks this loop to write instead.
        client.on_socket_register_write = self._register_write
        self.client = client
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ any thread

    def start(self) -> "Connection":
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def ack(self, mids: list[int]) -> None:
        """PUBACK these QoS 1 messages (their batch is committed)."""
        if not mids:
            return
        ack = self.client.ack
        for mid in mids:
            ack(mid, 1)
        self.wake()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        properties = None
        expiry = protocol.cmd_expiry_seconds(payload) if topic.endswith("/cmd") else None
        if expiry is not None:
            # Every command to a device leaves the collector here: the broker (and a school
            # bridge's queue on the central broker) drops it once it is stale.
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = expiry
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        self.wake()
        return info

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already has a byte waiting (or closing): the loop wakes either way

    def stop(self, timeout: float = 10.0) -> None:
        """Send DISCONNECT (after any acknowledgements already queued) and end the thread."""
        self._stopping = True
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("ingest: the MQTT thread did not stop within %ss", timeout)
                return
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------ network thread

    def _on_message(self, client, userdata, message) -> None:
        # Only the fields: a paho message holds a lock and a condition, not worth keeping alive.
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = None
        self._burst.append((topic, message.payload, message.mid, message.qos))

    def _register_write(self, client, userdata, sock) -> None:
        self.wake()

    def _run(self) -> None:
        delay = self.min_delay
        first = True
        while not self._stopping:
            if self.client.socket() is None:
                try:
                    self._connect(first)
                    first = False
                except (OSError, ValueError) as exc:
                    log.warning("ingest: cannot reach the broker at %s:%s (%s); retrying in %gs", self.host,
                                self.port, exc, delay)
                    self._sleep(delay)
                    delay = min(delay * 2, self.max_delay)
                    continue
            if self._serve():
                delay = self.min_delay
            elif not self._stopping:
                self._sleep(delay)  # connection lost: paho has called on_disconnect
                delay = min(delay * 2, self.max_delay)

    def _connect(self, first: bool) -> None:
        if first:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry
            props.ReceiveMaximum = self.receive_maximum
            # Expiry > 0 with a stable client id: the broker keeps this worker's QoS 1 messages
            # (and the ones it had not acknowledged) while it restarts, so nothing is lost in
            # that window.  Never a clean start: a session this id left behind is taken up
            # even with expiry 0, so what the broker kept for it (a shared subscription keeps
            # giving a stopped member its share) is ingested before the session ends with
            # this connection -- how a worker is taken away for good (docs/server.md).
            self.client.connect(self.host, self.port, keepalive=self.keepalive, clean_start=False,
                                properties=props)
        else:
            self.client.reconnect()

    def _serve(self) -> bool:
        """Run the connection until it drops or stop(); True if it got as far as CONNACK."""
        client = self.client
        wake_r = self._wake_r
        reached = False
        disconnecting = False
        while True:
            if self._stopping and not disconnecting:
                # From this thread, so it goes out after every acknowledgement queued before
                # stop(); paho closes the socket once it is written.
                disconnecting = True
                client.disconnect()
            sock = client.socket()
            if sock is None:
                return reached
            timeout = 0.0 if getattr(sock, "pending", lambda: 0)() else 1.0  # TLS may hold decrypted bytes
            try:
                readable, _, _ = select.select([sock, wake_r], [sock] if client.want_write() else [], [], timeout)
            except (OSError, ValueError):
                return reached  # the socket was closed under us (disconnect)
            if wake_r in readable:
                try:
                    wake_r.recv(4096)
                except BlockingIOError:
                    pass
            if sock in readable or timeout == 0.0:
                if self._read_burst() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return reached
            if client.want_write() and client.loop_write() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                return reached
            if client.loop_misc() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                return reached
            reached = reached or client.is_connected()

    def _read_burst(self) -> mqtt.MQTTErrorCode:
        # loop_read() handles one packet; keep reading while packets keep coming.  A read
        # that delivers no message (socket drained, half a packet, or a SUBACK/PINGRESP)
        # ends the burst and select() decides what next.
        # Every message of a burst came in on one broker session: a reconnect's CONNACK
        # delivers no message, so it ends a burst.
        loop_read = self.client.loop_read
        burst = self._burst
        rc = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        for _ in range(READ_BURST):
            before = len(burst)
            rc = loop_read()
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS or len(burst) == before:
                break
        if burst:
            self._burst = []
            self._on_messages(burst)
        return rc

    def _sleep(self, seconds: float) -> None:
        try:
            select.select([self._wake_r], [], [], seconds)  # stop() cuts the wait short
            self._wake_r.recv(4096)
        except (BlockingIOError, OSError, ValueError):
            pass
