"""MQTT ingest against a real mosquitto: alert -> incident timeline over HTTP, exactly-once storage,
fuzzed payloads that change nothing, commands reaching the device, shared-subscription workers, a
worker SIGKILLed mid-burst losing nothing, TLS, broker restarts; and an AST check that ingest uses
paho's public API only."""

from __future__ import annotations

import ast
import json
import random
import threading

import pytest

from agent import protocol
from server.ingest import Ingest, Metrics
from services import close_client, mqtt_client, wait_until

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import REPO, make_alert, make_event, make_heartbeat, make_status, topic_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def running(mosquitto, store):
    ingest = Ingest(store, f"mqtt://{mosquitto.host}:{mosquitto.port}", batch_size=500).start()
    assert ingest.subscribed.wait(10), "ingest did not subscribe"
    yield ingest
    ingest.stop()


def publish_all(client, messages, qos=1):
    infos = [client.publish(t, p if isinstance(p, (bytes, bytearray)) else protocol.encode(p), qos=qos)
             for t, p in messages]
    for info in infos:
        info.wait_for_publish(10)


def test_alert_lifecycle_becomes_incident_timeline(mosquitto, running, store, app_factory, staff_client):
    device = mqtt_client(mosquitto)
    try:
        alert_id = protocol.new_id()
        where = topic_of("5b", "5b-pi-01", "alert")
        publish_all(device, [(where, make_alert(alert_id, "raised"))])
        evidence = make_event(type="report_evidence", alert_id=alert_id, minutes=10,
                              domains=[{"domain": "scary.example", "ts": protocol.now_ts(), "count": 2}])
        publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), evidence)])
        publish_all(device, [(where, make_alert(alert_id, "acknowledged", by="m.khan"))])
        publish_all(device, [(where, make_alert(alert_id, "cleared", by="m.khan"))])
        wait_until(lambda: len((store.get_incident(alert_id) or {}).get("timeline", [])) == 3, 10)
    finally:
        close_client(device)
    app = app_factory(store)
    dsl = staff_client(app, "dsl")
    incidents = dsl.get("/api/v1/incidents").json()
    assert [i["id"] for i in incidents] == [alert_id]
    assert [(t["state"], t["by"]) for t in incidents[0]["timeline"]] == [
        ("raised", None), ("acknowledged", "m.khan"), ("cleared", "m.khan")]
    assert incidents[0]["alert_state"] == "cleared" and incidents[0]["room"] == "5b"
    teacher = staff_client(app, "teacher")
    seen = teacher.get("/api/v1/incidents").json()
    assert [i["id"] for i in seen] == [alert_id] and "evidence" not in json.dumps(seen)
    assert dsl.get(f"/api/v1/incidents/{alert_id}/evidence").json()["evidence"][0]["domains"][0]["domain"] == \
        "scary.example"


def test_same_event_delivered_twice_is_stored_once(mosquitto, running, store):
    device = mqtt_client(mosquitto)
    try:
        event = make_event()
        alert = make_alert()
        # The agent resends after a crash: same ids, maybe a new connection.
        publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), event),
                             (topic_of("5b", "5b-pi-01", "alert"), alert)])
        wait_until(lambda: running.metrics.get("ingest_events_stored_total") == 1, 10)
        publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), event),
                             (topic_of("5b", "5b-pi-01", "alert"), alert)])
        # alerts also arrive on the non-shared live subscription: 1 event + 3 alert copies
        wait_until(lambda: running.metrics.get("ingest_duplicates_total") == 4, 10)
    finally:
        close_client(device)
    assert store.count("events") == 1
    assert store.count("alert_transitions") == 1
    assert store.count("incidents") == 1


def _fuzz_payloads(rng: random.Random):
    good_event = make_event()
    good_alert = make_alert()
    ev_topic = topic_of("5b", "5b-pi-01", "event")
    al_topic = topic_of("5b", "5b-pi-01", "alert")
    yield ev_topic, b""
    yield ev_topic, b"\xff\xfe\x00garbage"
    yield ev_topic, b"[1, 2, 3]"
    yield ev_topic, b"null"
    yield ev_topic, b"{" * 5000
    yield ev_topic, b'{"id": "x"' + b" " * (70 * 1024) + b"}"  # over the payload limit
    for _ in range(30):
        yield ev_topic, rng.randbytes(rng.randint(1, 300))  # seeded: a failure can be replayed
    for key in ("id", "type", "ts", "site", "room", "device"):
        bad = dict(good_event)
        del bad[key]
        yield ev_topic, protocol.encode(bad)
        for wrong in (1, None, [], {}, True, "", "x" * 300):
            bad = dict(good_event, **{key: wrong})
            yield ev_topic, protocol.encode(bad)
    # Another device's event on my topic (the ACL should stop this; ingest must too).
    yield ev_topic, protocol.encode(dict(good_event, device="5b-pi-02"))
    yield ev_topic, protocol.encode(dict(good_event, room="1a"))
    yield ev_topic, protocol.encode(dict(good_event, domain="nul\u0000.example"))  # PostgreSQL text can't hold it
    yield ev_topic, protocol.encode(dict(good_event, user="\u0000"))
    yield al_topic, protocol.encode(dict(good_alert, state="exploded"))
    yield al_topic, protocol.encode(dict(good_alert, device="1a-pi-01"))
    yield topic_of("5b", "5b-pi-01", "status"), protocol.encode({"state": "maybe", "ts": protocol.now_ts()})
    yield topic_of("5b", "5b-pi-01", "heartbeat"), protocol.encode({"ts": "yesterday", "cpu": "hot"})
    yield "classroom/v1/penny-acres/5b/5B_PI/event", protocol.encode(good_event)
    yield "classroom/v1/penny-acres/5b/5b-pi-01/unknown", protocol.encode(good_event)
    yield "classroom/v1/penny-acres/5b/5b-pi-01/event/extra", protocol.encode(good_event)


def test_fuzzed_payloads_change_nothing(mosquitto, running, store):
    device = mqtt_client(mosquitto)
    try:
        seed = make_event()
        publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), seed)])
        wait_until(lambda: store.count("events") == 1, 10)
        before = {t: store.count(t) for t in ("events", "alert_transitions", "incidents", "heartbeats")}
        status_before = store.get_device("5b-pi-01")
        payloads = list(_fuzz_payloads(random.Random(1234)))
        for t, p in payloads:  # ingest's checks are parse_message's (plus NUL, which PostgreSQL refuses)
            if b"\\u0000" not in p:
                with pytest.raises(protocol.ProtocolError):
                    protocol.parse_message(t, p)
        publish_all(device, payloads)
        # A good message after the storm proves ingest is still alive; ordering on one
        # connection means everything before it has been handled when it is stored.
        marker = make_event(type="login", user="after-fuzz")
        publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), marker)])
        wait_until(lambda: store.get_event(marker["id"]) is not None, 15)
        assert running.flush(10)
    finally:
        close_client(device)
    after = {t: store.count(t) for t in ("events", "alert_transitions", "incidents", "heartbeats")}
    assert after == dict(before, events=before["events"] + 1)
    assert store.get_event(seed["id"])["data"] == seed
    assert store.get_device("5b-pi-01")["status"] == status_before["status"]
    # The topic with an extra level is outside the subscription, so it is never received;
    # status and alert messages arrive twice (shared subscription + the plain one).
    twice = sum(1 for t, _ in payloads if t.endswith(("/status", "/alert")))
    assert running.metrics.get("ingest_malformed_total") == len(payloads) - 1 + twice


def test_unstorable_message_is_dropped_not_retried_forever(mosquitto, sqlite_store):
    # A message that passes the protocol but the store refuses must not block ingest.
    real = sqlite_store.ingest
    poison = make_event(domain="poison.example")

    def picky(items, wait=True):
        if any(d.get("domain") == "poison.example" for _, d, *rest in items):
            raise ValueError("refused by the store")
        return real(items, wait=wait)

    sqlite_store.ingest = picky
    ingest = Ingest(sqlite_store, f"mqtt://{mosquitto.host}:{mosquitto.port}").start()
    assert ingest.subscribed.wait(10)
    device = mqtt_client(mosquitto)
    try:
        good = make_event()
        publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), poison),
                             (topic_of("5b", "5b-pi-01", "event"), good)])
        wait_until(lambda: sqlite_store.get_event(good["id"]) is not None, 15)
        after = make_event()
        publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), poison)])
        publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), after)])
        wait_until(lambda: sqlite_store.get_event(after["id"]) is not None, 15)
    finally:
        close_client(device)
        ingest.stop()
    assert sqlite_store.get_event(poison["id"]) is None
    assert ingest.metrics.get("ingest_malformed_total") == 2


def test_status_and_heartbeat_update_registry(mosquitto, running, store):
    device = mqtt_client(mosquitto)
    try:
        publish_all(device, [(topic_of("5b", "5b-pi-02", "heartbeat"), make_heartbeat())], qos=0)
        info = device.publish(topic_of("5b", "5b-pi-02", "status"), protocol.encode(make_status("online")),
                              qos=1, retain=True)
        info.wait_for_publish(10)
        wait_until(lambda: (store.get_device("5b-pi-02") or {}).get("status") == "online", 10)
        wait_until(lambda: store.count("heartbeats") == 1, 10)
    finally:
        close_client(device)


def test_retained_status_and_last_will_reach_a_new_worker(mosquitto, store, tmp_path):
    import paho.mqtt.client as mqtt

    # The device goes away uncleanly: the broker publishes its Last Will (retained offline).
    dev = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="5b-pi-01",
                      protocol=mqtt.MQTTv5)
    where = topic_of("5b", "5b-pi-01", "status")
    dev.will_set(where, protocol.encode(make_status("offline")), qos=1, retain=True)
    dev.connect(mosquitto.host, mosquitto.port)
    dev.loop_start()
    dev.publish(where, protocol.encode(make_status("online", ts="2026-01-01T00:00:00.000Z")), qos=1,
                retain=True).wait_for_publish(10)
    dev._sock.close()  # simulate power loss: no DISCONNECT, so the will fires
    dev.loop_stop()
    # Only now does a worker start: it learns the retained status (shared subs get none).
    ingest = Ingest(store, f"mqtt://{mosquitto.host}:{mosquitto.port}").start()
    try:
        wait_until(lambda: (store.get_device("5b-pi-01") or {}).get("status") == "offline", 15)
    finally:
        ingest.stop()


def test_ack_command_reaches_the_device(mosquitto, running, store, app_factory, staff_client):
    received = []
    got = threading.Event()
    device = mqtt_client(mosquitto)
    device.on_message = lambda c, u, m: (received.append(json.loads(m.payload)), got.set())
    device.subscribe(topic_of("5b", "5b-pi-01", "cmd"), qos=1)
    try:
        alert = make_alert()
        publish_all(device, [(topic_of("5b", "5b-pi-01", "alert"), alert)])
        wait_until(lambda: store.get_incident(alert["id"]) is not None, 10)

        def publisher(topic, payload, qos):
            info = running.publish(topic, payload, qos)
            assert info.rc == 0

        app = app_factory(store, publisher=publisher)
        teacher = staff_client(app, "teacher")
        r = teacher.post(f"/api/v1/alerts/{alert['id']}/ack")
        assert r.status_code == 200, r.text
        assert got.wait(10)
    finally:
        close_client(device)
    assert received == [{"cmd": "ack", "alert_id": alert["id"], "by": "m.khan"}]
    protocol.validate_cmd(received[0])
    assert store.list_audit(action="alert.ack")[0]["actor"] == "m.khan"


def test_two_workers_share_the_load(mosquitto, sqlite_store):
    workers = [Ingest(sqlite_store, f"mqtt://{mosquitto.host}:{mosquitto.port}", client_id=f"w{i}",
                      metrics=Metrics()).start() for i in range(2)]
    try:
        for w in workers:
            assert w.subscribed.wait(10)
        device = mqtt_client(mosquitto)
        try:
            events = [make_event() for _ in range(200)]
            publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), e) for e in events])
            wait_until(lambda: sqlite_store.count("events") == 200, 15)
        finally:
            close_client(device)
        counts = [w.metrics.get("ingest_events_stored_total") for w in workers]
        # Each message went to exactly one worker of the shared group, and both got some.
        assert sum(counts) == 200 and all(c > 0 for c in counts)
        # Every worker's live listeners hear every alert exactly once, whoever stored it.
        heard = [[], []]
        for w, got in zip(workers, heard):
            w.listeners.append(lambda kind, where, data, got=got: got.append((kind, data["id"], data["state"])))
        alert = make_alert()
        device = mqtt_client(mosquitto)
        try:
            publish_all(device, [(topic_of("5b", "5b-pi-01", "alert"), alert),
                                 (topic_of("5b", "5b-pi-01", "alert"), dict(alert, state="acknowledged"))])
            wait_until(lambda: all(len(h) == 2 for h in heard), 10)
            assert all(w.flush(10) for w in workers)
        finally:
            close_client(device)
        for h in heard:
            assert h == [("alert", alert["id"], "raised"), ("alert", alert["id"], "acknowledged")]
        assert sqlite_store.count("alert_transitions") == 2
    finally:
        for w in workers:
            w.stop()


def test_persistent_session_keeps_messages_across_a_server_restart(mosquitto, sqlite_store):
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    first = Ingest(sqlite_store, url, client_id="ingest-a", session_expiry=600).start()
    assert first.subscribed.wait(10)
    first.stop()  # the server restarts...
    device = mqtt_client(mosquitto)
    try:
        events = [make_event() for _ in range(20)]
        publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), e) for e in events])  # ...while devices send
    finally:
        close_client(device)
    second = Ingest(sqlite_store, url, client_id="ingest-a", session_expiry=600).start()
    try:
        wait_until(lambda: sqlite_store.count("events") == 20, 15)
    finally:
        second.stop()


# --------------------------------------------------------------------------- paho's public API only

INGEST_PACKAGE = REPO / "server" / "ingest"


def private_paho_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every place *source* reaches into paho's internals: a ``_``-prefixed name imported
    from paho, a class derived from a paho class (so no override of paho's ``_`` methods),
    and any ``obj._name`` / ``getattr(obj, "_name")`` on an object other than ``self`` or
    ``cls`` (the package's own private state is only ever reached through ``self``)."""
    tree = ast.parse(source, filename)
    paho_names: set[str] = set()
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "paho":
                    paho_names.add(alias.asname or "paho")
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        problems.append(f"{filename}:{node.lineno}: imports private module {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "paho":
            if any(part.startswith("_") for part in node.module.split(".")):
                problems.append(f"{filename}:{node.lineno}: imports from private module {node.module}")
            for alias in node.names:
                paho_names.add(alias.asname or alias.name)
                if alias.name.startswith("_"):
                    problems.append(f"{filename}:{node.lineno}: imports private {node.module}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in paho_names:
                    problems.append(f"{filename}:{node.lineno}: class {node.name} derives from paho's "
                                    f"{ast.unparse(base)}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                problems.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")):
            problems.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return problems


def test_ingest_uses_only_paho_public_api():
    files = sorted(INGEST_PACKAGE.glob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "client.py", "worker.py"}
    problems = [line for path in files
                for line in private_paho_uses(path.read_text(), str(path.relative_to(REPO)))]
    assert problems == []


def test_private_paho_check_finds_each_kind_of_violation():
    planted = '''
import paho.mqtt.client as mqtt
from paho.mqtt.client import _ConnectionState
from paho.mqtt._packet import decode_publish

class FastClient(mqtt.Client):
    def _packet_read(self):
        return self._in_packet

def read(client):
    client._sock.recv(1)
    getattr(client, "_in_packet")
    return mqtt._socketpair_compat()
'''
    found = "\n".join(private_paho_uses(planted))
    for expected in ("private paho.mqtt.client._ConnectionState", "private module paho.mqtt._packet",
                     "class FastClient derives from paho's mqtt.Client", "client._sock",
                     "getattr(client, '_in_packet')", "mqtt._socketpair_compat"):
        assert expected in found
    assert private_paho_uses("class Mine:\n    def go(self):\n        return self._state\n") == []


def test_paho_version_check_and_pin():
    from importlib.metadata import version

    from server.ingest.client import TESTED_PAHO, check_paho_version

    assert check_paho_version(TESTED_PAHO) is None
    line = check_paho_version("2.9.0")
    assert "2.9.0" in line and TESTED_PAHO in line and "\n" not in line
    # The pin is what makes the warning rare: the tested version, exactly.
    assert f'"paho-mqtt=={TESTED_PAHO}"' in (REPO / "pyproject.toml").read_text()
    assert version("paho-mqtt") == TESTED_PAHO


# --------------------------------------------------------------------------- at-least-once, end to end

KILLED_WORKER = '''
import sys, threading
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from server.ingest import Ingest
from server.store import Store

db, broker, ready, hung, hang_at = sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6])
store = Store.open(db)
real = store.ingest
calls = 0


def ingest(items, wait=True):
    global calls
    calls += 1
    if calls == hang_at:
        real(items)  # committed...
        hung.write_text(str(len(items)))
        threading.Event().wait()  # ...and never acknowledged: the SIGKILL comes first
    return real(items, wait=wait)


store.ingest = ingest
worker = Ingest(store, broker, client_id="killed-worker", session_expiry=600, batch_size=100).start()
if worker.subscribed.wait(30):
    ready.write_text("subscribed")
threading.Event().wait()
'''


def test_worker_killed_mid_burst_loses_nothing_and_stores_nothing_twice(mosquitto_factory, tmp_path):
    import signal
    import sys

    from server.store import Store
    from services import spawn, terminate

    # Unlimited queue: what the broker holds for the dead worker must not be dropped
    # (classroom-server broker-config writes a large max_queued_messages for the same reason).
    broker = mosquitto_factory("max_queued_messages 0\n")
    url = f"mqtt://{broker.host}:{broker.port}"
    db = f"sqlite:///{tmp_path}/server.db"
    ready, hung = tmp_path / "ready", tmp_path / "hung"
    proc = spawn([sys.executable, "-c", KILLED_WORKER, str(REPO), db, url, str(ready), str(hung), "3"],
                 log_path=tmp_path / "worker.log", cwd=str(REPO))
    store = Store.open(db)
    second = None
    try:
        wait_until(ready.exists, 30, message=lambda: (tmp_path / "worker.log").read_text())
        device = mqtt_client(broker)
        try:
            events = [make_event(device="5b-pi-01", domain=f"d{i}.example") for i in range(2000)]
            infos = [device.publish(topic_of("5b", "5b-pi-01", "event"), protocol.encode(e), qos=1) for e in events]
            # The worker has committed its third batch and will never acknowledge it.
            wait_until(hung.exists, 30, message=lambda: (tmp_path / "worker.log").read_text())
            stored_at_kill = store.count("events")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            for info in infos:
                info.wait_for_publish(30)
        finally:
            close_client(device)
        assert 0 < stored_at_kill < len(events)
        # The same worker id comes back: the broker still holds its session, with the
        # messages it never acknowledged (committed or not) and those sent while it was dead.
        second = Ingest(store, url, client_id="killed-worker", session_expiry=600).start()
        wait_until(lambda: store.count("events") == len(events), 30)
        assert second.flush(10)
        counts = store.query("SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids FROM events")[0]
        assert counts == {"n": len(events), "ids": len(events)}
        assert {r["id"] for r in store.query("SELECT id FROM events")} == {e["id"] for e in events}
        # The committed-but-unacknowledged batch came again and was dropped by its event ids.
        assert second.metrics.get("ingest_duplicates_total") >= 1
    finally:
        if second is not None:
            second.stop()
        terminate(proc)
        store.close()


def test_ingest_over_tls(mosquitto_factory, sqlite_store, tmp_path):
    import subprocess

    from services import free_port, require_binary

    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    tls_port = free_port()
    broker = mosquitto_factory(f"listener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n")
    ingest = Ingest(sqlite_store, f"mqtts://127.0.0.1:{tls_port}", ca_file=str(cert)).start()
    try:
        assert ingest.subscribed.wait(10), "ingest did not subscribe over TLS"
        device = mqtt_client(broker)  # devices on the plain listener; ingest reads through TLS
        try:
            events = [make_event() for _ in range(500)]
            publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), e) for e in events])
            wait_until(lambda: sqlite_store.count("events") == len(events), 15)
        finally:
            close_client(device)
        assert ingest.flush(10) and ingest.queue_depth == 0
    finally:
        ingest.stop()


def test_ingest_reconnects_after_the_broker_restarts(mosquitto, sqlite_store):
    ingest = Ingest(sqlite_store, f"mqtt://{mosquitto.host}:{mosquitto.port}").start()
    try:
        assert ingest.subscribed.wait(10)
        mosquitto.stop()
        wait_until(lambda: not ingest.connected.is_set(), 10)
        mosquitto.start()
        # The worker's own loop backs off, comes back and subscribes again.
        wait_until(ingest.subscribed.is_set, 30)
        device = mqtt_client(mosquitto)
        try:
            events = [make_event() for _ in range(50)]
            publish_all(device, [(topic_of("5b", "5b-pi-01", "event"), e) for e in events])
            wait_until(lambda: sqlite_store.count("events") == len(events), 15)
        finally:
            close_client(device)
    finally:
        ingest.stop()
    assert not ingest.connected.is_set()


def test_a_worker_tries_the_broker_again_at_most_5_s_apart_and_connects_once_it_is_back(mosquitto_factory):
    # docs/server.md: 0.5, 1, 2, 4, then every 5 s, so the collector is back within about 5 s
    # of its broker (it once waited up to 30).  The waits are recorded, not slept.
    from server.ingest.client import RECONNECT_DELAY

    broker = mosquitto_factory(start=False)  # its port, nothing listening yet
    waits: list[float] = []
    worker = Ingest(None, f"mqtt://127.0.0.1:{broker.port}", client_id="back-soon")
    sleep = worker.connection._sleep

    def record(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 6:
            broker.start()  # the broker comes back during the sixth wait
        sleep(0)

    worker.connection._sleep = record
    worker.start()
    try:
        assert worker.subscribed.wait(20), f"never reconnected; waited {waits}"
    finally:
        worker.stop()
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0] and RECONNECT_DELAY == (0.5, 5.0)
