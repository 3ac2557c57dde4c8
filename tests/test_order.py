"""Order and late joiners (issue 13 items 2-4), against real mosquitto and the real agent.

* A network partition inside test-made network namespaces (the agent in one, the broker
  and the observers in another, a veth between them brought down): after the link comes
  back every message arrives, per alert in transition order and per device in commit
  order, the backlog before the retained ``online``.  The partition lasts
  ``PARTITION_SECONDS`` (environment; 12 s by default so the suite stays quick, at least
  three keepalives; the issue's 60 s was run too: docs/protocol.md says when).
* A broker restart (with persistence) where the agent reconnects before the teacher's
  client: the teacher still gets the raise (the latest transition is retained), and the
  agent's backlog reaches an observer in order.  Times are recorded and printed; how fast
  is bench/recovery.py's business.
* A teacher's client started after the press shows the open alert; one started after the
  clear does not.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from agent.config.schema import AgentBootstrap
from agent.core.control import request
from agent.core.runtime import Runtime
from agent.desktop.headless import HeadlessScreen
from agent.report.screen import Screen
from broker_fixtures import PREFIX, SITE, secure_broker  # noqa: F401
from runtime_fixtures import REPO, unbatched
from server.alerts.client import AlertsClient
from server.alerts.view import TerminalView
from services import require_binary, terminate, wait_until

pytestmark = pytest.mark.integration

RANK = {"raised": 0, "escalated": 1, "acknowledged": 2, "cleared": 3}
AGENT = [sys.executable, "-c", "import sys; from agent.cli import main; main(sys.argv[1:])"]


def order_violations(messages: list[tuple[str, dict]]) -> list[str]:
    """Per alert: no state first seen after a later one.  *messages*: (kind, payload) in arrival order."""
    problems, best = [], {}
    for kind, payload in messages:
        if kind != "alert":
            continue
        rank = RANK[payload["state"]]
        seen = best.get(payload["id"])
        if seen is None and payload["state"] != "raised":
            problems.append(f"{payload['id'][:8]}: {payload['state']} before raised")
        elif seen is not None and rank < seen:
            problems.append(f"{payload['id'][:8]}: {payload['state']} after a later state")
        best[payload["id"]] = max(rank, seen if seen is not None else -1)
    return problems


def commit_order_violations(messages: list[tuple[str, dict]]) -> list[str]:
    """One device's commit order: the first copy of each message it sent arrives in the order
    of its ``ts`` (stamped as it was committed; a status's as it was published).  A Last Will
    (``offline``, stamped at connect time), later copies and staff replies are left out."""
    problems, seen, last = [], set(), ""
    for kind, payload in messages:
        if kind not in ("alert", "event", "status") or (kind == "status" and payload["state"] != "online"):
            continue
        key = (kind, payload.get("id"), payload.get("state"), payload.get("ts"))
        if key in seen:
            continue
        seen.add(key)
        if payload["ts"] < last:
            problems.append(f"{kind} {payload.get('state') or payload.get('type')} ts {payload['ts']} after {last}")
        last = max(last, payload["ts"])
    return problems


def first_index(messages, predicate) -> int:
    for i, item in enumerate(messages):
        if predicate(*item):
            return i
    raise AssertionError(f"not found in {[(k, p.get('state') or p.get('type')) for k, p in messages]}")


# --------------------------------------------------------------------------- the partition


class Observer:
    """mosquitto_sub inside the broker's namespace: every message, with its retain flag."""

    def __init__(self, ns, host: str, port: int, out: Path):
        self.out = out
        self.proc = ns.popen([require_binary("mosquitto_sub"), "-h", host, "-p", str(port), "-q", "1", "-V", "mqttv5",
                              "-t", f"{PREFIX}/#", "-F", "%r %t %p"], stdout=open(out, "wb"))

    def batches(self) -> int:
        """Messages that carried a batch of events (a backlog, agent/protocol.py)."""
        return sum('{"batch":' in line for line in self.out.read_text().splitlines())

    def messages(self, live_only: bool = False) -> list[tuple[str, dict]]:
        found = []
        for line in self.out.read_text().splitlines():
            retained, topic, payload = line.split(" ", 2)
            if live_only and retained == "1":
                continue
            found += unbatched(topic.rsplit("/", 1)[1], json.loads(payload))
        return found


@pytest.mark.timeout(600)
def test_order_holds_across_a_network_partition(tmp_path, netns):
    seconds = float(os.environ.get("PARTITION_SECONDS", "12"))
    keepalive = 5
    seconds = max(seconds, 2.4 * keepalive)          # long enough for both ends to notice
    device_ns, broker_ns = netns(), netns()
    device_addr, broker_addr = device_ns.link(broker_ns)
    port = 18830
    broker_ns.mosquitto(broker_addr, port, tmp_path)
    observer = Observer(broker_ns, broker_addr, port, tmp_path / "observed.txt")

    # The example tree, with a keepalive and an escalation that fit in the partition.
    tree = tmp_path / "config"
    shutil.copytree(REPO / "config", tree)
    site = yaml.safe_load((tree / "site.yaml").read_text())
    site["broker"]["keepalive_seconds"] = keepalive
    site["escalation"]["timeout_seconds"] = 10
    (tree / "site.yaml").write_text(yaml.safe_dump(site))
    sock = tmp_path / "control.sock"
    boot = AgentBootstrap(device="1a-pi-01", site=SITE, broker_url=f"mqtt://{broker_addr}:{port}",
                          collector_url="http://127.0.0.1:9", credentials=str(tmp_path / "none.yaml"),
                          state_dir=str(tmp_path / "state"), control_socket=str(sock), config_dir=str(tree),
                          screen_backend="headless")
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(boot.model_dump(mode="json", exclude_none=True)))
    log = tmp_path / "agent.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    agent = device_ns.popen([*AGENT, "run", "--config", str(tmp_path / "agent.yaml"), "--simulate"],
                            log_path=log, env=env, cwd=str(REPO))

    def status():
        if agent.poll() is not None:
            raise AssertionError(log.read_text()[-3000:])
        return request(sock, {"op": "status"})["status"]

    wait_until(lambda: status()["connected"], 20, message=lambda: log.read_text()[-2000:])
    wait_until(lambda: any(k == "status" and p["state"] == "online" for k, p in observer.messages()), 10)
    veth = device_ns.interface(device_addr)

    # The partition: the press goes out into a link that is gone, the client does not know yet.
    started = time.monotonic()
    device_ns.run(["ip", "link", "set", veth, "down"])
    assert request(sock, {"op": "press", "source": "key"})["ok"]
    wait_until(lambda: not status()["connected"], seconds, interval=0.2,
               message="the agent never noticed the partition")
    assert request(sock, {"op": "press", "source": "key"})["ok"]   # repeats: stored while offline
    assert request(sock, {"op": "press", "source": "key"})["ok"]
    aid = status()["alert"]["id"]
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))  # the partition's length, not a sync
    device_ns.run(["ip", "link", "set", veth, "up"])
    healed = time.monotonic()
    wait_until(lambda: status()["connected"] and status()["outbox_pending"] == 0, 60, interval=0.1,
               message=lambda: str(status()))
    print(f"partition {seconds:.0f} s; reconnected and drained {time.monotonic() - healed:.2f} s after the link came back")

    # Staff answer from the broker's side (a teacher's reply topic).
    pub = [require_binary("mosquitto_pub"), "-h", broker_addr, "-p", str(port), "-q", "1", "-V", "mqttv5"]
    for cmd in ("ack", "clear"):
        broker_ns.run([*pub, "-t", f"{PREFIX}/{SITE}/1a/1a-pi-01/reply/m.khan",
                       "-m", json.dumps({"cmd": cmd, "alert_id": aid})])
        wait_until(lambda: any(k == "alert" and p["id"] == aid and p["state"] == ("acknowledged" if cmd == "ack"
                                                                                 else "cleared")
                               for k, p in observer.messages()), 15)
    terminate(agent)
    got = observer.messages()
    assert order_violations(got) == []
    assert commit_order_violations(got) == []
    # The backlog's consecutive events went as batches, and the order above still holds.
    assert observer.batches() >= 1
    # The landmarks: the raise, its evidence and the repeats (pressed once the agent knew it
    # was offline), the escalation (whenever it fell due), all before the online status that
    # follows the backlog; then what staff did once it was back.
    mine = [(k, p) for k, p in got if (p.get("id") == aid or p.get("alert_id") == aid or k == "status")]
    labels = [(k, p.get("state") or p.get("type")) for k, p in mine]
    raised = first_index(mine, lambda k, p: k == "alert" and p["state"] == "raised")
    evidence = first_index(mine, lambda k, p: k == "event" and p["type"] == "report_evidence")
    repeat2 = first_index(mine, lambda k, p: k == "event" and p["type"] == "press_repeated" and p["presses"] == 2)
    repeat3 = first_index(mine, lambda k, p: k == "event" and p["type"] == "press_repeated" and p["presses"] == 3)
    escalated = first_index(mine, lambda k, p: k == "alert" and p["state"] == "escalated")
    acked = first_index(mine, lambda k, p: k == "alert" and p["state"] == "acknowledged")
    online = max(i for i, (k, p) in enumerate(mine[:acked]) if k == "status" and p["state"] == "online")
    cleared = first_index(mine, lambda k, p: k == "alert" and p["state"] == "cleared")
    assert raised < evidence < repeat2 < repeat3 < online, labels
    assert raised < escalated < online < acked < cleared, labels
    assert mine[acked][1]["by"] == "m.khan"


# --------------------------------------------------------------------------- broker restart, late joiners


def start_agent(sb, tmp_path, device="5b-pi-01"):
    boot = AgentBootstrap(device=device, site=SITE, broker_url=f"mqtt://127.0.0.1:{sb.broker.port}",
                          collector_url="http://127.0.0.1:9", credentials=str(sb.out / "credentials" / f"{device}.yaml"),
                          state_dir=str(tmp_path / "state"), control_socket=str(tmp_path / "control.sock"),
                          config_dir=str(REPO / "config"), screen_backend="headless")
    return Runtime(boot, screen=Screen(HeadlessScreen()), pin_factory=MockFactory(), control=False).start()


class SessionObserver:
    """The collector's view: its own account, a persistent session (the broker queues for it
    while it is away and keeps it across a restart with persistence), every message of a device."""

    def __init__(self, sb, topic: str, username: str = "classroom-server"):
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=username,
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, sb.passwords[username])
        self.client.reconnect_delay_set(0.1, 0.5)

        def on_connect(client, userdata, flags, rc, props):
            if not flags.session_present:
                client.subscribe(topic, qos=1)
            else:
                self.subscribed.set()

        def on_message(client, userdata, msg):
            with self.lock:
                self.messages += unbatched(msg.topic.rsplit("/", 1)[1], json.loads(msg.payload))

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", sb.broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10)

    def got(self) -> list[tuple[str, dict]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def teacher(sb, username="m.khan", room="5b"):
    return AlertsClient(broker=f"mqtt://127.0.0.1:{sb.broker.port}", username=username,
                        password=sb.passwords[username], room=room, site=SITE,
                        view=TerminalView(io.StringIO(), as_json=True)).start()


@pytest.mark.timeout(120)
def test_a_teacher_who_reconnects_after_the_agent_still_gets_the_raise(secure_broker, tmp_path):
    """Before: the agent delivered its raise while the teacher's client was still away and
    the teacher first heard of it as ``escalated`` a minute later."""
    sb = secure_broker
    runtime = start_agent(sb, tmp_path)
    observer = SessionObserver(sb, f"{PREFIX}/{SITE}/5b/5b-pi-01/+")
    client = teacher(sb)
    try:
        wait_until(lambda: runtime.link is not None and runtime.link.connected.is_set(), 15)
        client.close()                                # the teacher's laptop is away ...
        sb.broker.stop()                              # ... when the broker restarts
        wait_until(lambda: not runtime.link.is_connected, 10)
        runtime.press("button")                       # pressed while the broker is down
        aid = runtime.report.alert["id"]
        sb.broker.start()
        back = time.monotonic()
        wait_until(lambda: runtime.outbox.count("alert") == 0, 20)   # the agent is back first and delivered
        agent_back = time.monotonic() - back
        client = teacher(sb)                          # the teacher comes back later
        seen = wait_until(lambda: client.board.alerts.get(aid), 10)
        print(f"agent delivered {agent_back:.2f} s after the broker came back; the teacher joined later")
        assert seen.state == "raised" and seen.device == "5b-pi-01" and seen.seat == "Table 1"
        client.ack(aid[:8])
        wait_until(lambda: runtime.report.alert and runtime.report.alert["state"] == "acknowledged", 10)
        assert runtime.report.alert["acknowledged_by"] == "m.khan"
        # The collector's view of the device: backlog before online, transitions in order.
        got = wait_until(lambda: (g := observer.got()) and any(p.get("state") == "acknowledged" for _, p in g) and g,
                         10)
        assert order_violations(got) == [] and commit_order_violations(got) == []
        raised = first_index(got, lambda k, p: k == "alert" and p["id"] == aid and p["state"] == "raised")
        online = max(i for i, (k, p) in enumerate(got) if k == "status" and p["state"] == "online")
        assert raised < online
    finally:
        client.close()
        observer.close()
        runtime.stop()


@pytest.mark.timeout(120)
def test_the_alert_reaches_a_connected_teacher_after_a_broker_restart(secure_broker, tmp_path):
    """Both the agent and the teacher's client reconnect by themselves; the recorded times
    are printed (bench/recovery.py measures them), the test asserts arrival and order."""
    sb = secure_broker
    out = io.StringIO()
    runtime = start_agent(sb, tmp_path)
    client = AlertsClient(broker=f"mqtt://127.0.0.1:{sb.broker.port}", username="m.khan",
                          password=sb.passwords["m.khan"], room="5b", site=SITE,
                          view=TerminalView(out, as_json=True)).start()
    seen = []
    client.on_alert = lambda alert: seen.append((time.monotonic(), alert.id, alert.state))
    try:
        wait_until(lambda: runtime.link.connected.is_set(), 15)
        sb.broker.stop()
        wait_until(lambda: "lost the broker" in out.getvalue(), 10)
        runtime.press("button")
        aid = runtime.report.alert["id"]
        runtime.call(lambda: None)
        sb.broker.start()
        back = time.monotonic()
        wait_until(lambda: any(a == aid for _, a, _ in seen), 20)
        arrived = next(t for t, a, _ in seen if a == aid)
        print(f"alert at the teacher {1000 * (arrived - back):.0f} ms after the broker came back")
        assert [s for _, a, s in seen if a == aid][0] == "raised"
    finally:
        client.close()
        runtime.stop()


@pytest.mark.timeout(90)
def test_a_teacher_client_started_after_the_press_shows_it_and_not_once_cleared(secure_broker, tmp_path):
    """Before: a classroom-alerts client started after a press did not show it."""
    sb = secure_broker
    runtime = start_agent(sb, tmp_path)
    try:
        wait_until(lambda: runtime.link.connected.is_set(), 15)
        runtime.press("key")
        aid = runtime.report.alert["id"]
        wait_until(lambda: runtime.outbox.count("alert") == 0, 10)
        late = teacher(sb)                          # collector down or not: broker -> teacher
        try:
            alert = wait_until(lambda: late.board.alerts.get(aid), 5)
            assert alert.state == "raised" and alert.room == "5b"
            dsl = teacher(sb, "s.patel", "+")       # the office/DSL watching every room
            assert wait_until(lambda: dsl.board.alerts.get(aid), 5).state == "raised"
            dsl.close()
            late.clear(aid[:8])
            wait_until(lambda: aid not in late.board.alerts, 10)
        finally:
            late.close()
        wait_until(lambda: runtime.outbox.count() == 0, 10)
        after = teacher(sb)                         # the retained transition is "cleared" now
        try:
            wait_until(lambda: after.subscribed.is_set(), 5)
            runtime.press("key")                    # a new report, to know the old one had its chance
            second = runtime.report.alert["id"]
            wait_until(lambda: second in after.board.alerts, 10)
            assert aid not in after.board.alerts and list(after.board.alerts) == [second]
        finally:
            after.close()
    finally:
        runtime.stop()


@pytest.mark.timeout(180)
def test_recovery_bench_runs_and_prints_its_summary_line():
    # Numbers are the bench's business (no timed assertions here); this keeps it runnable.
    import re

    r = subprocess.run([sys.executable, str(REPO / "bench" / "recovery.py"), "--devices", "2", "--restarts", "1"],
                       capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"recovery presses=\d+ lost=0 duplicated_at_teacher=\d+ reconnect_p95_ms=\d+ "
                        r"order_violations=0", last), r.stdout[-2000:]
