"""The school timetable (server/timetable/): the MIS exports of SIMS, Arbor and Wonde read into
lessons, every problem named ``FILE:LINE: COLUMN: message`` with nothing changed, the CLI,
who is teaching in a room at a moment (the changeover margin, cover on its date), the
office's cover page, and the broker's ACL for timetabled staff against a real mosquitto."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config import ConfigInvalid
from server.timetable.mis import import_file, parse
from server.timetable.now import rooms_now, staff_now
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, REPO, SITE, add_staff

pytestmark = pytest.mark.timeout(60)
LONDON = ZoneInfo("Europe/London")
TUESDAY = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)  # 10:00 GMT, a Tuesday in term


def accounts():
    return [{"username": "m.khan", "display_name": "Mr M Khan"}, {"username": "a.jones", "display_name": "Mrs A Jones"},
            {"username": "s.patel", "display_name": None}]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


SIMS = """Period,Start Time,End Time,Room,Staff Code,Class
Mon:1,09:00,10:00,Year 5 Beech,MKH,5B Maths
Tue:3,10:45,11:45,5b,MKH,5B English
Tue:1,09:00,10:00,Reception,AJO,Reception Phonics
"""
SIMS_MAP = """staff:
  MKH: m.khan
  AJO: a.jones
rooms:
  Hall: "-"
"""


def test_sims_layout_with_a_map_file(tmp_path, tree):
    parsed = parse(write(tmp_path, "sims.csv", SIMS), tree, accounts(), map_file=write(tmp_path, "map.yaml", SIMS_MAP))
    got = [(x.day, x.start_time, x.end_time, x.room, x.staff, x.period, x.label, x.line) for x in parsed.lessons]
    assert got == [(0, "09:00", "10:00", "5b", "m.khan", "1", "5B Maths", 2),
                   (1, "10:45", "11:45", "5b", "m.khan", "3", "5B English", 3),
                   (1, "09:00", "10:00", "reception", "a.jones", "1", "Reception Phonics", 4)]


def test_arbor_layout_display_names_welsh_days_periods_and_a_semicolon_file(tmp_path, tree):
    text = ("\ufeffDay;Period;Start Time;End Time;Room;Staff;Class\n"
            "Monday;P1;9:00 am;10:00;1A;Mrs A Jones | Mr M Khan;1A Science\n"
            "Dydd Mawrth;P2;;;Year 5 Beech;Mr M Khan;5B Art\n"
            "Tuesday;P1;9.00;10.00;Hall;Mrs A Jones;Assembly\n"
            "Wednesday;PPA;13:00;14:00;;Mrs A Jones;PPA\n")
    periods = write(tmp_path, "bells.csv", "period,start,end\nP2,10:05,11:00\n")
    parsed = parse(write(tmp_path, "arbor.csv", text), tree, accounts(), map_file=write(tmp_path, "m.yaml", SIMS_MAP),
                   periods_file=periods)
    got = [(x.day, x.start_time, x.end_time, x.room, x.staff) for x in parsed.lessons]
    assert got == [(0, "09:00", "10:00", "1a", "a.jones"), (0, "09:00", "10:00", "1a", "m.khan"),
                   (1, "10:05", "11:00", "5b", "m.khan")]
    assert parsed.skipped_rooms == {"Hall": 1} and parsed.empty_rows == 1


def test_wonde_layout_school_emails_and_times_from_the_same_period(tmp_path, tree):
    text = ("Class Name,Period Day,Period Start Time,Period End Time,Room Name,Employee Email,Period\n"
            "5B Maths,Thursday,2026-09-03T13:15:00,2026-09-03T14:15:00,5b,m.khan@penny-acres.sch.uk,5\n"
            "5B Music,Friday,,,5b,m.khan@penny-acres.sch.uk,5\n")
    parsed = parse(write(tmp_path, "wonde.csv", text), tree, accounts())
    assert [(x.day, x.start_time, x.end_time, x.staff, x.label) for x in parsed.lessons] == [
        (3, "13:15", "14:15", "m.khan", "5B Maths"), (4, "13:15", "14:15", "m.khan", "5B Music")]


def test_every_problem_is_named_file_line_column(tmp_path, tree):
    text = ("Day,Start,End,Room,Teacher\n"
            "Mon,09:00,10:00,reseption,m.khan\n"  # a room that is not in the config
            "Tue,09:00,10:00,5b,m.kahn\n"        # a typo in a username
            "Wed,25:00,10:00,5b,m.khan\n"        # not a time
            "Thu,10:00,09:00,5b,m.khan\n"        # ends before it starts
            "Funday,09:00,10:00,5b,m.khan\n"     # not a day
            "Fri,09:00,10:00,5b,m.khan\n")       # good
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ConfigInvalid) as caught:
        parse(path, tree, accounts())
    lines = [str(e) for e in caught.value.errors]
    assert lines == [
        f"{path}:2: Room: 'reseption' is not a room of the config (did you mean 'reception'?) (map it in --map "
        "rooms:, or '-' if "
        "it has no classroom devices)",
        f"{path}:3: Teacher: 'm.kahn' is not a staff account (did you mean 'm.khan'?) (add them with "
        "`classroom-server user add`, or map it in --map staff:)",
        f"{path}:4: Start: '25:00' is not a time (HH:MM)",
        f"{path}:5: End: 09:00 is not after the start, 10:00",
        f"{path}:6: Day: 'Funday' is not a day of the week (Mon..Sun, Monday, 1..7)",
    ]


@pytest.mark.parametrize("text, message", [
    ("Day,Start,End,Rooom,Teacher\nMon,09:00,10:00,5b,m.khan\n", "1: header: no room column: name one room, room name"),
    ("Room,Teacher\n5b,m.khan\n", "1: header: needs a period column or start and end columns"),
    ("Period,Room,Teacher\n2Mon:1,5b,m.khan\n", "2: Period: '2Mon:1' is in week 2: two-week timetables"),
    ("Day,Period,Room,Teacher\nMon,4,5b,m.khan\n", "2: Period: no start and end time for period '4'"),
    ("", "1: no header row"),
])
def test_bad_files(tmp_path, tree, text, message):
    path = write(tmp_path, "t.csv", text)
    with pytest.raises(ConfigInvalid) as caught:
        parse(path, tree, accounts())
    assert message in str(caught.value.errors[0]), caught.value.errors


def test_a_bad_import_keeps_the_last_good_timetable(tmp_path, tree, store):
    for name in ("m.khan", "a.jones"):
        add_staff(store, name, "teacher")
    good = write(tmp_path, "good.csv", "Day,Start,End,Room,Staff\nMon,09:00,10:00,5b,m.khan\nTue,09:00,10:00,1a,a.jones\n")
    parsed, import_id = import_file(store, tree, good, by="cli")
    assert len(parsed.lessons) == 2
    bad = write(tmp_path, "bad.csv", "Day,Start,End,Room,Staff\nMon,09:00,10:00,5b,m.khan\nTue,09:00,10:00,1a,nobody\n")
    with pytest.raises(ConfigInvalid):
        import_file(store, tree, bad, by="cli")
    assert [(r["room"], r["staff"]) for r in store.timetable(SITE)] == [("5b", "m.khan"), ("1a", "a.jones")]
    last = store.last_timetable_import(SITE)
    assert (last["id"], last["source"], last["lessons"]) == (import_id, "good.csv", 2)
    [entry] = [a for a in store.list_audit() if a["action"] == "timetable.import"]
    assert entry["actor"] == "cli" and "good.csv" in entry["details"]


def test_who_is_teaching_now_with_the_changeover_and_cover(store, tree):
    store.replace_timetable(SITE, [
        {"day": 1, "start_time": "10:00", "end_time": "11:00", "room": "1a", "staff": "a.jones"},
        {"day": 1, "start_time": "11:00", "end_time": "12:00", "room": "5b", "staff": "a.jones"},
        {"day": 2, "start_time": "10:00", "end_time": "11:00", "room": "5b", "staff": "m.khan"},
    ], by="test", source="t.csv", sha256="0" * 64)
    at = lambda h, m: TUESDAY.replace(hour=h, minute=m)  # noqa: E731 - GMT in November: school time is UTC
    assert rooms_now(store, tree, "a.jones", at(9, 54)) == ()
    assert rooms_now(store, tree, "a.jones", at(9, 55)) == ("1a",)          # walking in early
    assert rooms_now(store, tree, "a.jones", at(10, 57)) == ("1a", "5b")    # the changeover
    assert rooms_now(store, tree, "a.jones", at(12, 4)) == ("5b",)          # the lesson ran late
    assert rooms_now(store, tree, "a.jones", at(12, 5)) == ()
    assert rooms_now(store, tree, "m.khan", at(10, 30)) == ()               # Wednesday's lesson
    store.add_cover(SITE, "2026-11-24", "10:15", "11:00", "5b", "m.khan", by="office")
    assert rooms_now(store, tree, "m.khan", at(10, 30)) == ("5b",)
    assert rooms_now(store, tree, "m.khan", TUESDAY.replace(day=26, hour=10, minute=30)) == ()  # a Thursday
    assert staff_now(store, tree, "5b", at(10, 58)) == [
        {"staff": "a.jones", "source": "timetable", "until": "12:00"},
        {"staff": "m.khan", "source": "cover", "until": "11:00"}]
    # Summer time: the school's clock, not UTC (10:30 BST is 09:30 UTC).
    june = datetime(2027, 6, 8, 9, 30, tzinfo=timezone.utc)
    assert june.astimezone(LONDON).hour == 10 and rooms_now(store, tree, "a.jones", june) == ("1a",)


def test_the_cli_prints_each_problem_and_keeps_the_timetable(tmp_path):
    db = f"sqlite:///{tmp_path}/server.db"
    from server.store import Store

    store = Store.open(db)
    add_staff(store, "m.khan", "teacher")
    store.close()
    cli = [str(Path(sys.executable).parent / "classroom-server"), "timetable"]
    good = write(tmp_path, "good.csv", "Day,Start,End,Room,Staff\nMon,09:00,10:00,5b,m.khan\n")
    bad = write(tmp_path, "bad.csv", "Day,Start,End,Room,Staff\nMon,09:00,10:00,5b,m.kahn\nTue,9,10:00,5b,m.khan\n")
    config = ["--config", str(REPO / "config"), "--db", db]
    r = subprocess.run([*cli, "import", str(good), *config], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{good}: ok: 1 lessons, 1 staff in 1 rooms (site penny-acres)")
    assert "broker-config --db" in r.stdout
    r = subprocess.run([*cli, "import", str(bad), *config], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1
    err = r.stderr.splitlines()
    assert err[0] == (f"{bad}:2: Staff: 'm.kahn' is not a staff account (did you mean 'm.khan'?) (add them with "
                      "`classroom-server user add`, or map it in --map staff:)")
    assert err[1] == f"{bad}:3: Start: '9' is not a time (HH:MM)"
    assert err[2].startswith(f"classroom-server: 2 problem(s) found in {bad}; the timetable in use was kept "
                             "(1 lessons from good.csv")
    r = subprocess.run([*cli, "show", *config], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and "Mon 09:00-10:00  5b" in r.stdout and "m.khan" in r.stdout


# --------------------------------------------------------------------------- the office's cover page


def test_the_office_enters_and_removes_cover(sqlite_store, app_factory, tree):
    from web_fixtures import form_client

    app = app_factory(sqlite_store)
    office = form_client(app)
    assert office.post("/login", data={"username": "office", "password": PASSWORD}).status_code == 303
    page = office.get("/cover")
    assert page.status_code == 200 and 'id="cover-form"' in page.text
    bad = office.post("/cover", data={"room": "5b", "staff": "m.khan", "day": "2026-11-24", "start": "11:00",
                                      "end": "10:00"})
    assert bad.status_code == 422 and "is not after" in bad.text
    assert sqlite_store.covers(SITE, "2026-11-24") == []
    r = office.post("/cover", data={"room": "1a", "staff": "m.khan", "day": "2026-11-24", "start": "10:00",
                                    "end": "11:00", "note": "Mrs Jones at a course"})
    assert r.status_code == 303 and r.headers["location"] == "/cover?day=2026-11-24"
    [cover] = sqlite_store.covers(SITE, "2026-11-24")
    assert (cover["room"], cover["staff"], cover["by_whom"], cover["note"]) == ("1a", "m.khan", "office",
                                                                                "Mrs Jones at a course")
    assert "Mrs Jones at a course" in office.get("/cover?day=2026-11-24").text
    assert office.post(f"/cover/{cover['id']}/remove", data={"day": "2026-11-24"}).status_code == 303
    assert sqlite_store.covers(SITE, "2026-11-24") == []
    actions = [a["action"] for a in sqlite_store.list_audit() if a["actor"] == "office"]
    assert "cover.add" in actions and "cover.remove" in actions
    teacher = form_client(app)
    teacher.post("/login", data={"username": "m.khan", "password": PASSWORD})
    assert teacher.get("/cover").status_code == 403


# --------------------------------------------------------------------------- the broker's ACL


def test_timetabled_staff_get_their_rooms_in_the_acl(tree):
    from server.broker_config import build_accounts

    accounts = build_accounts(tree, timetabled={"k.evans": ["1a", "gone-room"], "m.khan": ["1a"]})
    evans = accounts["k.evans"]  # in no room's alert_staff: the timetable alone
    assert evans.roles == ["teacher"]
    assert set(evans.rules) == {("read", "classroom/v1/penny-acres/1a/+/alert"),
                                ("read", "classroom/v1/penny-acres/1a/+/status"),
                                ("write", "classroom/v1/penny-acres/1a/+/reply/k.evans"),
                                ("write", "classroom/v1/penny-acres/1a/_watch/k.evans")}
    assert ("read", "classroom/v1/penny-acres/1a/+/alert") in accounts["m.khan"].rules  # besides their own 5b
    assert ("read", "classroom/v1/penny-acres/5b/+/alert") in accounts["m.khan"].rules
    assert "k.evans" not in build_accounts(tree)


@pytest.mark.integration
def test_broker_config_db_lets_a_timetabled_teacher_hear_and_answer_their_room_only(tmp_path, mosquitto_factory):
    import yaml

    from agent.protocol import encode, new_id
    from broker_fixtures import PREFIX, Recorder, alert_payload, t
    from server.broker_config import HARDENING
    from server.store import Store
    from services import close_client, mqtt_client

    db = f"sqlite:///{tmp_path}/server.db"
    store = Store.open(db)
    store.replace_timetable(SITE, [{"day": 0, "start_time": "09:00", "end_time": "10:00", "room": "1a",
                                    "staff": "k.evans"}], by="test", source="t.csv", sha256="0" * 64)
    store.close()
    out = tmp_path / "broker"
    r = subprocess.run([str(Path(sys.executable).parent / "classroom-server"), "broker-config", "--config", str(REPO / "config"),
                        "--out", str(out), "--db", db], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    passwords = {p.stem: yaml.safe_load(p.read_text())["password"] for p in (out / "credentials").glob("*.yaml")}
    broker = mosquitto_factory("\n".join(HARDENING), password_file=out / "passwd", acl_file=out / "acl",
                               allow_anonymous=False)
    clients = []

    def connect(name):
        c = mqtt_client(broker, username=name, password=passwords[name])
        clients.append(c)
        return c

    try:
        import threading

        teacher = connect("k.evans")
        seen = Recorder()
        teacher.on_message = seen
        done = threading.Event()
        teacher.on_subscribe = lambda *a: done.set()
        teacher.subscribe(f"{PREFIX}/{SITE}/+/+/alert", qos=1)
        assert done.wait(10)
        other = alert_payload("5b", "5b-pi-01")
        own = alert_payload("1a", "1a-pi-01")
        for device, room, payload in (("5b-pi-01", "5b", other), ("1a-pi-01", "1a", own)):
            connect(device).publish(t(room, device, "alert"), payload, qos=1).wait_for_publish(10)
        seen.wait(lambda rec: own in rec.payloads())
        assert seen.payloads() == [own]  # 5b's press was published first: silence there is the ACL
        device = connect("1a-pi-01")
        heard = Recorder()
        device.on_message = heard
        done.clear()
        device.on_subscribe = lambda *a: done.set()
        device.subscribe(f"{PREFIX}/{SITE}/1a/1a-pi-01/reply/+", qos=1)
        assert done.wait(10)
        forged = encode({"cmd": "ack", "alert_id": new_id()})
        teacher.publish(f"{PREFIX}/{SITE}/1a/1a-pi-01/reply/m.khan", forged, qos=1).wait_for_publish(10)
        answer = encode({"cmd": "ack", "alert_id": new_id()})
        teacher.publish(f"{PREFIX}/{SITE}/1a/1a-pi-01/reply/k.evans", answer, qos=1).wait_for_publish(10)
        heard.wait(lambda rec: answer in rec.payloads())
        assert heard.topics() == [f"{PREFIX}/{SITE}/1a/1a-pi-01/reply/k.evans"]
    finally:
        for c in clients:
            close_client(c)
