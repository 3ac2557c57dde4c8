"""No unwatched room, and escalation that survives the collector: real mosquitto, the real
collector (ingest + app + uvicorn, and ``classroom-server serve`` processes), a real SMTP
server and a real webhook receiver.

* A press during school hours in a room with no live receiver goes at once to the office
  and the DSL (not to every contact), by e-mail and webhook.
* A teacher client's retained ``_watch`` presence, or a dashboard tab on the room's live view,
  makes a room watched; the client's Last Will (it dies without a word) makes it unwatched
  again.  Outside school hours an unwatched press waits for the device's own escalation,
  which goes out at any hour.
* ``classroom-server serve --notify`` SIGKILLed while a delivery is being retried: the next
  one resumes it, sends each message exactly once, and makes no burst of attempts.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent import protocol
from notify_fixtures import *  # noqa: F401,F403
from notify_fixtures import CONTACT_EMAILS, notify_tree_dir, wait_for_mail, write_notify_file
from server_fixtures import PASSWORD, REPO, SITE, STAFF
from services import close_client, free_port, mqtt_client, spawn, terminate, wait_until
from web_fixtures import collector  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PREFIX = protocol.DEFAULT_PREFIX
CLI = str(Path(sys.executable).parent / "classroom-server")
SCHOOL_TIME = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)  # a Tuesday in the autumn term, 10:00
SATURDAY = datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def tree(tmp_path):
    """The collector fixture's tree: the example config with e-mails on the escalation contacts."""
    from agent.config import load_tree

    return load_tree(notify_tree_dir(tmp_path, REPO))


def _alert(room: str, device: str, state: str = "raised", alert_id: str | None = None) -> dict:
    return {"id": alert_id or protocol.new_id(), "state": state, "site": SITE, "room": room, "device": device,
            "seat": None, "ts": protocol.now_ts(), "by": None}


class Heard:
    """An ingest listener after the notifier's: once it has an alert, so has the notifier."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, str]] = []

    def __call__(self, kind, where, data) -> None:
        if kind == "alert":
            self.alerts.append((data["id"], data["state"]))


def _press(device_client, alert: dict, heard: Heard) -> dict:
    topic = protocol.topic(PREFIX, SITE, alert["room"], alert["device"], "alert")
    device_client.publish(topic, protocol.encode(alert), qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: (alert["id"], alert["state"]) in heard.alerts, timeout=10,
               message=f"the collector did not hear {alert['state']} in {alert['room']}")
    return alert


def _wired(collector, settings, clock):
    from server.notify import Notifier

    notifier = Notifier(collector.store, settings, lambda: collector.app.state.tree, collector.app.state.presence,
                        clock=lambda: clock)
    heard = Heard()
    collector.app.state.listeners.extend([notifier.listener, heard])  # as serve.py: after presence
    return notifier, heard


def test_press_in_a_room_nobody_watches_goes_to_the_office_and_dsl_at_once(collector, smtp_server, webhooks,
                                                                          tmp_path):
    from server.notify import load_notify

    smtp_server.start()
    webhooks.start()
    notifier, heard = _wired(collector, load_notify(write_notify_file(tmp_path, smtp_server, webhooks)), SCHOOL_TIME)
    device = mqtt_client(collector.broker, client_id="1a-pi-01")
    try:
        alert = _press(device, _alert("1a", "1a-pi-01"), heard)
        assert notifier.run_once() == 5  # dsl + office by e-mail, three webhooks; not the head
    finally:
        close_client(device)
    rows = collector.store.list_deliveries(alert_id=alert["id"])
    assert {r["reason"] for r in rows} == {"unwatched"} and {r["state"] for r in rows} == {"raised"}
    assert {r["recipient"] for r in rows if r["channel"] == "email"} == {CONTACT_EMAILS["dsl"], CONTACT_EMAILS["office"]}
    assert all(r["status"] == "sent" for r in rows)
    [mail] = wait_for_mail(smtp_server, CONTACT_EMAILS["office"])
    assert "nobody is watching" in mail["Subject"] and "1a" in mail["Subject"]
    assert "no teacher client or dashboard is showing this room" in mail.get_content()
    assert smtp_server.to(CONTACT_EMAILS["headteacher"]) == []
    [plain] = webhooks.at("/json")
    assert plain["reason"] == "unwatched" and plain["room"] == "1a"


def test_teacher_clients_and_dashboard_tabs_are_live_receivers(collector, smtp_server, webhooks, tmp_path):
    import httpx
    import paho.mqtt.client as mqtt

    from server.notify import load_notify

    smtp_server.start()
    webhooks.start()
    settings = load_notify(write_notify_file(tmp_path, smtp_server, webhooks))
    notifier, heard = _wired(collector, settings, SCHOOL_TIME)
    presence = collector.app.state.presence
    store = collector.store
    device_5b = mqtt_client(collector.broker, client_id="5b-pi-01")
    device_1a = mqtt_client(collector.broker, client_id="1a-pi-01")

    # m.khan's alerts client: retained "watching", Last Will "gone" (agent/protocol.py watch_topic).
    watch = protocol.watch_topic(PREFIX, SITE, "5b", "m.khan")
    will = protocol.encode({"state": "gone", "ts": protocol.now_ts(), "client": "classroom-alerts"})
    teacher = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="m.khan",
                          protocol=mqtt.MQTTv5)
    teacher.will_set(watch, will, qos=1, retain=True)
    teacher.connect(collector.broker.host, collector.broker.port, keepalive=30)
    teacher.loop_start()
    stop_tab = threading.Event()
    streams: list = []  # the tab's open event stream, to close under it at the end
    tab = None
    try:
        teacher.publish(watch, protocol.encode({"state": "watching", "ts": protocol.now_ts(),
                                                "client": "classroom-alerts"}), qos=1, retain=True).wait_for_publish(5)
        wait_until(lambda: presence.is_watched(SITE, "5b"), timeout=10, message="the teacher client was not seen")
        watched = _press(device_5b, _alert("5b", "5b-pi-01"), heard)
        notifier.run_once()
        assert store.list_deliveries(alert_id=watched["id"]) == []

        # A dashboard tab on 1a's live view (the DSL may open any room).
        token = httpx.post(f"{collector.url}/api/v1/login",
                           json={"username": STAFF["dsl"], "password": PASSWORD}).json()["token"]

        def read_tab():
            while not stop_tab.is_set():
                with httpx.stream("GET", f"{collector.url}/rooms/1a/events", timeout=30,
                                  headers={"Authorization": f"Bearer {token}"}) as r:
                    streams.append(r)
                    try:
                        for _ in r.iter_lines():
                            if stop_tab.is_set():
                                return
                    except httpx.RemoteProtocolError:
                        if stop_tab.is_set():
                            return  # its connection ended under it (the test's end)
                        raise

        tab = threading.Thread(target=read_tab, daemon=True)
        tab.start()
        wait_until(lambda: presence.is_watched(SITE, "1a"), timeout=10, message="the dashboard tab was not seen")
        assert presence.receivers(SITE)["1a"][0]["who"] == STAFF["dsl"]
        seen = _press(device_1a, _alert("1a", "1a-pi-01"), heard)
        notifier.run_once()
        assert store.list_deliveries(alert_id=seen["id"]) == []

        # The teacher's client dies without a word: the broker publishes its Last Will.
        teacher.socket().shutdown(socket.SHUT_RDWR)
        wait_until(lambda: not presence.is_watched(SITE, "5b"), timeout=10, message="the Last Will was not heard")
        unwatched = _press(device_5b, _alert("5b", "5b-pi-02"), heard)
        assert notifier.run_once() == 5
        assert {r["reason"] for r in store.list_deliveries(alert_id=unwatched["id"])} == {"unwatched"}
    finally:
        stop_tab.set()
        teacher.loop_stop()
        close_client(device_1a)
    # Presence messages are read, never refused as malformed or stored as events.
    assert collector.ingest.metrics.get("ingest_malformed_total") == 0
    assert store.count("events") == 0

    # Saturday: an unwatched press waits for the device's own escalation, which goes at any hour.
    from server.notify import Notifier

    weekend = Notifier(store, settings, lambda: collector.app.state.tree, presence, clock=lambda: SATURDAY)
    collector.app.state.listeners.insert(-1, weekend.listener)
    try:
        quiet = _press(device_5b, _alert("5b", "5b-pi-01"), heard)
        weekend.run_once()
        assert store.list_deliveries(alert_id=quiet["id"]) == []
        _press(device_5b, {**quiet, "state": "escalated", "ts": protocol.now_ts()}, heard)
        assert weekend.run_once() == 6
        assert {r["reason"] for r in store.list_deliveries(alert_id=quiet["id"])} == {"escalated"}
    finally:
        close_client(device_5b)
        notifier.stop()
        weekend.stop()
        if tab is not None:
            # The tab waits in a read until the next event or keep-alive (about 10 s): end
            # its connection, as closing the tab would.
            for r in streams:
                r.extensions["network_stream"].get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            tab.join(timeout=30)
            assert not tab.is_alive()


def test_collector_killed_mid_retry_resumes_and_sends_each_message_once(mosquitto, smtp_server, webhooks, tmp_path):
    import httpx

    from server.store import Store

    config = notify_tree_dir(tmp_path, REPO)
    # Both receivers down for now; escalations only (a raise in school hours could also be "unwatched").
    notify = write_notify_file(tmp_path, smtp_server, webhooks, send={"escalated": True, "unwatched": False})
    db = f"sqlite:///{tmp_path}/server.db"
    port = free_port()
    argv = [CLI, "serve", "--config", str(config), "--db", db, "--broker", f"mqtt://127.0.0.1:{mosquitto.port}",
            "--port", str(port), "--notify", str(notify), "--ingest-id", "collector-under-test",
            "--reports-dir", str(tmp_path / "reports")]
    log = tmp_path / "serve.log"

    def start():
        proc = spawn(argv, log_path=log, cwd=str(REPO))
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json().get("broker"),
                   timeout=30, message=lambda: log.read_text()[-3000:])
        return proc

    proc = start()
    store = Store.open(db)
    device = mqtt_client(mosquitto, client_id="5b-pi-01")
    try:
        raised = _alert("5b", "5b-pi-01")
        escalated = {**raised, "state": "escalated", "ts": protocol.now_ts()}
        topic = protocol.topic(PREFIX, SITE, "5b", "5b-pi-01", "alert")
        for alert in (raised, escalated):  # as the agent: the latest transition retained
            device.publish(topic, protocol.encode(alert), qos=1, retain=True).wait_for_publish(5)
        wait_until(lambda: store.count("deliveries", "reason = 'escalated'") == 6 and
                   all(r["attempts"] >= 1 for r in store.list_deliveries(alert_id=raised["id"])
                       if r["reason"] == "escalated"),
                   timeout=30, message=lambda: log.read_text()[-3000:])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before = {r["id"]: r["attempts"] for r in store.list_deliveries(alert_id=raised["id"])}
        assert all(r["status"] == "pending" for r in store.list_deliveries(alert_id=raised["id"]))

        smtp_server.start()
        webhooks.start()
        proc = start()
        wait_until(lambda: all(r["status"] == "sent" for r in store.list_deliveries(alert_id=raised["id"])),
                   timeout=60, message=lambda: log.read_text()[-3000:])
    finally:
        close_client(device)
        terminate(proc)
    after = store.list_deliveries(alert_id=raised["id"])
    escalations = [r for r in after if r["reason"] == "escalated"]
    assert len(escalations) == 6
    # Resumed where it was: exactly one more attempt each, the one that worked; no burst.
    for row in escalations:
        assert row["attempts"] == before[row["id"]] + 1
        assert [a["result"] for a in row["attempt_log"]][-1] == "sent"
    for address in CONTACT_EMAILS.values():
        assert len(smtp_server.to(address)) == 1, address
    assert len(webhooks.at("/teams")) == len(webhooks.at("/slack")) == len(webhooks.at("/json")) == 1
    store.close()
