"""Teachers answer only in their own name (issue 14 item 6), attacked against real mosquitto
with the generated ACL and the real agent: a teacher account cannot publish ``cmd``, cannot
acknowledge in another teacher's name, cannot reach another room's device, and a reply
planted retained on the broker is never replayed to the device.  Plus the teacher client's
room presence (retained ``watching``, Last Will ``gone``).
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from gpiozero.pins.mock import MockFactory

from agent.config.schema import AgentBootstrap
from agent.core.runtime import Runtime
from agent.desktop.headless import HeadlessScreen
from agent.protocol import encode
from agent.report.screen import Screen
from broker_fixtures import PREFIX, SITE, secure_broker  # noqa: F401
from server.alerts.client import AlertsClient
from server.alerts.view import TerminalView
from services import wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def reply(room: str, device: str, staff: str) -> str:
    return f"{PREFIX}/{SITE}/{room}/{device}/reply/{staff}"


def cmd_topic(room: str, device: str) -> str:
    return f"{PREFIX}/{SITE}/{room}/{device}/cmd"


@pytest.fixture
def agent(secure_broker, tmp_path):
    made = []

    def factory(device: str = "5b-pi-01"):
        sb = secure_broker
        boot = AgentBootstrap(device=device, site=SITE, broker_url=f"mqtt://127.0.0.1:{sb.broker.port}",
                              collector_url="http://127.0.0.1:9",
                              credentials=str(sb.out / "credentials" / f"{device}.yaml"),
                              state_dir=str(tmp_path / device), control_socket=str(tmp_path / f"{device}.sock"),
                              config_dir=str(ROOT / "config"), screen_backend="headless")
        rt = Runtime(boot, screen=Screen(HeadlessScreen()), pin_factory=MockFactory(), control=False).start()
        made.append(rt)
        wait_until(lambda: rt.link is not None and rt.link.connected.is_set() and rt.link.subscribed.is_set(), 15)
        return rt
    yield factory
    for rt in made:
        rt.stop()


def state_of(rt):
    return rt.call(lambda: rt.report.alert)


@pytest.mark.timeout(60)
def test_a_teacher_cannot_command_a_device_or_answer_in_another_name_or_room(secure_broker, agent):
    sb = secure_broker
    rt = agent("5b-pi-01")
    other_room = agent("1a-pi-01")
    rt.press("button")
    other_room.press("button")
    aid, other = state_of(rt)["id"], state_of(other_room)["id"]
    teacher = sb.connect("m.khan")                                   # teaches 5b only
    # 1. cmd is the collector's alone (it carries "by"): a forged clear and unlock go nowhere.
    sb.publish(teacher, cmd_topic("5b", "5b-pi-01"), encode({"cmd": "clear", "alert_id": aid, "by": "s.patel"}))
    # 2. Another teacher's name (the topic's last level is what the device records).
    sb.publish(teacher, reply("5b", "5b-pi-01", "a.jones"), encode({"cmd": "clear", "alert_id": aid}))
    # 3. Another room's device.
    sb.publish(teacher, reply("1a", "1a-pi-01", "m.khan"), encode({"cmd": "clear", "alert_id": other}))
    # The teacher's own answer, last: one sender's messages arrive in order, so had any of
    # the above got through, the alert would be cleared (by someone else) before this ack.
    sb.publish(teacher, reply("5b", "5b-pi-01", "m.khan"), encode({"cmd": "ack", "alert_id": aid, "by": "s.patel"}))
    wait_until(lambda: (state_of(rt) or {}).get("state") == "acknowledged", 10)
    assert state_of(rt)["acknowledged_by"] == "m.khan"               # from the topic, not the payload's "by"
    assert rt.screen.is_blank
    # The other room's alert is untouched; the collector's account can still reach it.
    assert state_of(other_room)["state"] == "raised"
    sb.publish(sb.connect("classroom-server"), cmd_topic("1a", "1a-pi-01"),
               encode({"cmd": "ack", "alert_id": other, "by": "a.jones"}))
    wait_until(lambda: state_of(other_room)["state"] == "acknowledged", 10)
    assert state_of(other_room)["acknowledged_by"] == "a.jones"
    # An escalation contact answers from any room, in their own name.
    sb.publish(sb.connect("s.patel"), reply("1a", "1a-pi-01", "s.patel"), encode({"cmd": "clear", "alert_id": other}))
    wait_until(lambda: state_of(other_room) is None, 10)


@pytest.mark.timeout(60)
def test_a_reply_planted_retained_is_never_replayed(secure_broker, agent, tmp_path):
    sb = secure_broker
    rt = agent("5b-pi-01")
    rt.press("button")
    aid = state_of(rt)["id"]
    wait_until(lambda: rt.outbox.count("alert") == 0, 10)
    rt.stop()                                                        # the device is away ...
    teacher = sb.connect("m.khan")
    info = teacher.publish(reply("5b", "5b-pi-01", "m.khan"), encode({"cmd": "clear", "alert_id": aid}),
                           qos=1, retain=True)                       # ... and a clear is planted for it
    info.wait_for_publish(10)
    assert info.is_published()
    rt = agent("5b-pi-01")                                           # back: the alert is still open
    assert state_of(rt)["id"] == aid and rt.screen.is_blank
    sb.publish(teacher, reply("5b", "5b-pi-01", "m.khan"), encode({"cmd": "ack", "alert_id": aid}))
    # Retained messages come at subscribe time, before anything live: the ack was handled, so
    # a replayed clear would have been handled first.
    wait_until(lambda: (state_of(rt) or {}).get("state") == "acknowledged", 10)
    assert rt.screen.is_blank and rt.link.ignored_commands == 0
    # And if a broker sends one anyway (a client that asked for retained messages), it is dropped.
    planted = SimpleNamespace(topic=reply("5b", "5b-pi-01", "m.khan"), retain=True,
                              payload=encode({"cmd": "clear", "alert_id": aid}))
    rt.link._on_message(rt.link.client, None, planted)
    rt.call(lambda: None)
    assert state_of(rt)["state"] == "acknowledged" and rt.link.ignored_commands == 1


@pytest.mark.timeout(60)
def test_the_teacher_client_says_it_is_watching_and_its_will_says_gone(secure_broker, tmp_path):
    sb = secure_broker
    _, collector = sb.subscriber("classroom-server", f"{PREFIX}/{SITE}/+/_watch/+")
    watch = f"{PREFIX}/{SITE}/5b/_watch/m.khan"

    def states():
        return [json.loads(p)["state"] for tp, p in collector.messages if tp == watch]

    client = AlertsClient(broker=f"mqtt://127.0.0.1:{sb.broker.port}", username="m.khan",
                          password=sb.passwords["m.khan"], room="5b", site=SITE,
                          view=TerminalView(io.StringIO(), as_json=True)).start()
    wait_until(lambda: states() == ["watching"], 10)
    client.close()                                                   # a clean exit says so itself
    wait_until(lambda: states() == ["watching", "gone"], 10)
    # A client that dies (kill -9, a laptop lid) is reported by the broker: the Last Will.
    pw = sb.out / "credentials" / "m.khan.yaml"
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "classroom-alerts"), "--room", "5b", "--site", SITE,
                             "--broker", f"mqtt://127.0.0.1:{sb.broker.port}", "--username", "m.khan",
                             "--password-file", str(pw), "--json"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        wait_until(lambda: states()[-1] == "watching", 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: states()[-1] == "gone", 60)               # within 1.5 keepalives
    finally:
        if proc.poll() is None:
            proc.kill()
    # Retained: the collector, restarted, still knows nobody is watching 5b now.
    _, later = sb.subscriber("classroom-server", watch)
    later.wait(lambda r: r.payloads())
    assert json.loads(later.payloads()[-1])["state"] == "gone"
