"""The reply and watch topics of the wire contract (agent/protocol.py): built, parsed and
validated in one place for the agent, the collector, the teacher client and the ACLs."""

from __future__ import annotations

import pytest

from agent import protocol

P = protocol.DEFAULT_PREFIX
ALERT_ID = "0b0e5a52-9f55-4a3c-8c51-1c1f6c5a1f00"


def test_reply_topic_round_trip():
    text = protocol.reply_topic(P, "penny-acres", "5b", "5b-pi-01", "m.khan")
    assert text == "classroom/v1/penny-acres/5b/5b-pi-01/reply/m.khan"
    where, data = protocol.parse_staff_message(text, b'{"cmd": "ack", "alert_id": "%s", "by": "someone-else"}'
                                               % ALERT_ID.encode())
    assert (where.kind, where.site, where.room, where.device, where.staff) == \
        ("reply", "penny-acres", "5b", "5b-pi-01", "m.khan")
    assert data["cmd"] == "ack"          # "by" is in the payload but the sender is where.staff


def test_watch_topic_round_trip():
    text = protocol.watch_topic(P, "penny-acres", "5b", "m.khan")
    assert text == "classroom/v1/penny-acres/5b/_watch/m.khan"
    where, data = protocol.parse_staff_message(text, b'{"state": "watching", "ts": "2026-11-24T10:00:00Z", '
                                               b'"client": "classroom-alerts"}')
    assert (where.kind, where.room, where.device, where.staff) == ("watch", "5b", None, "m.khan")
    assert protocol.RETAINED == {"status", "alert", "watch"}


@pytest.mark.parametrize("text, reason", [
    ("classroom/v1/penny-acres/5b/5b-pi-01/reply/M.Khan", "is not a staff username"),
    ("classroom/v1/penny-acres/5b/5b-pi-01/reply/+", "is not a staff username"),
    ("classroom/v1/penny-acres/5b/_watch/a/b", "is not a reply or watch topic"),
    ("classroom/v1/penny-acres/5b/_bad/reply/m.khan", "device '_bad' is not a valid id"),
    ("other/penny-acres/5b/_watch/m.khan", "is not under"),
])
def test_bad_staff_topics(text, reason):
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.parse_staff_topic(text)


@pytest.mark.parametrize("kind, payload, reason", [
    ("reply", {"cmd": "lock", "alert_id": ALERT_ID}, "cmd: 'lock' is not one of ack, clear"),
    ("reply", {"cmd": "clear", "alert_id": "nope"}, "alert_id: 'nope' is not a UUID"),
    ("watch", {"state": "asleep", "ts": "2026-11-24T10:00:00Z"}, "state: 'asleep' is not one of watching, gone"),
    ("watch", {"state": "gone"}, "ts: is required"),
])
def test_bad_staff_payloads(kind, payload, reason):
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.validate(kind, payload)


def test_a_device_id_can_never_look_like_the_watch_level():
    assert not protocol.ID_RE.match(protocol.WATCH)
    with pytest.raises(protocol.ProtocolError):
        protocol.topic(P, "penny-acres", "5b", protocol.WATCH, "status")
