"""MQTT ingest against a real mosquitto: alert -> incident timeline over HTTP, exactly-once storage,
fuzzed payloads that change nothing, commands reaching the device, shared-subscription workers."""

from __future__ import annotations

import json
import random
import threading

import pytest

from agent import protocol
from server.ingest import Ingest, Metrics
from services import close_client, mqtt_client, wait_until

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import make_alert, make_event, make_heartbeat, make_status, topic_of

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
