"""Nothing lost on the device (issue 13 item 1): a press reaches the broker with the state
disk full, with the outbox damaged or its WAL cut short, with any one state file lost, and
before any config has loaded; the agent never exits because of its own state files.

Against a real mosquitto and the real agent (``classroom-agent run --simulate`` in its
own process where the command line matters, an in-process Runtime elsewhere); the full
disk is a small tmpfs mounted in the test's own directory (tests/disk_fixtures.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from agent.core.clock import FakeClock
from agent.core.control import request
from agent.core.runtime import Runtime
from agent.report.screen import Screen
from disk_fixtures import fill, small_disk  # noqa: F401
from runtime_fixtures import CONFIG_DIR, PREFIX, REPO, Subscriber, bootstrap, publish
from services import spawn, terminate, wait_until

pytestmark = pytest.mark.integration

AGENT = [sys.executable, "-c", "import sys; from agent.cli import main; main(sys.argv[1:])"]


# --------------------------------------------------------------------------- helpers


class AgentProcess:
    """``classroom-agent run --simulate`` for device 1a-pi-01, with its state where the test says."""

    def __init__(self, tmp_path: Path, broker, state_dir: Path | None = None, **overrides):
        self.tmp = tmp_path
        self.sock = tmp_path / "control.sock"
        self.log = tmp_path / "agent.log"
        b = bootstrap(tmp_path, broker, **({"state_dir": str(state_dir)} if state_dir else {}), **overrides)
        self.config = tmp_path / "agent.yaml"
        self.config.write_text(yaml.safe_dump(b.model_dump(mode="json", exclude_none=True)))
        self.proc = None

    def start(self) -> "AgentProcess":
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = spawn([*AGENT, "run", "--config", str(self.config), "--simulate"], log_path=self.log,
                          env=env, cwd=str(REPO))
        wait_until(lambda: self.alive() and request(self.sock, {"op": "ping"})["ok"], 20,
                   message=lambda: self.log.read_text())
        return self

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        return True

    def status(self) -> dict:
        self.alive()
        return request(self.sock, {"op": "status"})["status"]

    def press(self) -> dict:
        return request(self.sock, {"op": "press", "source": "key"})

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc)


@pytest.fixture
def agents():
    made: list[AgentProcess] = []

    def factory(*args, **kw) -> AgentProcess:
        agent = AgentProcess(*args, **kw)
        made.append(agent)
        return agent
    yield factory
    for agent in made:
        if agent.proc is not None:
            agent.stop()


def clear(broker, alert_id: str) -> None:
    publish(broker, PREFIX + "/cmd", {"cmd": "clear", "alert_id": alert_id, "by": "a.jones"})


def degraded_statuses(sub) -> list[dict]:
    return [s for s in sub.payloads("status") if s.get("state") == "online" and s.get("degraded")]


# --------------------------------------------------------------------------- a full disk


@pytest.mark.timeout(120)
def test_a_press_on_a_full_state_disk_reaches_the_teacher_and_the_button_stays_armed(
        tmp_path, mosquitto, small_disk, agents):
    """Before: `classroom-agent press` exited 1 with "cannot rollback - no transaction is
    active", nothing reached MQTT, and after space was freed a second press sent only
    ``press_repeated``."""
    disk = small_disk("6m")
    sub = Subscriber(mosquitto, PREFIX + "/#")
    agent = agents(tmp_path, mosquitto, state_dir=disk / "state").start()
    sub.wait_for("status", state="online")
    filler = fill(disk)
    assert agent.press() == {"ok": True}                            # the reserve takes this commit
    raised = sub.wait_for("alert", state="raised")
    assert agent.status()["screen"]["blank"]
    event = sub.wait_for("event", type="state_degraded", file="outbox.db")
    assert event["ongoing"] is True and "disk full" in event["cause"]
    assert "disk full" in wait_until(lambda: degraded_statuses(sub), 10)[-1]["degraded"]   # retained status says so

    fill(disk, "filler-2")                                          # and the reserve's space is gone too
    clear(mosquitto, raised["id"])
    sub.wait_for("alert", state="cleared", id=raised["id"])
    kept_in_memory = agent.status()["outbox_memory_total"]
    assert agent.press() == {"ok": True}                            # from memory now: still a new alert
    [second] = wait_until(
        lambda: [a for a in sub.payloads("alert") if a["state"] == "raised" and a["id"] != raised["id"]], 15)
    # It went through memory (the rows may be acknowledged and gone already: count them all).
    assert agent.status()["outbox_memory_total"] > kept_in_memory
    assert not [e for e in sub.payloads("event") if e["type"] == "press_repeated"]

    filler.unlink()
    (disk / "filler-2").unlink()
    # Space is back: memory goes to disk, the reserve is made again, the status is clean again.
    wait_until(lambda: agent.status()["degraded"] is None and agent.status()["outbox_in_memory"] == 0, 20,
               message=lambda: str(agent.status()))
    wait_until(lambda: [s for s in sub.payloads("status") if s["state"] == "online"][-1].get("degraded") is None, 10)
    assert (disk / "state" / "outbox.reserve").exists()
    clear(mosquitto, second["id"])
    sub.wait_for("alert", state="cleared", id=second["id"])
    sub.close()


@pytest.mark.timeout(90)
def test_an_agent_started_on_a_full_disk_runs_and_delivers(tmp_path, mosquitto, small_disk, agents):
    """Before: the agent exited at start (the outbox could not be opened), the button was dead."""
    disk = small_disk("2m")
    (disk / "state").mkdir()
    fill(disk)
    sub = Subscriber(mosquitto, PREFIX + "/#")
    agent = agents(tmp_path, mosquitto, state_dir=disk / "state").start()
    sub.wait_for("status", state="online")
    assert agent.press() == {"ok": True}
    raised = sub.wait_for("alert", state="raised")
    assert raised["device"] == "1a-pi-01" and agent.status()["screen"]["blank"]
    assert sub.wait_for("event", type="state_degraded", file="outbox.db")["ongoing"] is True
    sub.close()


# --------------------------------------------------------------------------- a damaged outbox


@pytest.mark.timeout(90)
def test_a_damaged_outbox_is_moved_aside_and_the_agent_runs(tmp_path, mosquitto, agents):
    """Before: ``classroom-agent: error: DatabaseError: file is not a database`` (no file
    named) and, under systemd, a restart loop with a dead button."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(os.urandom(32768))
    sub = Subscriber(mosquitto, PREFIX + "/#")
    agent = agents(tmp_path, mosquitto).start()
    [aside] = list(state.glob("outbox.db.damaged-*"))
    assert str(aside) in agent.log.read_text()                      # logged with its path
    event = sub.wait_for("event", type="state_degraded", file="outbox.db")
    assert "moved aside" in event["cause"] and aside.name in event["cause"]
    assert agent.press() == {"ok": True}
    sub.wait_for("alert", state="raised")
    sub.close()


@pytest.mark.timeout(90)
def test_a_wal_cut_short_after_sigkill_loses_neither_the_alert_nor_the_blank(tmp_path, mosquitto, agents):
    """Broker down, press, SIGKILL, the WAL cut back to before the press: before, the unsent
    alert and the blank were gone with no log line.  Now its second copy (alert.json)
    brings both back, loudly, and the same alert reaches the teacher."""
    state = tmp_path / "state"
    mosquitto.stop()
    agent = agents(tmp_path, mosquitto).start()
    wal = state / "outbox.db-wal"
    wait_until(lambda: wal.exists() and agent.status()["outbox_pending"] >= 1, 10)  # config_applied stored
    before = wal.stat().st_size
    assert agent.press() == {"ok": True}
    status = wait_until(lambda: (s := agent.status())["outbox_pending"] >= 3 and s, 10)  # alert + evidence
    aid = status["alert"]["id"]
    wait_until(lambda: json.loads((state / "alert.json").read_text())["alert"]["id"] == aid, 10)
    agent.kill()
    with open(wal, "r+b") as fh:
        fh.truncate(before)
    mosquitto.start()
    sub = Subscriber(mosquitto, PREFIX + "/#")
    again = agents(tmp_path, mosquitto).start()
    status = again.status()
    assert status["screen"]["blank"] and status["alert"]["id"] == aid   # blank again, same alert
    raised = sub.wait_for("alert", state="raised", id=aid)
    assert raised["device"] == "1a-pi-01"
    lost = sub.wait_for("event", type="state_degraded", file="outbox.db")
    assert aid in lost["cause"] and "alert.json" in lost["cause"]
    assert "lost the open alert" in again.log.read_text()
    sub.close()


# --------------------------------------------------------------------------- any one state file


@pytest.fixture
def make(tmp_path):
    made = []

    def factory(**overrides):
        clock = FakeClock()
        pins = MockFactory()
        rt = Runtime(bootstrap(tmp_path, **overrides), clock=clock, screen=Screen(), pin_factory=pins,
                     connect=False, control=False)
        rt.start()
        made.append((rt, pins))
        return rt
    yield factory
    for rt, pins in made:
        rt.stop()
        pins.close()


def sent(rt, kind=None):
    return [json.loads(r.payload) for r in rt.outbox.pending() if kind is None or r.kind == kind]


def state_events(rt):
    return [e for e in sent(rt, "event") if e["type"] == "state_degraded"]


LOSSES = {
    "outbox.db deleted": ("outbox.db", lambda s: [p.unlink() for p in s.glob("outbox.db*")]),
    "outbox.db random bytes": ("outbox.db", lambda s: ([p.unlink() for p in s.glob("outbox.db-*")],
                                                       (s / "outbox.db").write_bytes(os.urandom(8192)))),
    "alert.json deleted": ("alert.json", lambda s: (s / "alert.json").unlink()),
    "alert.json truncated": ("alert.json", lambda s: (s / "alert.json").write_text('{"alert": {"id": "')),
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_an_open_alert_survives_the_loss_of_any_one_state_file_and_says_so(tmp_path, make, loss):
    rt = make()
    rt.press("button")
    rt.call(lambda: None)
    aid = rt.report.alert["id"]
    wait_until(lambda: (tmp_path / "state" / "alert.json").exists() and rt.is_idle, 10)   # the follow-up's copy
    rt.stop()
    file, damage = LOSSES[loss]
    damage(tmp_path / "state")
    rt2 = make()
    assert rt2.screen.is_blank and rt2.report.alert["id"] == aid       # the blank and the alert are back
    assert rt2.report.last_transition["id"] == aid                     # and the link will publish it again
    rt2.call(lambda: None)
    [event] = [e for e in state_events(rt2) if e["file"] == file and aid in e["cause"] or
               e["file"] == file and "unreadable" in e["cause"]][:1]
    assert event["device"] == "1a-pi-01"
    # Both copies agree again.
    wait_until(lambda: rt2.is_idle, 10)
    assert json.loads((tmp_path / "state" / "alert.json").read_text())["alert"]["id"] == aid
    assert rt2.outbox.kept("alert")["id"] == aid
    rt2.call(rt2._on_command, {"cmd": "clear", "alert_id": aid, "by": "a.jones"})
    assert not rt2.screen.is_blank


def test_a_cleared_alert_never_comes_back_from_an_older_copy(tmp_path, make):
    rt = make()
    rt.press("button")
    rt.call(lambda: None)
    aid = rt.report.alert["id"]
    wait_until(lambda: (tmp_path / "state" / "alert.json").exists() and rt.is_idle, 10)
    old_copy = (tmp_path / "state" / "alert.json").read_bytes()
    rt.call(rt._on_command, {"cmd": "clear", "alert_id": aid, "by": "a.jones"})
    rt.stop()
    (tmp_path / "state" / "alert.json").write_bytes(old_copy)          # the copy lags behind (crash)
    rt2 = make()
    assert not rt2.screen.is_blank and rt2.report.alert is None       # the outbox's tombstone is newer


def test_damaged_state_files_never_stop_the_agent(tmp_path, mosquitto, agents):
    """Every file in state_dir unreadable at once: the agent starts, the button works."""
    state = tmp_path / "state"
    state.mkdir()
    for name in ("outbox.db", "alert.json", "place.json", "config.json", "config.etag", "sessions.json",
                 "aup.json", "filter-overrides.json"):
        (state / name).write_bytes(b"\x00\xffnot what it should be" + os.urandom(64))
    sub = Subscriber(mosquitto, PREFIX + "/#")
    agent = agents(tmp_path, mosquitto).start()
    assert agent.press() == {"ok": True}
    sub.wait_for("alert", state="raised")
    files = {e["file"] for e in sub.payloads("event") if e["type"] == "state_degraded"}
    assert {"outbox.db", "alert.json", "place.json"} <= files
    sub.close()
    # The other components' files (the simulated agent does not run them): each loader
    # starts empty on a damaged file rather than failing.
    from agent.filter.overrides import OverrideStore
    from agent.policy.aup import AupRecords
    from agent.policy.sessions import SessionsComponent
    from fake_runtime import FakeRuntime

    assert OverrideStore(state).all() == []
    assert not AupRecords(state).has_accepted("pupil1", "autumn")
    fake = FakeRuntime(tmp_path / "fake")
    (fake.state_dir / "sessions.json").write_bytes((state / "sessions.json").read_bytes())
    sessions = SessionsComponent()
    sessions.runtime = fake
    sessions._load_known()
    assert sessions.sessions == {}


def test_a_damaged_cached_config_is_reported_and_the_last_known_place_used(tmp_path, make):
    rt = make()
    rt.stop()
    (tmp_path / "state" / "config.json").write_bytes(b"\xff{not json")
    rt = make(config_dir=None)
    assert rt.policy is None and rt.place.room == "1a"
    rt.press("key")
    rt.call(lambda: None)
    events = {e["file"]: e for e in state_events(rt)}
    assert "config.json" in events and "unusable" in events["config.json"]["cause"]
    assert sent(rt, "alert")[0]["room"] == "1a"


# --------------------------------------------------------------------------- before any config


def test_a_press_before_any_config_goes_to_the_last_known_room_and_survives_a_restart(tmp_path, make):
    rt = make()                                     # configured once: the place is kept
    place = json.loads((tmp_path / "state" / "place.json").read_text())
    assert (place["room"], place["seat"], place["hardware"]["button_pin"]) == ("1a", "Table 1", 17)
    rt.stop()
    # Now no config at all (no local tree, no cached copy): armed on the last-known pins.
    rt = make(config_dir=None)
    assert rt.policy is None
    rt.pin_factory.pin(17).drive_low()              # the GPIO button works before any config
    assert rt.screen.is_blank
    rt.call(lambda: None)
    [raised] = sent(rt, "alert")
    assert (raised["room"], raised["seat"], raised["device"], raised["site"]) == ("1a", "Table 1", "1a-pi-01",
                                                                                 "penny-acres")
    assert [r.topic for r in rt.outbox.pending() if r.kind == "alert"] == [PREFIX + "/alert"]
    rt.pin_factory.pin(17).drive_high()
    aid = raised["id"]
    wait_until(lambda: rt.is_idle, 10)
    rt.stop()
    rt = make(config_dir=None)                      # a clean restart keeps it
    assert rt.screen.is_blank and rt.report.alert["id"] == aid


def test_a_device_that_never_knew_its_room_keeps_the_press_until_a_config_arrives(tmp_path, make):
    rt = make(config_dir=None)
    rt.press("key")
    rt.call(lambda: None)
    aid = rt.report.alert["id"]
    assert rt.screen.is_blank and sent(rt, "alert") == []
    wait_until(lambda: rt.is_idle, 10)
    rt.stop()
    rt = make(config_dir=None)                      # before: lost on a clean restart
    assert rt.screen.is_blank and rt.report.alert["id"] == aid
    from agent.config import load_tree

    assert rt.apply_config(load_tree(CONFIG_DIR).for_device("1a-pi-01"))
    [raised] = sent(rt, "alert")
    assert raised["id"] == aid and raised["room"] == "1a"
    wait_until(lambda: [e for e in sent(rt, "event") if e["type"] == "report_evidence"], 10)


def test_a_freshly_enrolled_device_sends_a_press_before_any_config_to_the_room_it_was_enrolled_in(tmp_path, make):
    """`classroom-agent enrol` writes the collector's site and room into the credentials file
    (agent/uplink/enrol.py); a press before the first config goes there, not nowhere."""
    creds = tmp_path / "credentials.yaml"
    creds.write_text(yaml.safe_dump({"username": "1a-pi-01", "password": "x" * 24, "site": "penny-acres",
                                     "room": "1a"}))
    rt = make(config_dir=None, credentials=str(creds))
    assert rt.policy is None and rt.place is not None and rt.place.room == "1a"
    rt.press("key")
    rt.call(lambda: None)
    [raised] = sent(rt, "alert")
    assert (raised["room"], raised["device"], raised["site"]) == ("1a", "1a-pi-01", "penny-acres")
    assert [r.topic for r in rt.outbox.pending() if r.kind == "alert"] == [PREFIX + "/alert"]
    # A credentials file for another site is no hint at all.
    rt.stop()
    creds.write_text(yaml.safe_dump({"username": "1a-pi-01", "password": "x" * 24, "site": "elsewhere", "room": "9z"}))
    other = make(config_dir=None, credentials=str(creds), state_dir=str(tmp_path / "state2"))
    assert other.place is None


def test_escalation_on_a_full_disk_still_goes_out(tmp_path, make, small_disk):
    """Before: ``runtime job Report._escalate failed`` (the commit raised)."""
    disk = small_disk("3m")
    rt = make(state_dir=str(disk / "state"))
    fill(disk)
    rt.press("button")
    rt.call(lambda: None)
    wait_until(lambda: rt.report.alert and rt.report._timer is not None, 10)   # the follow-up set the timer
    fill(disk, "filler-2")                          # the reserve's space too: from memory now
    rt.clock.advance(60)
    rt.call(lambda: None)
    states = [a["state"] for a in sent(rt, "alert")]
    assert states == ["raised", "escalated"] and rt.outbox.in_memory >= 1
    assert rt.report.alert["state"] == "escalated"
