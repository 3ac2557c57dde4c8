"""classroom-alerts: the board, notifications, the pager, and the whole loop against a real
mosquitto secured with the generated ACL (the teacher uses their own broker account)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from gpiozero.pins.mock import MockFactory

from agent.protocol import decode, encode, new_id, now_ts, validate
from broker_fixtures import PREFIX, SITE, alert_payload, secure_broker, t  # noqa: F401
from agent.config.credentials import read_password
from server.alerts.board import AlertBoard
from server.alerts.cli import keyboard_loop
from server.alerts.client import AlertsClient
from server.alerts.notify import Notifier
from server.alerts.pager import Pager
from server.alerts.view import TerminalView
from services import wait_until

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
ALERTS = str(ROOT / ".venv" / "bin" / "classroom-alerts")


def reply_to(room, device, staff="+"):
    return f"{PREFIX}/{SITE}/{room}/{device}/reply/{staff}"


def alert(state="raised", alert_id=None, room="5b", device="5b-pi-02", **extra):
    return {"id": alert_id or new_id(), "state": state, "site": SITE, "room": room, "device": device,
            "seat": "Table 2", "ts": now_ts(), **extra}


class Recording:
    def __init__(self):
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()


# --------------------------------------------------------------------------- unit


def test_board_follows_alert_states_and_never_goes_back():
    board = AlertBoard()
    first = alert()
    a, changed = board.apply_alert(first)
    assert changed and board.is_alarming and board.newest(unanswered=True) is a
    board.apply_alert(alert("acknowledged", first["id"], by="m.khan"))
    assert a.state == "acknowledged" and a.by == "m.khan" and not board.is_alarming
    # A QoS 1 redelivery of "raised" must not restart the alarm.
    _, changed = board.apply_alert(first)
    assert not changed and a.state == "acknowledged" and not board.is_alarming
    second = alert(device="5b-pi-01")
    b, _ = board.apply_alert(second)
    assert board.pick(None, unanswered=True) is b
    assert board.pick("1") is b and board.pick("2") is a
    assert board.pick(first["id"][:8]) is a and board.pick("zzz") is None
    board.apply_alert(alert("cleared", first["id"], by="m.khan"))
    assert not a.is_open and board.newest() is b
    assert board.listing() == [b]                    # cleared alerts leave the list ...
    _, changed = board.apply_alert(first)            # ... and a late copy of "raised" never brings one back
    assert not changed and board.listing() == [b]
    # Retained transitions of alerts this client never saw: open ones are shown, cleared ones are not.
    late = alert("acknowledged", by="a.jones", raised_ts="2026-11-24T10:00:00.000Z")
    c, changed = board.apply_alert(late)
    assert changed and c.state == "acknowledged" and c.ts == "2026-11-24T10:00:00.000Z"
    _, changed = board.apply_alert(alert("cleared"))
    assert not changed and len(board.listing()) == 2


def test_escalation_shows_who_it_went_to():
    board = AlertBoard()
    first = alert()
    board.apply_alert(first)
    a, changed = board.apply_alert(alert("escalated", first["id"], to=[{"name": "Mrs Patel (DSL)"}, "School office"]))
    assert changed and a.escalated_to == "Mrs Patel (DSL), School office" and board.is_alarming
    out = io.StringIO()
    TerminalView(out).render(board)
    assert "ESCALATED" in out.getvalue() and "escalated to Mrs Patel (DSL), School office" in out.getvalue()
    rec = Recording()
    Notifier(runner=rec, binary="/usr/bin/notify-send").notify(a)
    assert "escalated to Mrs Patel (DSL)" in rec.calls[0][-1]


def test_escalation_as_the_agent_sends_it():
    board = AlertBoard()
    first = alert()
    board.apply_alert(first)
    a, _ = board.apply_alert(alert("escalated", first["id"], by="system", escalated_to=["s.patel", "office"],
                                   contacts=[{"name": "Mrs Patel (DSL)", "role": "dsl", "phone": None},
                                             {"name": "School office", "role": "office", "phone": "01234 567890"}]))
    assert a.escalated_to == "Mrs Patel (DSL), School office (01234 567890)"
    b, _ = board.apply_alert(alert("escalated", new_id(), escalated_to=["s.patel"]))
    assert b.escalated_to == "s.patel"


def test_times_are_shown_in_the_sites_timezone():
    """Issue 13 item 9: the classroom clock (Europe/London: GMT in winter, BST in summer), not UTC."""
    from zoneinfo import ZoneInfo

    from server.alerts.view import local_time

    london = ZoneInfo("Europe/London")
    assert local_time("2026-11-24T10:00:00.000Z", london) == "10:00:00"      # GMT
    assert local_time("2026-06-24T10:00:00.000Z", london) == "11:00:00"      # BST
    board = AlertBoard()
    board.apply_alert(alert(ts="2026-06-24T13:05:09.000Z"))
    out = io.StringIO()
    TerminalView(out, tz=london).render(board)
    assert "14:05:09" in out.getvalue() and "13:05:09" not in out.getvalue()
    lines = io.StringIO()
    view = TerminalView(lines, as_json=True, tz=london)
    view.alert(board.listing()[0], board)
    assert json.loads(lines.getvalue())["time"] == "14:05:09"


def test_an_unknown_timezone_is_one_line_with_a_suggestion(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    r = run_cli("--room", "5b", "--broker", "mqtt://127.0.0.1:1", "--username", "m.khan", "--password-file", str(pw),
                "--timezone", "Europe/Lundon")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "--timezone: unknown timezone 'Europe/Lundon' (did you mean 'Europe/London'?)" in r.stderr


def test_notifier_issues_notify_send():
    rec = Recording()
    board = AlertBoard()
    a, _ = board.apply_alert(alert())
    Notifier(runner=rec, binary="/usr/bin/notify-send").notify(a)
    argv = rec.calls[0]
    assert argv[0] == "/usr/bin/notify-send" and "--urgency=critical" in argv
    assert argv[-2] == "Report in 5b" and "Table 2 (5b-pi-02)" in argv[-1]
    Notifier(runner=rec, binary=None).notify(a)  # not installed: silently nothing
    assert len(rec.calls) == 1


def test_pager_follows_alarm_and_button_acks(factory):
    acks = []
    pager = Pager(buzzer_pin=5, led_pin=6, button_pin=13, pin_factory=factory, on_ack=lambda: acks.append(1))
    try:
        pager.update(True)
        assert pager.buzzer.is_active and pager.led.is_lit
        pager.update(False)
        assert not pager.is_active
        factory.pin(13).drive_low()
        wait_until(lambda: acks, 5)
    finally:
        pager.close()


def test_pin_factory_by_name():
    from agent.errors import UserError
    from agent.config.pins import make_pin_factory

    assert make_pin_factory(None, "--pin-factory") is None
    assert isinstance(make_pin_factory("mock", "--pin-factory"), MockFactory)
    with pytest.raises(UserError, match=r"--pin-factory: unknown gpiozero pin factory 'mok' \(did you mean 'mock'\?\)"):
        make_pin_factory("mok", "--pin-factory")


def test_malformed_payloads_are_ignored_with_one_line(caplog):
    client = AlertsClient(broker="mqtt://127.0.0.1:1", username="m.khan", password="x", room="5b", site=SITE)
    bad = [
        (t("5b", "5b-pi-02", "alert"), b"not json"),
        (t("5b", "5b-pi-02", "alert"), encode({**alert(), "state": "panic"})),
        (t("5b", "5b-pi-02", "alert"), encode({**alert(), "device": "5b-pi-01"})),  # speaks for another device
        (t("5b", "5b-pi-02", "alert"), b"\xff\xfe"),
        ("elsewhere/x", b"{}"),
    ]
    with caplog.at_level(logging.WARNING, logger="classroom-alerts"):
        for topic_text, payload in bad:
            client._on_message(None, None, SimpleNamespace(topic=topic_text, payload=payload))
    assert len(caplog.records) == len(bad)
    assert all("\n" not in r.getMessage() and "ignored malformed message" in r.getMessage() for r in caplog.records)
    assert "state" in caplog.records[1].getMessage() and "device" in caplog.records[2].getMessage()
    assert client.board.alerts == {}


def test_password_file_forms(tmp_path):
    p = tmp_path / "pw"
    p.write_text("username: m.khan\npassword: s3cret\n")
    assert read_password(p) == "s3cret"
    p.write_text("# my password\nplain-one\n")
    assert read_password(p) == "plain-one"
    p.write_text("\n")
    with pytest.raises(Exception, match="empty"):
        read_password(p)


# --------------------------------------------------------------------------- real mosquitto


def start_client(sb, username="m.khan", room="5b", **kw):
    client = AlertsClient(broker=f"mqtt://127.0.0.1:{sb.broker.port}", username=username,
                          password=sb.passwords[username], room=room, site=SITE,
                          view=TerminalView(io.StringIO(), as_json=True), **kw)
    return client.start()


@pytest.mark.integration
def test_raise_ack_clear_round_trip_with_pager(secure_broker, factory):
    sb = secure_broker
    rec = Recording()
    box = {}
    pager = Pager(buzzer_pin=5, led_pin=6, button_pin=13, pin_factory=factory, on_ack=lambda: box["c"].ack())
    client = box["c"] = start_client(sb, notifier=Notifier(runner=rec, binary="notify-send"), pager=pager)
    try:
        # One connection per account (the broker ties the client id to the username).
        dev, cmds = sb.subscriber("5b-pi-02", reply_to("5b", "5b-pi-02"))
        raised = alert()
        sb.publish(dev, t("5b", "5b-pi-02", "alert"), encode(raised))
        wait_until(lambda: raised["id"] in client.board.alerts, 10)
        assert pager.buzzer.is_active and pager.led.is_lit
        assert rec.calls and rec.calls[0][0] == "notify-send"

        # "I'm coming" from the keyboard
        keyboard_loop(client, io.StringIO("a\nq\n"))
        cmds.wait(lambda r: len(r.payloads()) >= 1)
        ack = decode(cmds.payloads()[0])
        validate("reply", ack)
        # In the teacher's own name: the last topic level, which the broker ties to the account.
        assert ack == {"cmd": "ack", "alert_id": raised["id"]}
        assert cmds.topics()[0] == reply_to("5b", "5b-pi-02", "m.khan")
        assert pager.is_active  # the device, not the teacher's own command, confirms the ack
        sb.publish(dev, t("5b", "5b-pi-02", "alert"), encode(alert("acknowledged", raised["id"], by="m.khan")))
        wait_until(lambda: not pager.is_active, 10)
        assert client.board.alerts[raised["id"]].state == "acknowledged"

        client.clear()
        cmds.wait(lambda r: len(r.payloads()) >= 2)
        assert decode(cmds.payloads()[1]) == {"cmd": "clear", "alert_id": raised["id"]}
        sb.publish(dev, t("5b", "5b-pi-02", "alert"), encode(alert("cleared", raised["id"], by="m.khan")))
        wait_until(lambda: raised["id"] not in client.board.alerts, 10)  # cleared alerts leave the list

        # A second report; the pager's own button acknowledges it.
        second = alert()
        sb.publish(dev, t("5b", "5b-pi-02", "alert"), encode(second))
        wait_until(lambda: pager.led.is_lit, 10)
        factory.pin(13).drive_low()
        cmds.wait(lambda r: len(r.payloads()) >= 3)
        assert decode(cmds.payloads()[2]) == {"cmd": "ack", "alert_id": second["id"]}
    finally:
        client.close()


@pytest.mark.integration
def test_bad_payload_on_the_wire_keeps_client_running(secure_broker, caplog):
    sb = secure_broker
    client = start_client(sb)
    try:
        dev = sb.connect("5b-pi-01")
        with caplog.at_level(logging.WARNING, logger="classroom-alerts"):
            sb.publish(dev, t("5b", "5b-pi-01", "alert"), b'{"id": 1}')
            good = alert(device="5b-pi-01")
            sb.publish(dev, t("5b", "5b-pi-01", "alert"), encode(good))
            wait_until(lambda: good["id"] in client.board.alerts, 10)
        assert len(client.board.alerts) == 1
        assert [r.getMessage() for r in caplog.records if "ignored malformed" in r.getMessage()]
    finally:
        client.close()


@pytest.mark.integration
def test_dsl_watching_every_room_sees_escalation(secure_broker):
    sb = secure_broker
    client = start_client(sb, username="s.patel", room="+")
    try:
        dev = sb.connect("1a-pi-01")
        a = alert(room="1a", device="1a-pi-01")
        sb.publish(dev, t("1a", "1a-pi-01", "alert"), encode(a))
        sb.publish(dev, t("1a", "1a-pi-01", "alert"), encode(alert("escalated", a["id"], room="1a",
                                                                     device="1a-pi-01", to="Mrs Patel (DSL)")))
        wait_until(lambda: client.board.alerts.get(a["id"]) and client.board.alerts[a["id"]].state == "escalated", 10)
        assert client.board.alerts[a["id"]].escalated_to == "Mrs Patel (DSL)"
        out = io.StringIO()
        TerminalView(out).render(client.board)
        assert "1a-pi-01" in out.getvalue() and "escalated to Mrs Patel (DSL)" in out.getvalue()
    finally:
        client.close()


def run_cli(*args, timeout=20, **kw):
    return subprocess.run([ALERTS, *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.mark.integration
def test_cli_once_json_and_one_shot_ack(secure_broker):
    sb = secure_broker
    url = f"mqtt://127.0.0.1:{sb.broker.port}"
    pw = str(sb.out / "credentials" / "m.khan.yaml")
    proc = subprocess.Popen([ALERTS, "--room", "5b", "--site", SITE, "--broker", url, "--username", "m.khan",
                             "--password-file", pw, "--once", "--json", "--timeout", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dev = sb.connect("5b-pi-01")
        a = alert(device="5b-pi-01")
        # The subprocess's SUBACK is not observable from here, so re-send the same alert id
        # until it has one (the board de-duplicates; the device would resend from its outbox too).
        wait_until(lambda: sb.publish(dev, t("5b", "5b-pi-01", "alert"), encode(a)) or proc.poll() is not None,
                   15, interval=0.2)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    line = next(x for x in map(json.loads, out.strip().splitlines()) if x["event"] == "alert")
    assert line["id"] == a["id"] and line["seat"] == "Table 2" and line["state"] == "raised"

    _, cmds = sb.subscriber("5b-pi-01", reply_to("5b", "5b-pi-01"))
    r = run_cli("--room", "5b", "--site", SITE, "--broker", url, "--username", "m.khan", "--password-file", pw,
                "--ack", a["id"], "--device", "5b-pi-01", "--json")
    assert r.returncode == 0, r.stderr
    cmds.wait(lambda rec: rec.payloads())
    assert decode(cmds.payloads()[0]) == {"cmd": "ack", "alert_id": a["id"]}
    assert cmds.topics() == [reply_to("5b", "5b-pi-01", "m.khan")]


@pytest.mark.integration
def test_cli_refused_login_is_one_line_and_hides_password(secure_broker, tmp_path):
    sb = secure_broker
    pw = tmp_path / "pw"
    pw.write_text("definitely-wrong-password\n")
    r = run_cli("--room", "5b", "--broker", f"mqtt://127.0.0.1:{sb.broker.port}", "--username", "m.khan",
                "--password-file", str(pw), "--once", "--timeout", "5")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("classroom-alerts: error: broker refused m.khan")
    assert "definitely-wrong-password" not in r.stderr + r.stdout
    r = run_cli("--room", "5B!", "--broker", "mqtt://127.0.0.1:1", "--username", "m.khan", "--password-file", str(pw))
    assert r.returncode == 1 and "--room: '5B!' is not a valid id" in r.stderr


@pytest.mark.integration
def test_real_agent_press_reaches_teacher_who_acks_and_clears(secure_broker, factory, tmp_path):
    """The whole loop: GPIO press on the real agent -> blank -> alert over the secured broker ->
    classroom-alerts -> "I'm coming" -> the pupil's screen says so -> clear -> screen back."""
    from agent.config.schema import AgentBootstrap
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessScreen
    from agent.report.screen import Screen

    sb = secure_broker
    boot = AgentBootstrap(device="5b-pi-01", site=SITE, broker_url=f"mqtt://127.0.0.1:{sb.broker.port}",
                          collector_url="http://127.0.0.1:9", credentials=str(sb.out / "credentials" / "5b-pi-01.yaml"),
                          state_dir=str(tmp_path / "state"), control_socket=str(tmp_path / "control.sock"),
                          config_dir=str(ROOT / "config"), screen_backend="headless")
    screen = Screen(HeadlessScreen())
    runtime = Runtime(boot, screen=screen, pin_factory=factory, control=False).start()
    client = start_client(sb)
    try:
        wait_until(lambda: runtime.link is not None and runtime.link.connected.is_set(), 15)
        factory.pin(17).drive_low()
        assert screen.is_blank  # blank first, on the pressing thread
        raised = wait_until(lambda: client.board.newest(unanswered=True), 15)
        assert (raised.device, raised.room, raised.seat) == ("5b-pi-01", "5b", "Table 1")
        assert raised.id == runtime.report.alert["id"]
        client.ack()
        wait_until(lambda: client.board.alerts[raised.id].state == "acknowledged", 15)
        assert client.board.alerts[raised.id].by == "m.khan"
        from agent.config.schema import DEFAULT_MESSAGES

        said = runtime.policy.messages.get("report_acknowledged") or DEFAULT_MESSAGES["report_acknowledged"]
        assert screen.is_blank and screen.message == said  # the pupil is told a grown-up has seen it
        client.clear()
        wait_until(lambda: raised.id not in client.board.alerts, 15)  # cleared: off the teacher's list
        assert not screen.is_blank and not runtime.report.is_open
    finally:
        client.close()
        runtime.stop()


@pytest.mark.integration
def test_latency_bench_runs_and_prints_its_summary_line():
    # Numbers are the bench's business (no timed assertions here); this keeps it runnable.
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "alert_latency.py"), "--devices", "20",
                        "--per-worker", "10", "--presses", "3", "--gap-ms", "5"],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    import re

    assert re.fullmatch(r"alert_latency p50_ms=[\d.]+ p99_ms=[\d.]+ baseline_p99_ms=[\d.]+ ratio=[\d.]+ "
                        r"blank_p99_ms=[\d.]+", last), last


@pytest.mark.integration
def test_broker_restart_is_shown_and_alerts_flow_again(secure_broker):
    sb = secure_broker
    out = io.StringIO()
    client = AlertsClient(broker=f"mqtt://127.0.0.1:{sb.broker.port}", username="m.khan",
                          password=sb.passwords["m.khan"], room="5b", site=SITE,
                          view=TerminalView(out, as_json=True)).start()
    try:
        sb.broker.stop()
        wait_until(lambda: "lost the broker" in out.getvalue(), 10)  # never a silent failure
        client.subscribed.clear()
        sb.broker.start()
        wait_until(client.subscribed.is_set, 15)  # paho reconnects; on_connect subscribes again
        dev = sb.connect("5b-pi-02")
        a = alert()
        sb.publish(dev, t("5b", "5b-pi-02", "alert"), encode(a))
        wait_until(lambda: a["id"] in client.board.alerts, 10)
    finally:
        client.close()


@pytest.mark.integration
def test_notification_reaches_a_real_session_bus():
    """The command Notifier issues, run by the real notify-send over a real D-Bus session bus."""
    from services import require_binary

    dbus_run = require_binary("dbus-run-session")
    require_binary("notify-send")
    if subprocess.run(["/usr/bin/python3", "-c", "from gi.repository import Gio"], capture_output=True).returncode:
        from services import skip_or_fail

        skip_or_fail("system python3 has no gi (python3-gi) for the stand-in notification server")
    code = ("import subprocess\n"
            "from server.alerts.board import AlertBoard\n"
            "from server.alerts.notify import Notifier\n"
            "from agent.protocol import new_id, now_ts\n"
            "a, _ = AlertBoard().apply_alert(dict(id=new_id(), state='raised', site='penny-acres', room='5b',\n"
            "    device='5b-pi-02', seat='Table 2', ts=now_ts()))\n"
            "n = Notifier(runner=lambda argv: subprocess.run(argv, check=True, timeout=20))\n"
            "assert n.is_available\n"
            "n.notify(a)\n")
    r = subprocess.run([dbus_run, "--", "/usr/bin/python3", str(ROOT / "tests" / "notify_server.py"),
                        sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, r.stderr[-1500:]
    [note] = result["notifications"]
    assert note["app"] == "classroom-alerts" and note["summary"] == "Report in 5b"
    assert "Table 2 (5b-pi-02)" in note["body"] and note["urgency"] == 2  # critical
