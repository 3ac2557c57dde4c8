"""Raw MQTT 3.1.1 packets for the benches that hold thousands of connections.

Why not paho: a paho client costs a thread and ~1 MB per connection, and a bench holding
10,000 (bench/alert_latency.py) or 20,000 (bench/trust.py) devices in a few processes would
measure itself, not the brokers and the collector.  These are bytes to write on a plain
socket with a selector: CONNECT (with a Last Will and an account), PUBLISH and SUBSCRIBE.
"""

from __future__ import annotations

import struct


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def mqtt_connect(client_id: str, keepalive: int, will: tuple[str, bytes] | None = None,
                 username: str | None = None, password: str | None = None) -> bytes:
    flags = 0x02
    payload = _str(client_id)
    if will:
        flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retain
        payload += _str(will[0]) + _str(will[1])
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _varint(len(body)) + body


def mqtt_publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False, mid: int = 1) -> bytes:
    body = _str(topic) + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | (qos << 1) | int(retain)]) + _varint(len(body)) + body


def mqtt_subscribe(topic: str, qos: int = 1, mid: int = 1) -> bytes:
    body = struct.pack("!H", mid) + _str(topic) + bytes([qos])
    return b"\x82" + _varint(len(body)) + body
