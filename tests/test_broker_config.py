"""Broker security: the generated password file + ACL, proved against a real mosquitto.

Every "cannot" test has a positive control in the same test (a message that the same
subscriber DOES receive, published after the forbidden one), so a broken ACL or a broken
test setup fails instead of passing by silence.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading

import pytest
import yaml

from agent.config import load_tree
from agent.errors import UserError
from agent.protocol import encode, new_id, now_ts
from broker_fixtures import CONFIG, PREFIX, SITE, alert_payload, build_secure, secure_broker, t  # noqa: F401
from server.broker_config import build_accounts, generate, hash_password, load_users
from services import ServiceError, free_port, mqtt_client, port_open, spawn, terminate, wait_until

pytestmark = pytest.mark.timeout(60)


def event_payload(room: str, device: str) -> bytes:
    return encode({"id": new_id(), "type": "login", "ts": now_ts(), "site": SITE, "room": room, "device": device,
                   "user": "pupil1"})


# --------------------------------------------------------------------------- unit: the ACL model


def test_accounts_follow_the_registry():
    accounts = build_accounts(load_tree(CONFIG))
    dev = accounts["5b-pi-01"]
    assert dev.roles == ["device"]
    assert ("write", t("5b", "5b-pi-01", "alert")) in dev.rules
    assert ("read", t("5b", "5b-pi-01", "cmd")) in dev.rules
    assert ("read", f"{PREFIX}/{SITE}/5b/5b-pi-01/reply/+") in dev.rules
    # Nothing a device may touch lies outside its own {device} level.
    assert all(f"/5b/5b-pi-01/" in rule for _, rule in dev.rules)
    teacher = accounts["m.khan"]
    # Issue 14 item 6: a teacher answers only in their own name, never on cmd (the collector's).
    assert set(teacher.rules) == {("read", f"{PREFIX}/{SITE}/5b/+/alert"), ("read", f"{PREFIX}/{SITE}/5b/+/status"),
                                  ("write", f"{PREFIX}/{SITE}/5b/+/reply/m.khan"),
                                  ("write", f"{PREFIX}/{SITE}/5b/_watch/m.khan")}
    assert accounts["s.patel"].roles == ["escalation:dsl"]
    assert ("read", f"{PREFIX}/{SITE}/+/+/alert") in accounts["s.patel"].rules
    assert ("write", f"{PREFIX}/{SITE}/+/+/reply/s.patel") in accounts["s.patel"].rules
    # Only the collector's account may write cmd.
    writers = sorted(name for name, acc in accounts.items() if any(a == "write" and r.endswith("/cmd")
                                                                   for a, r in acc.rules))
    assert writers == ["classroom-server"]
    # Only the server's rules can match an event topic.
    for name, acc in accounts.items():
        readable = [r for a, r in acc.rules if a == "read" and (r.endswith("/#") or r.endswith("/event"))]
        assert bool(readable) == (name == "classroom-server"), name


def test_builtin_hash_matches_mosquitto_passwd_format():
    h = hash_password("pw", salt=b"0123456789ab")
    assert h.startswith("$7$101$") and h.count("$") == 4


def test_users_file_bad_input(tmp_path):
    p = tmp_path / "users.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match=r"users.yaml: must be a mapping"):
        load_users(p)
    p.write_text("m.khan: [1, 2]\n")
    with pytest.raises(UserError, match=r"users.yaml: m.khan: password must be a non-empty string"):
        load_users(p)
    p.write_text("m.khan: ok\n  bad: : indent\n")
    with pytest.raises(UserError, match=r"users.yaml:\d+: not valid YAML"):
        load_users(p)
    p.write_text('m.khan: "two\\nlines"\n')
    with pytest.raises(UserError, match=r"users.yaml: m.khan: password may not contain line breaks"):
        load_users(p)
    with pytest.raises(UserError, match="cannot read users file"):
        load_users(tmp_path / "missing.yaml")
    p.write_text("m.kahn: secret-value\n")
    with pytest.raises(UserError, match=r"'m.kahn' is not a device.*did you mean 'm.khan'") as exc:
        generate(load_tree(CONFIG), tmp_path / "out", users=load_users(p), users_path=str(p))
    assert "secret-value" not in str(exc.value)
    assert not (tmp_path / "out" / "passwd").exists()  # nothing half-written


def test_cli_writes_private_files_and_never_prints_passwords(tmp_path, capfd):
    from server.cli import main

    users = tmp_path / "users.yaml"
    users.write_text("m.khan: khan-password-123\n5b-pi-01: device-password-456\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["broker-config", "--config", str(CONFIG), "--out", str(out), "--users", str(users)])
    assert exc.value.code == 0
    printed = capfd.readouterr()
    for f in ("passwd", "acl"):
        assert stat.S_IMODE(os.stat(out / f).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out / "credentials").st_mode) == 0o700
    creds = {p.stem: yaml.safe_load(p.read_text())["password"] for p in (out / "credentials").glob("*.yaml")}
    assert creds["m.khan"] == "khan-password-123"
    for p in (out / "credentials").glob("*.yaml"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    text = printed.out + printed.err + (out / "mosquitto.conf").read_text() + (out / "acl").read_text()
    for pw in creds.values():
        assert pw not in text
    assert "khan-password-123" not in (out / "passwd").read_text()  # hashed
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and f"acl_file {out.resolve() / 'acl'}" in conf
    # Re-running keeps generated passwords (devices already configured keep working).
    with pytest.raises(SystemExit):
        main(["broker-config", "--config", str(CONFIG), "--out", str(out), "--users", str(users)])
    again = {p.stem: yaml.safe_load(p.read_text())["password"] for p in (out / "credentials").glob("*.yaml")}
    assert again == creds
    assert "generated new passwords" not in capfd.readouterr().out


def test_cli_bad_users_file_is_one_line_error(tmp_path, capfd):
    from server.cli import main

    users = tmp_path / "users.yaml"
    users.write_text("nobody-here: x\n")
    with pytest.raises(SystemExit) as exc:
        main(["broker-config", "--config", str(CONFIG), "--out", str(tmp_path / "o"), "--users", str(users)])
    assert exc.value.code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("classroom-server: error: ") and "nobody-here" in err[0]


# --------------------------------------------------------------------------- real mosquitto


@pytest.mark.integration
def test_device_cannot_publish_as_another_device(secure_broker):
    sb = secure_broker
    _, seen = sb.subscriber("classroom-server", f"{PREFIX}/#")
    a = sb.connect("5b-pi-01")
    spoof = alert_payload("5b", "5b-pi-02", seat="spoofed")
    sb.publish(a, t("5b", "5b-pi-02", "alert"), spoof)           # forbidden: B's topic
    sb.publish(a, t("5b", "5b-pi-02", "status"), b'{"state":"offline"}')
    control = alert_payload("5b", "5b-pi-01", seat="control")
    sb.publish(a, t("5b", "5b-pi-01", "alert"), control)         # allowed: its own
    seen.wait(lambda r: control in r.payloads())
    assert seen.topics() == [t("5b", "5b-pi-01", "alert")]


@pytest.mark.integration
def test_device_cannot_read_another_devices_cmd(secure_broker):
    sb = secure_broker
    _, snoop = sb.subscriber("5b-pi-01", t("5b", "5b-pi-02", "cmd"), t("5b", "5b-pi-01", "cmd"), f"{PREFIX}/#")
    _, victim = sb.subscriber("5b-pi-02", t("5b", "5b-pi-02", "cmd"))
    srv = sb.connect("classroom-server")
    secret = encode({"cmd": "clear", "alert_id": new_id(), "by": "m.khan"})
    sb.publish(srv, t("5b", "5b-pi-02", "cmd"), secret)
    mine = encode({"cmd": "reload-config", "by": "server"})
    sb.publish(srv, t("5b", "5b-pi-01", "cmd"), mine)
    victim.wait(lambda r: secret in r.payloads())                # the right device gets it
    snoop.wait(lambda r: mine in r.payloads())                    # positive control
    assert set(snoop.payloads()) == {mine}  # (overlapping subscriptions may deliver it twice)


@pytest.mark.integration
def test_teachers_cannot_read_events_but_the_server_can(secure_broker):
    sb = secure_broker
    _, teacher = sb.subscriber("m.khan", f"{PREFIX}/#", t("5b", "5b-pi-01", "event"))
    _, server = sb.subscriber("classroom-server", t("5b", "5b-pi-01", "event"))
    dev = sb.connect("5b-pi-01")
    event = event_payload("5b", "5b-pi-01")
    sb.publish(dev, t("5b", "5b-pi-01", "event"), event)
    control = alert_payload("5b", "5b-pi-01")
    sb.publish(dev, t("5b", "5b-pi-01", "alert"), control)
    server.wait(lambda r: event in r.payloads())
    teacher.wait(lambda r: control in r.payloads())
    assert t("5b", "5b-pi-01", "event") not in teacher.topics()
    assert teacher.payloads() == [control]


@pytest.mark.integration
def test_teacher_reads_own_room_alerts_only(secure_broker):
    sb = secure_broker
    _, teacher = sb.subscriber("m.khan", f"{PREFIX}/{SITE}/+/+/alert", f"{PREFIX}/{SITE}/1a/+/alert")
    _, server = sb.subscriber("classroom-server", f"{PREFIX}/{SITE}/+/+/alert")
    other = alert_payload("1a", "1a-pi-01")
    sb.publish(sb.connect("1a-pi-01"), t("1a", "1a-pi-01", "alert"), other)
    own = alert_payload("5b", "5b-pi-02")
    sb.publish(sb.connect("5b-pi-02"), t("5b", "5b-pi-02", "alert"), own)
    server.wait(lambda r: other in r.payloads() and own in r.payloads())
    teacher.wait(lambda r: own in r.payloads())
    assert teacher.payloads() == [own]


@pytest.mark.integration
def test_teacher_replies_only_reach_their_rooms_and_only_in_their_own_name(secure_broker):
    """Issue 14 item 6: a teacher answers on ``.../reply/<their username>`` in their rooms only;
    ``cmd`` (which carries ``by`` in the payload) is the collector's alone."""
    sb = secure_broker
    reply = f"{PREFIX}/{SITE}/{{room}}/{{device}}/reply/{{staff}}"
    _, dev1a = sb.subscriber("1a-pi-01", t("1a", "1a-pi-01", "cmd"), reply.format(room="1a", device="1a-pi-01", staff="+"))
    _, dev5b = sb.subscriber("5b-pi-01", t("5b", "5b-pi-01", "cmd"), reply.format(room="5b", device="5b-pi-01", staff="+"))
    teacher = sb.connect("m.khan")
    bad = encode({"cmd": "clear", "alert_id": new_id()})
    forged_cmd = encode({"cmd": "unlock", "by": "s.patel"})
    sb.publish(teacher, reply.format(room="1a", device="1a-pi-01", staff="m.khan"), bad)       # another room
    sb.publish(teacher, reply.format(room="5b", device="5b-pi-01", staff="s.patel"), bad)     # another's name
    sb.publish(teacher, t("5b", "5b-pi-01", "cmd"), forged_cmd)                               # cmd at all
    # A teacher can't forge alerts either.
    sb.publish(teacher, t("5b", "5b-pi-01", "alert"), alert_payload("5b", "5b-pi-01"))
    good = encode({"cmd": "ack", "alert_id": new_id()})
    sb.publish(teacher, reply.format(room="5b", device="5b-pi-01", staff="m.khan"), good)
    dev5b.wait(lambda r: good in r.payloads())
    # 1a-pi-01's subscription was acknowledged before anything was published; the server
    # control below proves the 1a route works, so silence here is the ACL.
    server_cmd = encode({"cmd": "ack", "alert_id": new_id(), "by": "m.khan"})
    sb.publish(sb.connect("classroom-server"), t("1a", "1a-pi-01", "cmd"), server_cmd)
    dev1a.wait(lambda r: server_cmd in r.payloads())
    assert dev1a.payloads() == [server_cmd]
    assert dev5b.payloads() == [good]
    assert dev5b.topics() == [reply.format(room="5b", device="5b-pi-01", staff="m.khan")]


@pytest.mark.integration
def test_teacher_presence_only_under_their_own_name_in_their_rooms(secure_broker):
    sb = secure_broker
    _, collector = sb.subscriber("classroom-server", f"{PREFIX}/{SITE}/+/_watch/+")
    teacher = sb.connect("m.khan")
    watching = encode({"state": "watching", "ts": "2026-11-24T10:00:00.000Z", "client": "classroom-alerts"})
    sb.publish(teacher, f"{PREFIX}/{SITE}/1a/_watch/m.khan", watching)        # not their room
    sb.publish(teacher, f"{PREFIX}/{SITE}/5b/_watch/a.jones", watching)       # not their name
    sb.publish(teacher, f"{PREFIX}/{SITE}/5b/_watch/m.khan", watching)
    # One sender's messages arrive in order: had the first two got through, they would be here first.
    collector.wait(lambda r: r.topics())
    assert collector.topics() == [f"{PREFIX}/{SITE}/5b/_watch/m.khan"]


@pytest.mark.integration
def test_escalation_contact_reads_every_room_and_server_shared_subscription(secure_broker):
    sb = secure_broker
    _, dsl = sb.subscriber("s.patel", f"{PREFIX}/{SITE}/+/+/alert", f"{PREFIX}/{SITE}/+/+/event")
    # exactly what server/ingest/ subscribes to
    _, collector = sb.subscriber("classroom-server", f"$share/classroom-server/{PREFIX}/+/+/+/+")
    a1 = alert_payload("1a", "1a-pi-01")
    d = sb.connect("1a-pi-01")
    ev = event_payload("1a", "1a-pi-01")
    sb.publish(d, t("1a", "1a-pi-01", "event"), ev)
    sb.publish(d, t("1a", "1a-pi-01", "alert"), a1)
    a2 = alert_payload("reception", "reception-pi-01")
    sb.publish(sb.connect("reception-pi-01"), t("reception", "reception-pi-01", "alert"), a2)
    dsl.wait(lambda r: a1 in r.payloads() and a2 in r.payloads())
    collector.wait(lambda r: ev in r.payloads() and a2 in r.payloads())
    assert ev not in dsl.payloads()  # the DSL reviews evidence in the dashboard, not on the wire


@pytest.mark.integration
def test_anonymous_and_wrong_password_are_refused(secure_broker):
    sb = secure_broker
    with pytest.raises(ServiceError, match="Not authorized"):
        mqtt_client(sb.broker)
    with pytest.raises(ServiceError, match="(Not authorized|Bad user name or password)"):
        mqtt_client(sb.broker, username="5b-pi-01", password=sb.passwords["5b-pi-01"] + "x")
    with pytest.raises(ServiceError, match="(Not authorized|Bad user name or password)"):
        mqtt_client(sb.broker, username="5b-pi-01", password=sb.passwords["5b-pi-02"])
    # Positive control: the right password gets in.
    sb.connect("5b-pi-01")


@pytest.mark.integration
def test_builtin_hashes_work_with_real_mosquitto(tmp_path, mosquitto_factory):
    sb = build_secure(tmp_path, mosquitto_factory, passwd_tool=None)
    try:
        assert "$7$101$" in (sb.out / "passwd").read_text()
        sb.connect("m.khan")
        with pytest.raises(ServiceError):
            mqtt_client(sb.broker, username="m.khan", password="wrong")
    finally:
        sb.close()


@pytest.mark.integration
def test_generated_mosquitto_conf_runs(tmp_path):
    from services import require_binary

    from server.cli import main

    mosq = require_binary("mosquitto")
    out = tmp_path / "out"
    port = free_port()
    argv = ["broker-config", "--config", str(CONFIG), "--out", str(out), "--bind", "127.0.0.1",
            "--port", str(port), "--log-file", str(tmp_path / "mosquitto.log")]
    if os.geteuid() == 0:
        argv += ["--run-as", "root"]  # tmp_path is root-only
    with pytest.raises(SystemExit):
        main(argv)
    proc = spawn([mosq, "-c", str(out / "mosquitto.conf")], log_path=tmp_path / "stdout.log")
    try:
        wait_until(lambda: port_open(port), 10)

        broker = type("B", (), {"host": "127.0.0.1", "port": port, "__repr__": lambda s: f"<{port}>"})()
        pw = yaml.safe_load((out / "credentials" / "5b-pi-01.yaml").read_text())["password"]
        c = mqtt_client(broker, username="5b-pi-01", password=pw)
        c.loop_stop()
        c.disconnect()
        with pytest.raises(ServiceError, match="Not authorized"):
            mqtt_client(broker)
    finally:
        terminate(proc)


@pytest.mark.integration
def test_generated_tls_listener_with_teacher_client(tmp_path):
    """--certfile/--keyfile give a TLS listener; classroom-alerts connects with mqtts:// + --ca-file."""
    from services import require_binary

    from server.alerts.client import AlertsClient
    from server.cli import main

    openssl = require_binary("openssl")
    mosq = require_binary("mosquitto")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    out, port = tmp_path / "out", free_port()
    argv = ["broker-config", "--config", str(CONFIG), "--out", str(out), "--bind", "127.0.0.1", "--port", str(port),
            "--certfile", str(cert), "--keyfile", str(key)] + (["--run-as", "root"] if os.geteuid() == 0 else [])
    with pytest.raises(SystemExit):
        main(argv)
    conf = (out / "mosquitto.conf").read_text()
    assert f"certfile {cert}" in conf and "tls_version tlsv1.2" in conf
    proc = spawn([mosq, "-c", str(out / "mosquitto.conf")], log_path=tmp_path / "stdout.log")
    try:
        wait_until(lambda: port_open(port), 10)
        pw = yaml.safe_load((out / "credentials" / "m.khan.yaml").read_text())["password"]
        client = AlertsClient(broker=f"mqtts://127.0.0.1:{port}", username="m.khan", password=pw, room="5b",
                              site=SITE, ca_file=str(cert)).start()
        assert client.connected.is_set()
        client.close()
        with pytest.raises(UserError):  # no CA given: the self-signed certificate is not trusted
            AlertsClient(broker=f"mqtts://127.0.0.1:{port}", username="m.khan", password=pw, room="5b",
                         site=SITE).start(timeout=3)
    finally:
        terminate(proc)


@pytest.mark.integration
def test_enrolled_devices_keep_their_enrolment_password(tmp_path, mosquitto_factory):
    """Devices enrolled through the collector (server/devices.py) log in with the password
    enrolment gave them; broker-config copies the stored $7$ hash, never seeing the password."""
    from server.broker_config import enrolled_hashes
    from server.devices import create_enrol_token, enrol
    from server.store import Store

    tree = load_tree(CONFIG)
    db = f"sqlite:///{tmp_path}/server.db"
    store = Store.open(db)
    try:
        token = create_enrol_token(store, "5b-pi-01", "tech", tree)["token"]
        creds = enrol(store, token, tree)
    finally:
        store.close()
    out = tmp_path / "out"
    generate(tree, out)  # before enrolment: every device had a generated password
    old = yaml.safe_load((out / "credentials" / "5b-pi-01.yaml").read_text())["password"]
    result = generate(tree, out, enrolled=enrolled_hashes(db))
    assert result.enrolled == ["5b-pi-01"]
    assert not (out / "credentials" / "5b-pi-01.yaml").exists()
    assert creds["password"] not in (out / "passwd").read_text()
    other = yaml.safe_load((out / "credentials" / "5b-pi-02.yaml").read_text())["password"]
    broker = mosquitto_factory(password_file=out / "passwd", acl_file=out / "acl", allow_anonymous=False)
    for c in (mqtt_client(broker, username="5b-pi-01", password=creds["password"]),
              mqtt_client(broker, username="5b-pi-02", password=other)):
        c.loop_stop()
        c.disconnect()
    with pytest.raises(ServiceError):
        mqtt_client(broker, username="5b-pi-01", password=old)
    with pytest.raises(UserError, match="no such database"):
        enrolled_hashes(f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()
