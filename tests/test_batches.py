"""A device's backlog goes as batches of events (agent/protocol.py, docs/protocol.md "Batches").

* The contract: ``{"batch": [event, ...]}`` on a device's event topic, 1 to BATCH_MAX events,
  each validated as an event of that topic; a bad event costs only itself.
* The agent's link, against a real mosquitto: a backlog of stored events leaves as batches
  (runs of consecutive events, never across an alert, never over the size limit), in order,
  and every row is deleted once the broker has the batch; ``batch_max=1`` sends one per message.
* Ingest, against a real mosquitto and the store: every good event of a batch is stored once
  (a batch sent again stores nothing twice), the bad ones are counted as malformed.
"""

from __future__ import annotations

import json

import pytest

from agent import protocol
from agent.uplink.link import Link
from agent.uplink.outbox import Outbox
from runtime_fixtures import Subscriber
from server.ingest import Ingest
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import make_event, topic_of
from services import close_client, mqtt_client, wait_until

SITE = "penny-acres"


def event_of(n: int, device: str = "1a-pi-01", room: str = "1a", **fields) -> dict:
    return {"id": f"00000000-0000-4000-8000-{n:012d}", "type": "blocked", "ts": "2026-11-24T10:00:00.000Z",
            "site": SITE, "room": room, "device": device, "domain": f"site{n}.example", "profile": "ks2",
            "count": 1, **fields}


# --------------------------------------------------------------------------- the contract


def test_a_batch_is_its_events_each_checked_against_the_topic():
    where = protocol.parse_topic(f"classroom/v1/{SITE}/1a/1a-pi-01/event")
    good, bad = protocol.batch_events({"batch": [event_of(1), 5, event_of(2, device="1a-pi-02"), event_of(3)]},
                                      where)
    assert [e["id"][-1] for e in good] == ["1", "3"]
    assert bad == ["batch[1]: must be a JSON object, not int",
                   "batch[2]: device: '1a-pi-02' does not match the topic ('1a-pi-01')"]
    assert protocol.is_batch({"batch": []}) and not protocol.is_batch(event_of(1))


@pytest.mark.parametrize("payload, message", [
    ({"batch": []}, "batch: must be a list of 1 to 100 events"),
    ({"batch": [event_of(n) for n in range(protocol.BATCH_MAX + 1)]}, "batch: must be a list of 1 to 100 events"),
    ({"batch": {"id": "x"}}, "batch: must be a list of 1 to 100 events"),
    ({"batch": [event_of(1)], "id": "00000000-0000-4000-8000-000000000009"},
     "id: a batch has no other key than 'batch'"),
])
def test_a_malformed_batch_is_one_line_naming_the_field(payload, message):
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.batch_events(payload)
    assert str(exc.value) == message


def test_encode_batch_keeps_each_event_as_stored():
    raws = [protocol.encode(event_of(n)) for n in range(3)]
    assert json.loads(protocol.encode_batch(raws)) == {"batch": [json.loads(r) for r in raws]}


# --------------------------------------------------------------------------- the agent's link


def backlog_link(tmp_path, broker, batch_max=protocol.BATCH_MAX, events=250, big=False):
    """A link with *events* stored events and an alert after the first 30, not yet started."""
    box = Outbox(tmp_path / "outbox.db")
    link = Link(broker_url=f"mqtt://127.0.0.1:{broker.port}", prefix="classroom/v1", site=SITE, room="1a",
                device="1a-pi-01", outbox=box, config_version="v1", batch_max=batch_max)
    padding = {"padding": "x" * 2000} if big else {}
    for n in range(events):
        if n == 30:
            link.send("alert", {"id": "00000000-0000-4000-8000-00000000a1e7", "state": "raised", "site": SITE,
                                "room": "1a", "device": "1a-pi-01", "seat": "Table 1",
                                "ts": "2026-11-24T10:00:00.000Z", "by": None})
        link.send("event", event_of(n, **padding))
    return link, box


def received(sub) -> list[tuple[str, dict, int]]:
    """(kind, payload, size) of every live message on the device's topics, in arrival order."""
    return [(topic.rsplit("/", 1)[1], json.loads(raw), len(raw)) for topic, raw, retained in list(sub.messages)
            if not retained]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_backlog_leaves_as_batches_in_order_and_every_row_goes(tmp_path, mosquitto):
    sub = Subscriber(mosquitto, f"classroom/v1/{SITE}/1a/1a-pi-01/+")
    link, box = backlog_link(tmp_path, mosquitto)
    try:
        link.start()
        wait_until(lambda: box.pending() == [] and link.connected.is_set(), 20, message=lambda: str(len(box.pending())))
        wait_until(lambda: sum(len(p["batch"]) if "batch" in p else 1 for k, p, _ in received(sub)
                               if k == "event") == 250, 10)
    finally:
        link.stop()
        sub.close()
    got = [(k, p) for k, p, _ in received(sub) if k in ("event", "alert")]
    # 30 events, the alert (never in a batch), then 220 events: batches of at most 100.
    shape = [("alert",) if k == "alert" else ("batch", len(p["batch"])) for k, p in got]
    assert shape == [("batch", 30), ("alert",), ("batch", 100), ("batch", 100), ("batch", 20)]
    ids = [e["id"] for k, p in got if k == "event" for e in p["batch"]]
    assert ids == [event_of(n)["id"] for n in range(250)]
    assert link.acked == 251


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_batches_stay_under_the_size_limit_and_batch_max_1_sends_one_by_one(tmp_path, mosquitto):
    sub = Subscriber(mosquitto, f"classroom/v1/{SITE}/1a/1a-pi-01/event")
    link, box = backlog_link(tmp_path / "big", mosquitto, events=120, big=True)
    (tmp_path / "one").mkdir()
    single, single_box = backlog_link(tmp_path / "one", mosquitto, batch_max=1, events=40)
    try:
        link.start()
        wait_until(lambda: box.pending() == [], 20)
        link.stop()
        big = [(p, size) for _, p, size in received(sub)]
        # ~2.2 KB events: about 29 to a batch (a run's last one may go alone), none over the limit.
        assert sum(len(p["batch"]) if "batch" in p else 1 for p, _ in big) == 120
        assert sum("batch" in p for p, _ in big) >= 4 and all(size <= protocol.MAX_PAYLOAD for _, size in big)
        sub.messages.clear()
        single.start()
        wait_until(lambda: single_box.pending() == [], 20)
        wait_until(lambda: len(received(sub)) == 40, 10)
        assert not any("batch" in p for _, p, _ in received(sub))
    finally:
        single.stop()
        sub.close()


# --------------------------------------------------------------------------- ingest


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ingest_stores_each_good_event_of_a_batch_once_and_counts_the_bad(mosquitto, store):
    ingest = Ingest(store, f"mqtt://{mosquitto.host}:{mosquitto.port}", batch_size=500).start()
    device = mqtt_client(mosquitto)
    try:
        assert ingest.subscribed.wait(10)
        good = [make_event() for _ in range(3)]
        ahead = make_event(ts="2099-01-01T00:00:00.000Z")          # past the collector's bound
        other = make_event(device="5b-pi-02")                       # not the topic's device
        nul = make_event(domain="bad\u0000.example")                # not storable anywhere
        batch = protocol.encode({"batch": [good[0], ahead, good[1], other, nul, good[2]]})
        where = topic_of("5b", "5b-pi-01", "event")
        device.publish(where, batch, qos=1).wait_for_publish(10)
        wait_until(lambda: ingest.metrics.get("ingest_events_stored_total") == 3, 10)
        assert ingest.metrics.get("ingest_malformed_total") == 3
        # The device sends the same batch again (its PUBACK was lost): nothing twice.
        device.publish(where, batch, qos=1).wait_for_publish(10)
        wait_until(lambda: ingest.metrics.get("ingest_duplicates_total") == 3, 10)
        # Not a batch at all: dropped whole, nothing stored.
        device.publish(where, b'{"batch": "many"}', qos=1).wait_for_publish(10)
        wait_until(lambda: ingest.metrics.get("ingest_malformed_total") == 7, 10)
        assert ingest.flush(10)
    finally:
        close_client(device)
        ingest.stop()
    rows = store.events(device="5b-pi-01")
    assert sorted(r["id"] for r in rows) == sorted(e["id"] for e in good)
    stored = {r["id"]: r for r in rows}
    assert stored[good[1]["id"]]["domain"] == "games.example.com"
