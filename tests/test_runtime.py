"""The whole agent against a real mosquitto: press -> alert -> ack -> clear, a broker
outage at the moment of the press, an agent killed with SIGKILL, the control socket
and the `classroom-agent run/press/status` commands."""

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from agent.core.clock import FakeClock
from agent.core.control import request
from agent.core.runtime import Runtime
from agent.report.screen import Screen
from runtime_fixtures import PREFIX, REPO, Subscriber, bootstrap, publish
from services import spawn, terminate, wait_until

pytestmark = pytest.mark.integration

RAISED = "Well done for telling. A grown-up is coming."
SEEN = "A grown-up has seen your message."
AGENT = [sys.executable, "-c", "import sys; from agent.cli import main; main(sys.argv[1:])"]


@pytest.fixture
def agent(tmp_path, mosquitto):
    made = []

    def factory(broker=mosquitto, **kw):
        clock = FakeClock()
        pins = MockFactory()
        rt = Runtime(bootstrap(tmp_path, broker), clock=clock, screen=Screen(), pin_factory=pins, **kw).start()
        made.append((rt, pins))
        return rt, clock, pins
    yield factory
    for rt, pins in made:
        pins.pin(17).drive_high()
        rt.stop()
        pins.close()


@pytest.mark.timeout(30)
def test_press_ack_clear_end_to_end(agent, mosquitto):
    sub = Subscriber(mosquitto)
    rt, clock, pins = agent()
    assert sub.wait_for("status", state="online")["config_version"] == rt.tree.version
    pins.pin(17).drive_low()
    assert rt.screen.is_blank and rt.screen.message == RAISED
    raised = sub.wait_for("alert", state="raised")
    assert set(raised) >= {"id", "state", "site", "room", "device", "seat", "ts", "by"}
    assert (raised["site"], raised["room"], raised["device"], raised["seat"]) == \
        ("penny-acres", "1a", "1a-pi-01", "Table 1")
    uuid.UUID(raised["id"])
    assert sub.wait_for("event", type="report_evidence")["alert_id"] == raised["id"]
    assert rt.led.is_lit
    publish(mosquitto, PREFIX + "/cmd", {"cmd": "ack", "alert_id": raised["id"], "by": "a.jones"})
    acked = sub.wait_for("alert", state="acknowledged")
    assert acked["id"] == raised["id"] and acked["by"] == "a.jones"
    assert rt.screen.message == SEEN and rt.screen.is_blank and rt.led.state == "acknowledged"
    publish(mosquitto, PREFIX + "/cmd", {"cmd": "clear", "alert_id": raised["id"], "by": "a.jones"})
    cleared = sub.wait_for("alert", state="cleared")
    assert cleared["id"] == raised["id"]
    wait_until(lambda: not rt.screen.is_blank, 5)
    assert not rt.led.is_lit and rt.led.state == "off"
    wait_until(lambda: rt.outbox.count() == 0, 10, message="outbox not emptied by PUBACKs")
    sub.close()


@pytest.mark.timeout(30)
def test_escalation_is_published_on_the_same_alert(agent, mosquitto):
    sub = Subscriber(mosquitto, PREFIX + "/alert")
    rt, clock, pins = agent()
    rt.press("key")
    raised = sub.wait_for("alert", state="raised")
    wait_until(lambda: rt.is_idle, 5)  # the raise's follow-up starts the escalation timer
    clock.advance(60)
    escalated = sub.wait_for("alert", state="escalated")
    assert escalated["id"] == raised["id"] and escalated["escalated_to"] == ["s.patel", "office"]
    sub.close()


@pytest.mark.timeout(30)
def test_malformed_cmd_over_mqtt_is_logged_once_and_agent_carries_on(agent, mosquitto, caplog):
    rt, clock, pins = agent()
    assert rt.link.subscribed.wait(10)  # SUBACKed: commands published now will arrive
    rt.press("button")
    rt.call(lambda: None)
    aid = rt.report.alert["id"]
    with caplog.at_level(logging.WARNING):
        publish(mosquitto, PREFIX + "/cmd", b'{"cmd": "clear", "alert_id": 42, "by": "x"}')
        publish(mosquitto, PREFIX + "/cmd", {"cmd": "ack", "alert_id": aid, "by": "a.jones"})
        wait_until(lambda: rt.report.alert["state"] == "acknowledged", 10)
    bad = [r.getMessage() for r in caplog.records if "ignored cmd" in r.getMessage()]
    assert bad == [f"ignored cmd on {PREFIX}/cmd: alert_id: 42 is not a str"]
    assert rt.screen.is_blank


@pytest.mark.timeout(60)
def test_broker_down_at_press_blanks_now_and_delivers_later(agent, mosquitto):
    sub = Subscriber(mosquitto, PREFIX + "/alert", persistent=True)
    rt, clock, pins = agent()
    assert rt.link.connected.wait(10)
    mosquitto.stop()
    wait_until(lambda: not rt.link.is_connected, 10)
    pins.pin(17).drive_low()
    assert rt.screen.is_blank and rt.screen.message == RAISED      # no network needed
    rt.call(lambda: None)
    aid = rt.report.alert["id"]
    assert rt.outbox.count("alert") == 1
    mosquitto.start()
    assert sub.wait_for("alert", state="raised", timeout=40)["id"] == aid
    wait_until(lambda: rt.outbox.count("alert") == 0, 10)
    sub.close()


def _write_agent_yaml(tmp_path, broker) -> Path:
    path = tmp_path / "agent.yaml"
    b = bootstrap(tmp_path, broker)
    path.write_text(yaml.safe_dump(b.model_dump(mode="json", exclude_none=True)))
    return path


def _run_agent(tmp_path, config: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return spawn([*AGENT, "run", "--config", str(config), "--simulate"],
                 log_path=tmp_path / "agent.log", env=env, cwd=str(REPO))


@pytest.mark.timeout(60)
def test_sigkill_after_press_with_broker_down_then_restart_delivers(tmp_path, mosquitto):
    config = _write_agent_yaml(tmp_path, mosquitto)
    sock = tmp_path / "control.sock"
    mosquitto.stop()
    proc = _run_agent(tmp_path, config)
    try:
        wait_until(lambda: request(sock, {"op": "ping"})["ok"], 20,
                   message=lambda: (tmp_path / "agent.log").read_text())
        # `run` freezes its start-up heap (agent/core/heap.py), so no long collection lands on a press.
        wait_until(lambda: "objects frozen out of the garbage collector's way" in (tmp_path / "agent.log").read_text(),
                   20, message="the agent never froze its start-up objects")
        assert request(sock, {"op": "press", "source": "key"}) == {"ok": True}
        # config_applied, the alert and its evidence: all on disk, none sent.
        status = wait_until(lambda: (s := request(sock, {"op": "status"})["status"])["outbox_pending"] >= 3 and s, 10)
        aid = status["alert"]["id"]
        assert status["screen"]["blank"] and not status["connected"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        terminate(proc)
    mosquitto.start()
    sub = Subscriber(mosquitto, PREFIX + "/#")
    proc = _run_agent(tmp_path, config)
    try:
        raised = sub.wait_for("alert", state="raised", timeout=30)
        assert raised["id"] == aid                                    # the same alert, not a new one
        evidence = sub.wait_for("event", type="report_evidence")
        assert evidence["alert_id"] == aid
        status = wait_until(lambda: request(sock, {"op": "status"})["status"], 10)
        assert status["screen"]["blank"] and status["alert"]["id"] == aid   # still blank after the crash
        wait_until(lambda: request(sock, {"op": "status"})["status"]["outbox_pending"] == 0, 10)
        assert len([p for p in sub.payloads("alert") if p["id"] == aid and p["state"] == "raised"]) == 1
        # Clean stop: SIGTERM -> retained offline status, exit 0.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert sub.wait_for("status", state="offline")
    finally:
        terminate(proc)
        sub.close()


@pytest.mark.timeout(60)
def test_cli_press_and_status_through_the_control_socket(tmp_path, agent):
    rt, clock, pins = agent()
    sock = str(tmp_path / "control.sock")
    assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([*AGENT, "press", "--socket", sock, "--source", "key"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "pressed"
    wait_until(lambda: rt.report.alert, 10)
    assert rt.report.alert["source"] == "key" and rt.screen.is_blank
    out = subprocess.run([*AGENT, "status", "--socket", sock], capture_output=True, text=True, env=env, timeout=30)
    status = json.loads(out.stdout)
    assert status["alert"]["state"] == "raised" and status["device"] == "1a-pi-01"
    # Malformed requests get an error line; the socket keeps serving.
    import socket as socket_mod

    with socket_mod.socket(socket_mod.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(b"this is not json\n")
        reply = json.loads(s.makefile().readline())
    assert reply["ok"] is False and "malformed request" in reply["error"]
    assert request(sock, {"op": "explode"})["error"].startswith("unknown op 'explode'")
    assert request(sock, {"op": "status"})["ok"]
    out = subprocess.run([*AGENT, "press", "--socket", str(tmp_path / "nope.sock")], capture_output=True,
                         text=True, env=env, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith("classroom-agent: error: cannot reach the agent at")


PUPIL_CLIENT = r"""
import json, socket, sys
with socket.socket(socket.AF_UNIX) as s:
    try:
        s.connect(sys.argv[1])
    except OSError as exc:
        print(json.dumps({"connect": exc.strerror}))
        sys.exit(0)
    s.sendall(sys.argv[2].encode() + b"\n")
    print(s.makefile().readline().strip())
"""


@pytest.mark.timeout(60)
def test_the_press_group_may_press_and_nothing_else(tmp_path, mosquitto):
    """A desktop user in the press group (``nogroup`` here, ``nobody``'s) reaches the socket
    and may press (and ask the teacher from the block page: tests/test_blockpage.py); ``status`` and any other op are for root and the agent only (peer
    credentials); an account outside the group cannot connect at all.  (issue 14, item 5)"""
    import grp
    import shutil
    import stat
    import tempfile

    from services import require_root

    require_root("running clients as other users")
    private = Path(tempfile.mkdtemp(prefix="agent-run-", dir="/tmp"))   # like the unit's RuntimeDirectory
    private.chmod(0o750)
    sock = private / "control.sock"
    pins = MockFactory()
    rt = Runtime(bootstrap(tmp_path, mosquitto, control_socket=str(sock), control_group="nogroup"),
                 clock=FakeClock(), screen=Screen(), pin_factory=pins).start()

    def client(user_args, req):
        out = subprocess.run([*user_args, "/usr/bin/python3", "-I", "-c", PUPIL_CLIENT, str(sock), json.dumps(req)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    pupil = ["runuser", "-u", "nobody", "--"]
    outsider = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", "--"]
    try:
        nogroup = grp.getgrnam("nogroup").gr_gid
        assert (os.stat(sock).st_gid, stat.S_IMODE(os.stat(sock).st_mode)) == (nogroup, 0o660)
        assert (private.stat().st_gid, stat.S_IMODE(private.stat().st_mode)) == (nogroup, 0o710)  # traverse only
        listing = subprocess.run([*pupil, "ls", str(private)], capture_output=True, text=True)
        assert listing.returncode != 0 and "permission denied" in listing.stderr.lower()

        assert client(pupil, {"op": "ping"}) == {"ok": True}
        refused = client(pupil, {"op": "status"})
        assert refused["ok"] is False and "status" in refused["error"] and "may only ask, ping and press" in refused["error"]
        assert "status" not in client(pupil, {"op": "explode"})["error"]   # no list of the other ops either
        assert client(pupil, {"op": "press", "source": "key"}) == {"ok": True}
        wait_until(lambda: rt.report.alert, 10)
        assert rt.report.alert["source"] == "key" and rt.screen.is_blank

        assert client(outsider, {"op": "press"}) == {"connect": "Permission denied"}
        assert request(sock, {"op": "status"})["status"]["alert"]["state"] == "raised"  # root still may
    finally:
        pins.pin(17).drive_high()
        rt.stop()
        pins.close()
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.timeout(60)
def test_cli_bad_input_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = tmp_path / "agent.yaml"
    bad.write_text("device: 1a-pi-01\nsite: penny-acres\ncollector_url: http://x\nbroker_url: http://x\n")
    cases = [
        (["run", "--config", str(tmp_path / "missing.yaml")], "missing.yaml: cannot read"),
        (["run", "--config", str(bad)], f"{bad}:4: broker_url: "),
        (["hash-pin", "--pin", "12ab"], "PIN: a staff PIN is 6 to 12 digits"),
        (["hash-pin", "--pin", "2468"], "PIN: a staff PIN is 6 to 12 digits"),
    ]
    for argv, expected in cases:
        out = subprocess.run([*AGENT, *argv], capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 1, argv
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("classroom-agent: error: ")
        assert expected in out.stderr, out.stderr
    out = subprocess.run([*AGENT, "hash-pin", "--pin", "246801"], capture_output=True, text=True, env=env, timeout=30)
    from agent.desktop.pin import verify_pin

    assert out.returncode == 0 and verify_pin("246801", out.stdout.strip())


@pytest.mark.timeout(30)
def test_the_retained_status_names_each_config_version_as_it_is_applied(agent, mosquitto):
    # A collector that connects later goes by the retained status, not by events it missed.
    rt, _, _ = agent()
    wait_until(lambda: rt.link is not None and rt.link.is_connected, 10)
    first = Subscriber(mosquitto, PREFIX + "/status")
    assert first.wait_for("status")["config_version"] == rt.tree.version
    first.close()
    newer = rt.tree.for_device("1a-pi-01")
    newer["version"] = "v-next"
    assert rt.apply_config(newer) and rt.tree.version == "v-next"
    late = Subscriber(mosquitto, PREFIX + "/status")
    wait_until(lambda: [p for p in late.payloads("status") if p.get("config_version") == "v-next"], 10,
               message=lambda: f"the retained status still says {late.payloads('status')}")
    late.close()
