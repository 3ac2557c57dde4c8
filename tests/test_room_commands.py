"""A teacher's room commands through the collector's API (server/http/api/commands.py): who
may send them to which room, that ``by`` is always the logged-in account, what each device
is sent, the audit log, the lesson's end for "allow", and the devices' answers and locks as
ingest stores them (server/store/commands.py, on SQLite and PostgreSQL).

The same commands against real mosquitto, the real agent and a real browser are in
tests/test_room_page_e2e.py."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from agent import protocol
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import SITE, make_event, topic_of

pytestmark = pytest.mark.timeout(60)
LONDON = ZoneInfo("Europe/London")


class Recorder:
    """The collector's publisher, recording instead of reaching a broker."""

    def __init__(self):
        self.sent: list[tuple[str, dict, int]] = []

    def __call__(self, topic: str, payload: bytes, qos: int) -> None:
        self.sent.append((topic, protocol.decode(payload), qos))


@pytest.fixture
def rig(sqlite_store, app_factory, staff_client):
    publisher = Recorder()
    app = app_factory(sqlite_store, publisher=publisher)
    return app, sqlite_store, publisher, lambda role: staff_client(app, role)


def lesson_now(store, room: str, staff: str, minutes_left: int = 25, now: datetime | None = None) -> None:
    """A timetable with one lesson of *staff* in *room* running now, ending in *minutes_left*."""
    local = (now or datetime.now(timezone.utc)).astimezone(LONDON)
    start = max(local.replace(hour=0, minute=0), local - timedelta(minutes=20))
    end = min(local.replace(hour=23, minute=59), local + timedelta(minutes=minutes_left))
    store.replace_timetable(SITE, [{"day": local.weekday(), "start_time": f"{start:%H:%M}",
                                    "end_time": f"{end:%H:%M}", "room": room, "staff": staff}],
                            by="test", source="test.csv", sha256="0" * 64)


def test_eyes_on_me_goes_to_every_device_as_the_teacher_and_is_audited(rig):
    app, store, publisher, client = rig
    r = client("teacher").post("/api/v1/rooms/5b/lock", json={"minutes": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [t for t, _, _ in publisher.sent] == [topic_of("5b", "5b-pi-01", "cmd"), topic_of("5b", "5b-pi-02", "cmd")]
    for _, payload, qos in publisher.sent:
        assert payload == {"cmd": "lock", "id": body["id"], "by": "m.khan", "minutes": 2,
                           "message": "Eyes on me, please"}
        assert qos == 1
        protocol.validate("cmd", payload)
    assert [d["device"] for d in body["devices"]] == ["5b-pi-01", "5b-pi-02"]
    assert body["answer_seconds"] == 2.0
    [entry] = [a for a in store.list_audit() if a["action"] == "room.lock"]
    assert entry["actor"] == "m.khan" and entry["target"] == "5b" and body["id"] in entry["details"]
    [command] = store.room_commands(SITE, "5b")
    assert command["by"] == "m.khan" and command["details"] == {"minutes": 2, "message": "Eyes on me, please"}
    assert [(d["device"], d["result"]) for d in command["devices"]] == [("5b-pi-01", None), ("5b-pi-02", None)]


def test_the_browser_can_never_say_who_sent_it(rig):
    app, store, publisher, client = rig
    teacher = client("teacher")
    for path, body in (("lock", {"by": "s.patel"}), ("message", {"text": "hi", "by": "s.patel"}),
                       ("allow", {"domain": "example.org", "reason": "x", "by": "s.patel"}),
                       ("unlock", {"id": str(uuid.uuid4())})):
        r = teacher.post(f"/api/v1/rooms/5b/{path}", json=body)
        assert r.status_code == 422, (path, r.text)
    assert publisher.sent == []
    # The DSL's command carries the DSL's name, not the room teacher's.
    assert client("dsl").post("/api/v1/rooms/5b/unlock", json={}).status_code == 200
    assert {p["by"] for _, p, _ in publisher.sent} == {"s.patel"}


def test_rooms_a_teacher_may_command_follow_alert_staff_timetable_and_cover(rig):
    app, store, publisher, client = rig
    teacher = client("teacher")
    assert teacher.post("/api/v1/rooms/1a/lock", json={}).status_code == 404
    assert teacher.get("/api/v1/rooms/1a/commands").status_code == 404
    assert teacher.post("/api/v1/rooms/nowhere/lock", json={}).status_code == 404
    # Timetabled in 1a now: 1a too, for the length of the lesson.
    lesson_now(store, "1a", "m.khan")
    assert teacher.post("/api/v1/rooms/1a/lock", json={}).status_code == 200
    assert teacher.get("/rooms").text.count('href="/rooms/') == 2
    # Covering reception today, entered by the office.
    store.replace_timetable(SITE, [], by="test", source="empty.csv", sha256="0" * 64)
    assert teacher.post("/api/v1/rooms/1a/lock", json={}).status_code == 404
    local = datetime.now(timezone.utc).astimezone(LONDON)
    store.add_cover(SITE, local.date().isoformat(), "00:00", "23:59", "reception", "m.khan", by="office")
    assert teacher.post("/api/v1/rooms/reception/message", json={"text": "Lunch time"}).status_code == 200
    store.add_cover(SITE, (local.date() + timedelta(days=1)).isoformat(), "00:00", "23:59", "1a", "m.khan",
                    by="office")
    assert teacher.post("/api/v1/rooms/1a/lock", json={}).status_code == 404  # tomorrow's cover is tomorrow's
    # The DSL and admins: every room; the office and technicians: none.
    assert client("dsl").post("/api/v1/rooms/1a/lock", json={}).status_code == 200
    assert client("admin").post("/api/v1/rooms/1a/unlock", json={}).status_code == 200
    assert client("office").post("/api/v1/rooms/1a/lock", json={}).status_code == 403
    assert client("technician").post("/api/v1/rooms/1a/lock", json={}).status_code == 403


def test_one_device_and_bad_bodies(rig):
    app, store, publisher, client = rig
    teacher = client("teacher")
    r = teacher.post("/api/v1/rooms/5b/lock", json={"devices": ["5b-pi-02"]})
    assert r.status_code == 200 and [t for t, _, _ in publisher.sent] == [topic_of("5b", "5b-pi-02", "cmd")]
    assert publisher.sent[0][1].keys() == {"cmd", "id", "by"}  # a plain lock: until a staff unlock
    publisher.sent.clear()
    for path, body, word in (
            ("lock", {"devices": ["1a-pi-01"]}, "not a device of room 5b"),
            ("lock", {"minutes": 61}, "minutes"),
            ("lock", {"message": "\u200e\u0000"}, "one line"),
            ("lock", {"message": "x" * 121}, "message"),
            ("message", {"text": ""}, "text"),
            ("message", {"text": "a\tb\u0007"}, "one line"),
            ("message", {"text": "hi", "seconds": 3600}, "seconds"),
            ("allow", {"domain": "not a domain", "reason": "maths"}, "domain"),
            ("allow", {"domain": "example.org"}, "reason")):
        r = teacher.post(f"/api/v1/rooms/5b/{path}", json=body)
        assert r.status_code == 422 and word in r.text, (path, body, r.text)
    assert publisher.sent == []
    # Spaces and line breaks typed into the box become one line of single spaces.
    r = teacher.post("/api/v1/rooms/5b/message", json={"text": "  Tidy   up\nnow  ", "seconds": 30})
    assert r.status_code == 200
    assert publisher.sent[0][1]["text"] == "Tidy up now" and publisher.sent[0][1]["seconds"] == 30


def test_allow_lasts_until_the_lesson_ends(rig, monkeypatch):
    app, store, publisher, client = rig
    teacher = client("teacher")
    # No lesson running: the device decides (the end of its lesson or school day).
    r = teacher.post("/api/v1/rooms/5b/allow", json={"domain": "WWW.Example.org.", "reason": "Science"})
    assert r.status_code == 200
    assert publisher.sent[-1][1] == {"cmd": "allow", "id": r.json()["id"], "by": "m.khan",
                                     "domain": "www.example.org", "reason": "Science"}
    assert teacher.post("/api/v1/rooms/5b/allow", json={"domain": "example.org", "reason": "x",
                                                        "minutes": 241}).status_code == 422  # override_max_minutes
    # Midday today on the collector's clock: a 25-minute lesson always fits in the day,
    # whenever the suite runs.
    from server.http.api import commands

    now = datetime.now(timezone.utc).astimezone(LONDON).replace(hour=12, minute=0).astimezone(timezone.utc)

    class Midday(datetime):
        @classmethod
        def now(cls, tz=None):
            return now.astimezone(tz) if tz else now.replace(tzinfo=None)

    monkeypatch.setattr(commands, "datetime", Midday)
    lesson_now(store, "5b", "m.khan", minutes_left=25, now=now)
    r = teacher.post("/api/v1/rooms/5b/allow", json={"domain": "example.org", "reason": "Science"})
    assert r.status_code == 200
    assert 24 <= publisher.sent[-1][1]["minutes"] <= 25
    r = teacher.post("/api/v1/rooms/5b/allow", json={"domain": "example.org", "reason": "Science", "minutes": 60})
    assert r.status_code == 422 and "the lesson ends in" in r.text
    r = teacher.post("/api/v1/rooms/5b/allow", json={"domain": "example.org", "reason": "Science", "minutes": 10})
    assert r.status_code == 200 and publisher.sent[-1][1]["minutes"] == 10
    audit = [a for a in store.list_audit() if a["action"] == "room.allow"]
    assert len(audit) == 3 and all(a["actor"] == "m.khan" for a in audit)


def test_no_broker_nothing_is_recorded_as_sent(sqlite_store, app_factory, staff_client):
    app = app_factory(sqlite_store, publisher=None)
    r = staff_client(app, "teacher").post("/api/v1/rooms/5b/lock", json={})
    assert r.status_code == 503
    assert sqlite_store.room_commands(SITE, "5b") == []


# --------------------------------------------------------------------------- the store


def _result(cmd_id: str, device: str, result: str = "done", room: str = "5b", **extra) -> dict:
    return make_event(room=room, device=device, type="cmd_result", cmd_id=cmd_id, cmd="lock", by="m.khan",
                      result=result, **extra)


def _ingest(store, *events):
    items = []
    for e in events:
        protocol.validate("event", e)
        items.append((protocol.parse_topic(topic_of(e["room"], e["device"], "event")), e))
    return store.ingest(items)


def test_each_device_answers_only_for_itself_and_once(store):
    cmd_id = str(uuid.uuid4())
    store.add_room_command(cmd_id, SITE, "5b", ["5b-pi-01", "5b-pi-02"], "lock", "m.khan", {"minutes": 1})
    _ingest(store, _result(cmd_id, "5b-pi-01"))
    # Another room's device naming this command answers nothing (its topic says who it is).
    _ingest(store, _result(cmd_id, "1a-pi-01", room="1a"))
    # A second answer (a redelivery, or a forgery after the first) does not change the first.
    _ingest(store, _result(cmd_id, "5b-pi-01", result="refused", error="changed my mind"))
    [command] = store.room_commands(SITE, "5b")
    answers = {d["device"]: (d["result"], d["error"]) for d in command["devices"]}
    assert answers == {"5b-pi-01": ("done", None), "5b-pi-02": (None, None)}
    assert store.room_commands(SITE, "1a") == []
    # The answers are events as well, kept like any other.
    assert len(store.events(type="cmd_result")) == 3


def test_latest_commands_newest_first(store):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    store.add_room_command(first, SITE, "5b", ["5b-pi-01"], "lock", "m.khan", {}, sent_at="2026-11-24T10:00:00Z")
    store.add_room_command(second, SITE, "5b", ["5b-pi-01", "5b-pi-02"], "unlock", "s.patel", {},
                           sent_at="2026-11-24T10:01:00Z")
    _ingest(store, _result(second, "5b-pi-02", result="refused", error="held by the DSL"))
    latest = store.room_commands(SITE, "5b")
    assert [c["id"] for c in latest] == [second, first]
    assert latest[0]["devices"][1] == {"device": "5b-pi-02", "result": "refused", "error": "held by the DSL",
                                       "answered_at": latest[0]["devices"][1]["answered_at"]}
    assert [c["id"] for c in store.room_commands(SITE, "5b", limit=1)] == [second]


def test_device_locks_follow_the_newest_lock_event(store):
    lock = make_event(device="5b-pi-01", type="lock", reason="staff", by="m.khan", mode="staff",
                      until="2026-11-24T10:02:00.000Z", ts="2026-11-24T10:00:00.000Z")
    unlock = make_event(device="5b-pi-01", type="unlock", reason="expired", by="m.khan",
                        ts="2026-11-24T10:02:00.000Z")
    _ingest(store, lock)
    assert store.device_locks(SITE, "5b") == {"5b-pi-01": {"locked": True, "reason": "staff", "by": "m.khan",
                                                          "until": "2026-11-24T10:02:00.000Z",
                                                          "ts": "2026-11-24T10:00:00.000Z"}}
    _ingest(store, unlock)
    _ingest(store, {**lock, "id": str(uuid.uuid4())})  # an older lock arriving late changes nothing
    assert store.device_locks(SITE, "5b")["5b-pi-01"]["locked"] is False
    assert store.device_locks(SITE, "1a") == {}


def test_room_commands_and_cover_go_with_the_device_events(store, tree):
    from server.retention import Retention

    now = datetime(2027, 12, 1, tzinfo=timezone.utc)
    old, recent = "2026-11-24T10:00:00.000000Z", "2027-11-30T10:00:00.000000Z"
    store.add_room_command(str(uuid.uuid4()), SITE, "5b", ["5b-pi-01"], "lock", "m.khan", {}, sent_at=old)
    kept = str(uuid.uuid4())
    store.add_room_command(kept, SITE, "5b", ["5b-pi-01"], "unlock", "m.khan", {}, sent_at=recent)
    store.add_cover(SITE, "2026-11-24", "10:00", "11:00", "5b", "m.khan", by="office")
    store.execute("UPDATE cover SET created_at = ?", (old,))
    done = Retention(store, lambda: tree).run(now)
    assert done["room_commands"] == 1 and done["cover"] == 1  # events_days: 365
    assert [c["id"] for c in store.room_commands(SITE, "5b")] == [kept]
    assert store.covers(SITE, "2026-11-24") == []
