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


# --------------------------------------------------------------------------- room commands (issue 16)

GOOD_CMDS = [
    {"cmd": "lock", "by": "m.khan", "id": ALERT_ID, "minutes": 2, "message": "Eyes on me, please"},
    {"cmd": "lock", "by": "m.khan"},
    {"cmd": "unlock", "by": "m.khan", "id": ALERT_ID},
    {"cmd": "message", "by": "m.khan", "id": ALERT_ID, "text": "Tidy up in two minutes", "seconds": 60},
    {"cmd": "message", "by": "m.khan", "text": "Croeso! Bore da, Blwyddyn 5 \N{SPARKLES}"},
]


@pytest.mark.parametrize("payload", GOOD_CMDS)
def test_room_commands_follow_the_contract(payload):
    assert protocol.validate("cmd", dict(payload)) == payload


@pytest.mark.parametrize("payload, reason", [
    ({"cmd": "lock", "by": "m.khan", "minutes": 61}, "minutes: 61 is not between 1 and 60"),
    ({"cmd": "lock", "by": "m.khan", "minutes": True}, "minutes: True is not a number"),
    ({"cmd": "lock", "by": "m.khan", "message": "x" * 121}, "message: must be 1 to 120 characters"),
    ({"cmd": "lock", "by": "m.khan", "id": "7"}, "id: '7' is not a UUID"),
    ({"cmd": "message", "by": "m.khan"}, "text: is required"),
    ({"cmd": "message", "by": "m.khan", "text": "   "}, "text: must be 1 to 120 characters"),
    ({"cmd": "message", "by": "m.khan", "text": "two\nlines"}, "text: must be one line of printable text"),
    ({"cmd": "message", "by": "m.khan", "text": "hi", "seconds": 3600}, "seconds: 3600 is not between 5 and 600"),
    ({"cmd": "message", "text": "hi"}, "by: is required"),
])
def test_bad_room_commands(payload, reason):
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.validate("cmd", payload)


def test_cmd_result_events():
    event = {"id": protocol.new_id(), "type": "cmd_result", "ts": "2026-11-24T10:00:00.000Z", "site": "penny-acres",
             "room": "5b", "device": "5b-pi-01", "cmd_id": ALERT_ID, "cmd": "lock", "by": "m.khan", "result": "done"}
    assert protocol.validate("event", dict(event)) == event
    for bad, reason in (({"result": "maybe"}, "result: 'maybe' is not one of done, refused"),
                        ({"cmd_id": "x"}, "cmd_id: 'x' is not a UUID"),
                        ({"error": 7}, "error: 7 is not a str")):
        with pytest.raises(protocol.ProtocolError, match=reason):
            protocol.validate("event", {**event, **bad})
