"""Bounds on what a payload may carry (agent/protocol.py): times and numbers that would
poison the store are refused with a one-line reason naming the field.

Found in review: ingest stored ``ts`` 9999-12-31 (never purged by retention) and a
``count`` of 10**400 (overflows a BIGINT, breaks every weekly sum).
"""

from __future__ import annotations

import json

import pytest

from agent import protocol

TOPIC = "classroom/v1/penny-acres/5b/5b-pi-01/event"


def blocked(**over) -> bytes:
    event = {"id": "0b0e5a52-9f55-4a3c-8c51-1c1f6c5a1f00", "type": "blocked", "ts": "2026-11-24T10:00:00.000Z",
             "site": "penny-acres", "room": "5b", "device": "5b-pi-01", "domain": "tiktok.com",
             "profile": "ks2", "count": 3}
    event.update(over)
    return json.dumps(event).encode()


@pytest.mark.parametrize("raw, reason", [
    (blocked(ts="9999-12-31T23:59:59Z"), "ts: '9999-12-31T23:59:59Z' is outside 2000-2099"),
    (blocked(ts="0001-01-01T00:00:00Z"), "ts: '0001-01-01T00:00:00Z' is outside 2000-2099"),
    (blocked(ts="2026-11-24T10:00:00" + "0" * 200 + "Z"), "is not an RFC 3339 time"),
    (blocked(count=10 ** 400), "count: " + "1" + "0" * 39 + " is out of range"),
    (blocked(count=0), "count: 0 is not between 1 and 1000000"),
    (blocked(count=5_000_000), "count: 5000000 is not between 1 and 1000000"),
    (b'{"id": "0b0e5a52-9f55-4a3c-8c51-1c1f6c5a1f00", "type": "blocked", "ts": "2026-11-24T10:00:00Z", '
     b'"site": "penny-acres", "room": "5b", "device": "5b-pi-01", "domain": "x.com", "profile": "ks2", '
     b'"count": 1e999}', "count: inf is out of range"),
])
def test_out_of_range_payloads_are_refused_with_the_field(raw, reason):
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.parse_message(TOPIC, raw)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_heartbeat_numbers_must_be_finite_and_bounded():
    topic = "classroom/v1/penny-acres/5b/5b-pi-01/heartbeat"
    good = {"ts": "2026-11-24T10:00:00Z", "cpu": 3.5, "mem": 41.0, "temp": 48.2, "uptime": 86400}
    assert protocol.parse_message(topic, json.dumps(good).encode())[1] == good
    with pytest.raises(protocol.ProtocolError, match=r"^uptime: 1e\+300 is out of range$"):
        protocol.parse_message(topic, json.dumps({**good, "uptime": 1e300}).encode())
    with pytest.raises(protocol.ProtocolError, match=r"^cpu: -inf is out of range$"):
        protocol.parse_message(topic, b'{"ts": "2026-11-24T10:00:00Z", "cpu": -1e999}')


def test_a_normal_event_still_passes():
    where, data = protocol.parse_message(TOPIC, blocked())
    assert where.device == "5b-pi-01" and data["count"] == 3
