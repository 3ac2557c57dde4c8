"""The alert lifecycle on a runtime without a broker: everything it sends is read back
from the durable outbox.  Fake clock for escalation; MockFactory button and LED."""

import json
import logging
import uuid

import pytest
from gpiozero.pins.mock import MockFactory

from agent import protocol
from agent.core.clock import FakeClock
from agent.core.runtime import Runtime
from agent.report.screen import Screen
from runtime_fixtures import bootstrap
from services import wait_until

RAISED = "Well done for telling. A grown-up is coming."
SEEN = "A grown-up has seen your message."


@pytest.fixture
def make(tmp_path):
    made = []

    def factory(**overrides):
        clock = FakeClock()
        factory_ = MockFactory()
        rt = Runtime(bootstrap(tmp_path, **overrides), clock=clock, screen=Screen(), pin_factory=factory_,
                     connect=False, control=False)
        rt.start()
        made.append((rt, factory_))
        return rt, clock, factory_
    yield factory
    for rt, f in made:
        f.pin(17).drive_high()   # a held gpiozero Button takes a second to close
        rt.stop()
        f.close()


def sent(rt, kind=None):
    """Payloads in the outbox (what would go to the broker), oldest first."""
    out = []
    for row in rt.outbox.pending():
        if kind is None or row.kind == kind:
            out.append(json.loads(row.payload))
    return out


def barrier(rt):
    rt.call(lambda: None)


def settled(rt):
    """Wait for the report's follow-up (FOLLOW_UP_DELAY of real time after a raise)."""
    wait_until(lambda: rt.is_idle, 5, message="deferred jobs still pending")


def evidence_of(rt) -> dict:
    """The report_evidence event, once sent (FOLLOW_UP_DELAY of real time after the raise)."""
    found = wait_until(lambda: [e for e in sent(rt, "event") if e["type"] == "report_evidence"], 5,
                       message="no report_evidence event")
    [event] = found
    return event


def cmd(rt, **payload):
    rt.call(rt._on_command, payload)


def test_press_blanks_then_raises_with_all_fields(make):
    rt, clock, pins = make()
    pins.pin(17).drive_low()
    assert rt.screen.is_blank and rt.screen.message == RAISED     # before the queue thread ran
    barrier(rt)
    [raised] = sent(rt, "alert")
    assert raised["state"] == "raised"
    uuid.UUID(raised["id"])
    protocol.validate("alert", raised)  # checked ahead of the press, under this policy (Report._prepare)
    assert {k: raised[k] for k in ("site", "room", "device", "seat", "ts", "by")} == {
        "site": "penny-acres", "room": "1a", "device": "1a-pi-01", "seat": "Table 1",
        "ts": "2026-11-24T10:00:00.000Z", "by": "pupil"}
    assert rt.led.is_lit and rt.led.state == "raised"
    evidence = evidence_of(rt)
    assert evidence["alert_id"] == raised["id"] and evidence["domains"] == []
    rows = {r.kind: r for r in rt.outbox.pending()}
    assert rows["alert"].topic == "classroom/v1/penny-acres/1a/1a-pi-01/alert" and rows["alert"].qos == 1


def test_a_busy_queue_thread_does_not_hold_the_alert_back(make):
    """The raise happens on the pressing thread: a slow job on the queue thread (a config
    apply, a filter reload) must not stand between the pupil and the teacher."""
    import threading

    rt, _, pins = make()
    busy, release = threading.Event(), threading.Event()
    rt.post(lambda: (busy.set(), release.wait(10)))
    assert busy.wait(5)
    try:
        pins.pin(17).drive_low()
        [raised] = sent(rt, "alert")     # committed (and published, with a link) before drive_low returned
        assert raised["state"] == "raised" and rt.report.is_open
        assert not [e for e in sent(rt, "event") if e["type"] == "report_evidence"]  # evidence waits its turn
    finally:
        release.set()
    assert evidence_of(rt)["alert_id"] == raised["id"]


def test_evidence_comes_from_the_evidence_source(make):
    rt, _, _ = make()
    asked = []

    def source(minutes):
        asked.append(minutes)
        return [{"domain": "example.org", "ts": "2026-11-24T09:59:00Z", "count": 2}]
    rt.evidence_source = source
    rt.press("key")
    evidence = evidence_of(rt)
    assert asked == [10] and evidence["domains"][0]["domain"] == "example.org"
    assert sent(rt, "alert")[0]["source"] == "key"


def test_repeated_presses_are_counted_not_new_alerts(make):
    rt, _, pins = make()
    pins.pin(17).drive_low()
    rt.press("key")
    rt.press("control")
    barrier(rt)
    alerts = sent(rt, "alert")
    assert len(alerts) == 1 and rt.report.alert["presses"] == 3
    repeats = [e for e in sent(rt, "event") if e["type"] == "press_repeated"]
    assert [(e["alert_id"], e["presses"]) for e in repeats] == [(alerts[0]["id"], 2), (alerts[0]["id"], 3)]


def test_escalates_on_time_with_fake_clock(make):
    rt, clock, _ = make()
    rt.press("button")
    settled(rt)                     # the escalation timer is started by the raise's follow-up
    clock.advance(59.9)
    barrier(rt)
    assert rt.report.alert["state"] == "raised" and len(sent(rt, "alert")) == 1
    clock.advance(0.1)                                              # room 1a: site default 60 s
    barrier(rt)
    raised, escalated = sent(rt, "alert")
    assert escalated["state"] == "escalated" and escalated["id"] == raised["id"]
    assert escalated["escalated_to"] == ["s.patel", "office"] and escalated["by"] == "system"
    assert escalated["ts"] == "2026-11-24T10:01:00.000Z"
    assert rt.led.state == "raised" and rt.screen.message == RAISED
    clock.advance(600)
    barrier(rt)
    assert len(sent(rt, "alert")) == 2                              # escalates once
    cmd(rt, cmd="ack", alert_id=raised["id"], by="s.patel")         # a DSL can still acknowledge
    assert sent(rt, "alert")[-1]["state"] == "acknowledged"


def test_ack_then_clear_follow_on_screen_and_led(make):
    rt, clock, _ = make()
    rt.press("button")
    barrier(rt)
    aid = rt.report.alert["id"]
    clock.advance(5)
    cmd(rt, cmd="ack", alert_id=aid, by="a.jones")
    assert rt.screen.message == SEEN and rt.screen.is_blank and rt.led.state == "acknowledged"
    clock.advance(120)
    barrier(rt)
    assert [a["state"] for a in sent(rt, "alert")] == ["raised", "acknowledged"]   # no escalation after ack
    cmd(rt, cmd="clear", alert_id=aid, by="a.jones")
    assert not rt.screen.is_blank and not rt.led.is_lit and rt.report.alert is None
    states = [(a["state"], a["by"], a["id"]) for a in sent(rt, "alert")]
    assert states == [("raised", "pupil", aid), ("acknowledged", "a.jones", aid), ("cleared", "a.jones", aid)]
    rt.press("button")                                              # a new press is a new alert
    barrier(rt)
    assert sent(rt, "alert")[-1]["state"] == "raised" and sent(rt, "alert")[-1]["id"] != aid


def test_wrong_alert_id_is_ignored_with_a_log_line(make, caplog):
    rt, _, _ = make()
    rt.press("button")
    barrier(rt)
    other = str(uuid.uuid4())
    with caplog.at_level(logging.WARNING, logger="agent.report.alert"):
        cmd(rt, cmd="clear", alert_id=other, by="a.jones")
        cmd(rt, cmd="ack", alert_id=other, by="a.jones")
    assert rt.screen.is_blank and rt.report.alert["state"] == "raised"
    assert len(sent(rt, "alert")) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.report.alert"]
    assert lines == [f"ignored clear of alert {other} by a.jones: the open alert is {rt.report.alert['id']}",
                     f"ignored ack of alert {other} by a.jones: the open alert is {rt.report.alert['id']}"]


def test_staff_pin_clears(make, tmp_path):
    from agent.desktop.pin import read_pin_file
    from runtime_fixtures import pin_file

    rt, _, _ = make(staff_pin_file=pin_file(tmp_path, "246801"))
    pin_hash = read_pin_file(rt.bootstrap.staff_pin_file)
    rt.press("button")
    barrier(rt)
    assert not rt.screen.try_pin("111111", pin_hash)
    assert rt.screen.try_pin("246801", pin_hash)
    barrier(rt)
    assert sent(rt, "alert")[-1]["state"] == "cleared" and sent(rt, "alert")[-1]["by"] == "staff-pin"
    assert rt.report.alert is None and not rt.led.is_lit


def test_open_alert_survives_a_restart(tmp_path, make):
    rt, _, _ = make()
    rt.press("button")
    barrier(rt)
    aid = rt.report.alert["id"]
    rt.stop()
    rt2, clock2, _ = make()
    assert rt2.screen.is_blank and rt2.screen.message == RAISED    # blank again before anything else
    assert rt2.report.alert["id"] == aid
    assert rt2.led.state == "raised"
    clock2.advance(60)                                              # the escalation timer was restored too
    barrier(rt2)
    assert rt2.report.alert["state"] == "escalated"
    cmd(rt2, cmd="clear", alert_id=aid, by="a.jones")
    assert not rt2.screen.is_blank
    # the unsent raise is still in the outbox, then the later transitions with the same id
    assert [(a["state"], a["id"]) for a in sent(rt2, "alert")] == [("raised", aid), ("escalated", aid),
                                                                     ("cleared", aid)]


def test_press_before_any_config_raises_when_config_arrives(tmp_path, make):
    rt, _, _ = make(config_dir=None)
    assert rt.policy is None
    rt.press("key")
    barrier(rt)
    assert rt.screen.is_blank and sent(rt) == []
    from agent.config import load_tree
    from runtime_fixtures import CONFIG_DIR

    assert rt.apply_config(load_tree(CONFIG_DIR).for_device("1a-pi-01"))
    assert sent(rt, "alert")[0]["state"] == "raised"


def test_bad_config_is_rejected_and_last_known_good_kept(make):
    rt, _, _ = make()
    version = rt.tree.version
    assert not rt.apply_config({"site": {"site": "penny-acres"}, "profiles": {}, "rooms": {}})
    assert not rt.apply_config({"nonsense": True})
    good = rt.tree.for_device("1a-pi-01")
    moved = json.loads(json.dumps(good))
    moved["rooms"]["1a"]["devices"] = []
    assert not rt.apply_config(moved)                               # this device is not in it
    assert rt.tree.version == version and rt.policy.room == "1a"
    rejected = [e for e in sent(rt, "event") if e["type"] == "config_rejected"]
    assert len(rejected) == 3 and all(e["kept"] == version and e["errors"] for e in rejected)
    assert "device: unknown device '1a-pi-01'" in rejected[2]["errors"][0]
    assert rt.apply_config(good)
    assert rt.tree.version == version


def test_timetable_boundary_reevaluates_policy(make):
    rt, clock, _ = make()
    seen = []

    class Probe:
        name = "probe"

        def start(self, runtime):
            pass

        def stop(self):
            pass

        def on_policy(self, policy):
            seen.append(policy.locked)

        def on_command(self, c):
            return c["cmd"] == "lock"
    rt.add_component(Probe())
    barrier(rt)
    assert seen == [False] and rt.policy.next_change is not None
    clock.set(rt.policy.next_change)                                # 16:00 local: school ends
    barrier(rt)
    assert seen == [False, True] and rt.policy.lock_reason == "out_of_hours"
    cmd(rt, cmd="lock", by="a.jones")                              # routed to components


def test_deferred_jobs_run_on_real_time_whatever_the_clock(make):
    """``defer`` (housekeeping: the link's settling, the evidence) runs after real
    seconds even on a FakeClock; ``call_later`` waits for the clock.  Jobs scheduled
    together share one wake-up of the queue thread and run in due order."""
    import threading

    rt, clock, _ = make()
    order, done = [], threading.Event()
    rt.call_later(1, order.append, "clock")
    rt.defer(0.02, lambda: (order.append("later"), done.set()))
    rt.defer(0.01, order.append, "sooner")
    assert done.wait(5)
    assert order == ["sooner", "later"] and rt.is_idle  # the fake clock has not moved
    clock.advance(1)
    wait_until(lambda: "clock" in order, 5)
    assert order == ["sooner", "later", "clock"]
