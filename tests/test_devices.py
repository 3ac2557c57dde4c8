"""Devices: enrolment (one-time token -> credentials that work on the real broker and the API),
the registry, and dark-device alerts during school hours only."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest

from server.devices import DarkChecker, create_enrol_token, enrol, mosquitto_hash
from server.store import iso
from services import ServiceError, close_client, mqtt_client

from server_fixtures import *  # noqa: F401,F403

pytestmark = pytest.mark.timeout(60)

# Tuesday 24 November 2026 (autumn term), 10:00 in London = in school hours.
SCHOOL_TIME = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
SATURDAY = datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc)


def _basic(device: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{device}:{password}".encode()).decode()}


def test_enrolment_over_the_api(store, app_factory, staff_client):
    app = app_factory(store)
    tech, anon = staff_client(app, "technician"), staff_client(app, None)
    assert tech.post("/api/v1/enrol-tokens", json={"device": "not-in-config"}).status_code == 400
    r = tech.post("/api/v1/enrol-tokens", json={"device": "5b-pi-01", "hours": 2})
    assert r.status_code == 200
    token = r.json()["token"]
    assert store.count("enrol_tokens", "token_hash = ?", (token,)) == 0  # only its hash is stored
    creds = anon.post("/api/v1/enrol", json={"token": token}).json()
    assert creds["username"] == "5b-pi-01" and creds["room"] == "5b" and creds["broker_url"].startswith("mqtts://")
    assert anon.post("/api/v1/enrol", json={"token": token}).status_code == 403  # one time only
    assert anon.post("/api/v1/enrol", json={"token": "x" * 43}).status_code == 403
    assert anon.get("/api/v1/device/whoami", headers=_basic("5b-pi-01", creds["password"])).json() == {
        "device": "5b-pi-01"}
    assert anon.get("/api/v1/device/whoami", headers=_basic("5b-pi-02", creds["password"])).status_code == 401
    row = store.get_device("5b-pi-01")
    assert creds["password"] not in (row["password_hash"] + row["mqtt_hash"])
    listed = tech.get("/api/v1/devices").json()
    assert listed[0]["id"] == "5b-pi-01" and "password_hash" not in listed[0] and "mqtt_hash" not in listed[0]
    actions = {a["action"] for a in store.list_audit()}
    assert {"enrol-token.create", "device.enrol"} <= actions
    assert [t["device"] for t in tech.get("/api/v1/enrol-tokens").json()] == ["5b-pi-01"]
    assert "token" not in tech.get("/api/v1/enrol-tokens").json()[0]


def test_enrolled_password_is_stored_as_sha256_and_argon2_device_hashes_still_work(store, app_factory,
                                                                                  staff_client, tree):
    # Enrolment's 192-bit random password: a plain SHA-256 (an argon2 check per device made a
    # rollout to 1,000 devices cost over a minute of collector CPU, docs/rollout.md).  A device
    # password broker-config recorded (argon2, it may be a person's choice) still logs in.
    from server.http.auth import device_cache, hash_password

    app = app_factory(store)
    anon = staff_client(app, None)
    creds = enrol(store, create_enrol_token(store, "5b-pi-01", "tech", tree)["token"], tree)
    stored = store.get_device("5b-pi-01")["password_hash"]
    assert stored.startswith("sha256$") and creds["password"] not in stored
    store.set_device_credentials("5b-pi-02", hash_password("chosen by a person"), by="broker-config")
    device_cache.forget_device("5b-pi-02")
    for device, password in (("5b-pi-01", creds["password"]), ("5b-pi-02", "chosen by a person")):
        assert anon.get("/api/v1/device/whoami", headers=_basic(device, password)).json() == {"device": device}
        assert anon.get("/api/v1/device/whoami", headers=_basic(device, password + "x")).status_code == 401
    assert anon.get("/api/v1/device/whoami", headers=_basic("5b-pi-02", creds["password"])).status_code == 401


def test_expired_token_is_refused(sqlite_store, tree):
    made = create_enrol_token(sqlite_store, "5b-pi-02", "tech", tree, hours=1,
                              now=datetime.now(timezone.utc) - timedelta(hours=2))
    with pytest.raises(Exception, match="expired"):
        enrol(sqlite_store, made["token"], tree)


@pytest.mark.integration
def test_enrolled_password_works_on_real_mosquitto(sqlite_store, tree, mosquitto_factory, tmp_path):
    made = create_enrol_token(sqlite_store, "5b-pi-01", "tech", tree)
    creds = enrol(sqlite_store, made["token"], tree)
    passwd = tmp_path / "passwd"
    passwd.write_text(f"5b-pi-01:{sqlite_store.get_device('5b-pi-01')['mqtt_hash']}\n")
    passwd.chmod(0o600)
    broker = mosquitto_factory(password_file=passwd)
    client = mqtt_client(broker, username="5b-pi-01", password=creds["password"])
    close_client(client)
    with pytest.raises(ServiceError):
        mqtt_client(broker, username="5b-pi-01", password="wrong-password")
    assert mosquitto_hash("a") != mosquitto_hash("a")  # salted


def test_dark_devices_alert_in_school_hours_only(store, tree):
    checker = DarkChecker(store, lambda: tree)
    # Everything but 5b-pi-01 has never been heard from; 5b-pi-01 was heard just now.
    store.execute("INSERT INTO devices (id, site, room, last_seen) VALUES (?, ?, ?, ?)",
                  ("5b-pi-01", "penny-acres", "5b", iso(SCHOOL_TIME - timedelta(minutes=1))))
    assert checker.check(SATURDAY) == []
    raised = checker.check(SCHOOL_TIME)
    assert sorted(a["device"] for a in raised) == sorted(d for d in tree.device_ids() if d != "5b-pi-01")
    assert checker.check(SCHOOL_TIME) == []  # one open alert per device, not one per minute
    later = SCHOOL_TIME + timedelta(minutes=tree.site.dark_after_minutes + 1)
    assert [a["device"] for a in checker.check(later)] == ["5b-pi-01"]
    assert "silent for more than 5 minutes" in store.list_device_alerts()[0]["message"]
    # 5b-pi-02 is heard again: its alert clears, with an audit entry.
    store.execute("INSERT INTO devices (id, last_seen) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET "
                  "last_seen = excluded.last_seen", ("5b-pi-02", iso(later)))
    checker.check(later)
    open_devices = {a["device"] for a in store.list_device_alerts()}
    assert "5b-pi-02" not in open_devices and "5b-pi-01" in open_devices
    actions = [a["action"] for a in store.list_audit()]
    assert "device.dark" in actions and "device.dark.cleared" in actions


def test_technicians_see_dark_alerts_over_the_api(sqlite_store, tree, app_factory, staff_client):
    DarkChecker(sqlite_store, lambda: tree).check(SCHOOL_TIME)
    app = app_factory(sqlite_store)
    alerts = staff_client(app, "technician").get("/api/v1/device-alerts").json()
    assert len(alerts) == len(tree.device_ids()) and all(a["kind"] == "dark" for a in alerts)
