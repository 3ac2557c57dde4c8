"""Bridged brokers for a trust (issue 17, item 2), with three real mosquitto processes.

Two schools' brokers (penny-acres and hilltop) bridge their own ``classroom/v1/{site}/...``
to a central broker over TLS, every file written by ``classroom-server broker-config``
(tests/trust_fixtures.py).  What must hold:

* teachers in a school keep getting their devices' alerts while the central link is down,
  and every event queued at the school meanwhile reaches the central collector (a real
  ``classroom-server serve``) once it is back, each stored once;
* a school's bridge account cannot publish into, or read, another school's topics on the
  central broker (tried directly with its own credentials), and no command for another
  school's device ever comes in over a school's bridge;
* one school's link going down does nothing to the other's.

Each "must not arrive" has a positive control: a message that does arrive, sent after it on
the same path.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from agent.config import load_tree
from server.broker_config import (BRIDGE_IN, BRIDGE_OUT, HARDENING, BridgeOptions, build_central_accounts,
                                  generate, generate_central)
from services import free_port, spawn, terminate, wait_until
from trust_fixtures import (A, B, DEVICE, PREFIX, REPO, alert, bridge_connections, build_trust, cmd_topic, event,
                            make_school_a, make_school_b, publish, subscribe)

BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- the generated files


def test_school_conf_bridges_only_its_own_topics_keeps_hardening_and_hides_the_password(tmp_path):
    tree = load_tree(make_school_a(tmp_path))
    ca = tmp_path / "ca.pem"
    ca.write_text("test")
    out = tmp_path / "school"
    generate(tree, out, bridge=BridgeOptions("mqtts://central.trust.example:8883", f"bridge-{A}",
                                             "bridge-secret-123", str(ca)))
    conf = (out / "mosquitto.conf").read_text()
    for line in HARDENING:
        assert line in conf.splitlines()
    topics = [line.split() for line in conf.splitlines() if line.startswith("topic ")]
    base = f"{PREFIX}/{A}/"
    # Nothing outside the school's own topics, on either side.
    assert topics and all(len(t) == 6 and t[3] == "1" and t[4] == base and t[5] == base for t in topics), topics
    assert sorted(t[1] for t in topics if t[2] == "out") == sorted(BRIDGE_OUT)
    assert [t[1] for t in topics if t[2] == "in"] == list(BRIDGE_IN) == ["+/+/cmd"]
    assert "both" not in {t[2] for t in topics} and not any("#" in t[1] for t in topics)
    for line in ("connection bridge-penny-acres", "address central.trust.example:8883", "cleansession false",
                 "bridge_attempt_unsubscribe false", f"bridge_cafile {ca.resolve()}", "bridge_insecure false",
                 "remote_username bridge-penny-acres", "persistence true", "max_queued_messages 100000"):
        assert line in conf.splitlines(), line
    # The bridge's password is in the conf (mosquitto has no other place for it): 0600.
    assert stat.S_IMODE(os.stat(out / "mosquitto.conf").st_mode) == 0o600


def test_central_accounts_confine_each_bridge_to_its_school(tmp_path):
    trees = [load_tree(make_school_a(tmp_path)), load_tree(make_school_b(tmp_path))]
    accounts = build_central_accounts(trees, ingest_workers=2)
    assert accounts[f"bridge-{A}"].rules == [("readwrite", f"{PREFIX}/{A}/#")]
    assert accounts[f"bridge-{B}"].rules == [("readwrite", f"{PREFIX}/{B}/#")]
    assert not any("device" in acc.roles for acc in accounts.values())  # devices use their school's broker
    # ... unless the central broker can know the password (enrolled, or --users): then the
    # device's own rules there too, for when it reports from off-site.
    device = DEVICE[B][1]
    with_device = build_central_accounts(trees, devices={device})
    assert [n for n, acc in with_device.items() if "device" in acc.roles] == [device]
    assert (with_device[device].rules
            == [("write", f"{PREFIX}/{B}/5b/{device}/{kind}") for kind in ("status", "alert", "event", "heartbeat")]
            + [("read", f"{PREFIX}/{B}/5b/{device}/cmd"), ("read", f"{PREFIX}/{B}/5b/{device}/reply/+")])
    for name in ("classroom-server", "classroom-server-1"):
        assert ("read", f"{PREFIX}/#") in accounts[name].rules
    # Staff keep their school's rules: m.khan teaches 5b in both schools, s.patel is the DSL.
    assert ("read", f"{PREFIX}/{A}/5b/+/alert") in accounts["m.khan"].rules
    assert ("read", f"{PREFIX}/{B}/5b/+/alert") in accounts["m.khan"].rules
    out = tmp_path / "central"
    generate_central(trees, out, ingest_workers=2)
    conf = (out / "mosquitto.conf").read_text()
    for line in (*HARDENING, "allow_anonymous false", "persistence true"):
        assert line in conf.splitlines()
    assert "user bridge-penny-acres\ntopic readwrite classroom/v1/penny-acres/#\n" in (out / "acl").read_text()
    assert stat.S_IMODE(os.stat(out / "credentials" / f"bridge-{A}.yaml").st_mode) == 0o600


def test_the_same_site_twice_for_central_is_refused(tmp_path):
    from agent.errors import UserError

    tree = load_tree(make_school_a(tmp_path))
    with pytest.raises(UserError, match="site 'penny-acres' is given twice"):
        build_central_accounts([tree, tree])


@pytest.mark.parametrize("extra, message", [
    (["--central", "--bridge-to", "mqtts://c:8883"], "--bridge-to: not used with --central"),
    (["--central", "--db", "sqlite:////nope.db"], "--db: /nope.db: no such database"),
    (["--bridge-to", "http://central:8883", "--bridge-credentials", "X"], "--bridge-to: 'http://central:8883' is not"),
    (["--bridge-to", "mqtts://central:88a3", "--bridge-credentials", "X"],
     "--bridge-to: 'mqtts://central:88a3' has a bad port"),
    (["--bridge-to", "mqtts://central:8883"], "--bridge-to needs --bridge-credentials"),
    (["--bridge-credentials", "X"], "--bridge-credentials: only with --bridge-to"),
    (["--bridge-ca-file", "X"], "--bridge-ca-file: only with --bridge-to"),
    (["--bridge-to", "mqtts://c:8883", "--bridge-credentials", "X", "--bridge-ca-file", "/nope.pem"],
     "--bridge-ca-file: /nope.pem: no such file"),
    (["--bridge-to", "mqtts://c:8883", "--bridge-credentials", "MISSING"], "--bridge-credentials: .*cannot read"),
    (["--bridge-to", "mqtts://c:8883", "--bridge-credentials", "OTHER"],
     "--bridge-credentials: .*'bridge-hilltop' is not this school's bridge account 'bridge-penny-acres'"),
    (["--bridge-to", "mqtts://c:8883", "--bridge-credentials", "BROKEN"], "--bridge-credentials: .*needs username"),
    (["--config", "SECOND"], "--config: give one school's config tree"),
])
def test_malformed_trust_flags_are_one_line_errors(tmp_path, capfd, extra, message):
    import re

    from server.cli import main

    config = make_school_a(tmp_path)
    other = tmp_path / "bridge-hilltop.yaml"
    other.write_text("username: bridge-hilltop\npassword: pw-of-another-school\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("- just a list\n")
    swaps = {"X": str(other), "MISSING": str(tmp_path / "missing.yaml"), "OTHER": str(other),
             "BROKEN": str(broken), "SECOND": str(config)}
    argv = ["broker-config", "--config", str(config), "--out", str(tmp_path / "out"),
            *[swaps.get(a, a) for a in extra]]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("classroom-server: error: "), err
    assert re.search(message, err[0]), err[0]
    assert "pw-of-another-school" not in err[0]
    assert not (tmp_path / "out" / "mosquitto.conf").exists()


# --------------------------------------------------------------------------- three real brokers


@pytest.fixture
def trust(tmp_path):
    t = build_trust(tmp_path)
    yield t
    t.close()


def start_collector(trust, tmp_path):
    """A real central collector: ``serve`` with both schools' trees, on the central broker over TLS."""
    import httpx

    port = free_port()
    log = tmp_path / "serve.log"
    db = f"sqlite:///{tmp_path / 'central.db'}"
    proc = spawn([str(BIN / "classroom-server"), "serve", "--config", str(trust.configs[A]),
                  "--config", str(trust.configs[B]), "--db", db,
                  "--broker", f"mqtts://127.0.0.1:{trust.central.port}", "--ca-file", str(trust.tls["ca"]),
                  "--mqtt-username", "classroom-server",
                  "--mqtt-password-file", str(trust.central_out / "credentials" / "classroom-server.yaml"),
                  "--port", str(port), "--reports-dir", str(tmp_path / "reports")], log_path=log, cwd=str(REPO))
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["broker"], timeout=60,
               message=lambda: log.read_text()[-3000:])
    return proc, db, log


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_alerts_stay_in_school_while_central_is_down_and_queued_events_reach_the_collector_once(trust, tmp_path):
    from server.store import Store

    proc, db, log = start_collector(trust, tmp_path)
    store = Store.open(db)
    try:
        device = {site: trust.to_school(site, DEVICE[site][1]) for site in (A, B)}
        teacher = {site: trust.to_school(site, "m.khan") for site in (A, B)}
        seen = {site: subscribe(teacher[site], f"{PREFIX}/{site}/5b/+/alert") for site in (A, B)}

        # The link works: an event from each school reaches the central collector.
        for site in (A, B):
            topic, payload, event_id = event(site)
            publish(device[site], topic, payload)
            wait_until(lambda: store.count("events", "id = ?", (event_id,)), timeout=60,
                       message=lambda: log.read_text()[-3000:])
        connections = {site: bridge_connections(trust.central, site) for site in (A, B)}

        # The trust's link goes down (the central broker stops; it saves its sessions, as on a reboot).
        trust.central.stop()
        queued = {A: [], B: []}
        for i in range(40):
            for site in (A, B):
                topic, payload, event_id = event(site)
                publish(device[site], topic, payload)  # PUBACK from the school's own broker
                queued[site].append(event_id)
        # Teachers in each school still get their room's alert, at once, from their own broker.
        outage_alert = {}
        for site in (A, B):
            topic, payload, alert_id = alert(site)
            publish(device[site], topic, payload, retain=True)
            seen[site].wait_for(alert_id, timeout=15)
            outage_alert[site] = alert_id
        assert all(store.count("events", "id = ?", (i,)) == 0 for ids in queued.values() for i in ids)

        # The link is back: every queued event reaches the collector, each stored once.
        trust.central.start()
        for site in (A, B):
            trust.wait_bridge_up(site, since=connections[site])
        everything = [i for ids in queued.values() for i in ids]
        wait_until(lambda: all(store.count("events", "id = ?", (i,)) for i in everything), timeout=90,
                   message=lambda: f"{sum(1 for i in everything if store.count('events', 'id = ?', (i,)))} of "
                                   f"{len(everything)} arrived\n" + log.read_text()[-3000:])
        for site in (A, B):
            room, dev = DEVICE[site]
            # 1 before the outage + 40 queued, no more (nothing twice, nothing from elsewhere).
            assert store.count("events", "device = ? AND type = 'login'", (dev,)) == 41
            assert store.count("events", "device = ? AND site = ?", (dev, site)) == 41
        # The outage's alert reached the collector too (retained at the school, bridged on return).
        wait_until(lambda: all(store.count("incidents", "id = ?", (outage_alert[s],)) for s in (A, B)), timeout=60,
                   message=lambda: repr(store.list_incidents())[:2000])
    finally:
        store.close()
        terminate(proc)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_school_bridge_account_cannot_write_or_read_another_schools_topics(trust):
    collector = trust.to_central("classroom-server-1")
    at_central = subscribe(collector, f"{PREFIX}/#")
    b_device = trust.to_school(B, DEVICE[B][1])
    b_cmds = subscribe(b_device, cmd_topic(B))
    # A compromised penny-acres broker: its bridge account on the central broker, used directly.
    rogue = trust.to_central(f"bridge-{A}")
    rogue_reads = subscribe(rogue, f"{PREFIX}/{B}/#", f"{PREFIX}/+/5b/+/event")

    forged_event = event(B)
    forged_cmd = b'{"cmd":"unlock","id":"forged-into-hilltop"}'
    publish(rogue, forged_event[0], forged_event[1])
    publish(rogue, cmd_topic(B), forged_cmd)
    # Positive controls, after: its own school's event arrives; the collector's own command
    # for hilltop's device comes in over hilltop's bridge; hilltop's own event arrives centrally
    # (and is not given to penny-acres' bridge account).
    own = event(A)
    publish(rogue, own[0], own[1])
    at_central.wait_for(own[2])
    publish(collector, cmd_topic(B), b'{"cmd":"lock","id":"from-the-collector"}')
    b_cmds.wait_for("from-the-collector")
    b_device_event = event(B)
    publish(b_device, b_device_event[0], b_device_event[1])
    at_central.wait_for(b_device_event[2])
    rogue_reads.wait_for(own[2])  # it reads its own school's topics ...

    assert not at_central.has(forged_event[2]) and not at_central.has("forged-into-hilltop")
    assert not b_cmds.has("forged-into-hilltop")
    assert not any(t.startswith(f"{PREFIX}/{B}/") for t in rogue_reads.topics())  # ... and nothing of hilltop's


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_commands_come_in_only_to_their_school_and_one_schools_link_does_not_touch_another(trust):
    collector = trust.to_central("classroom-server-1")
    at_central = subscribe(collector, f"{PREFIX}/#")
    # Each school's own collector account reads everything on its school's broker.
    local = {site: subscribe(trust.to_school(site, "classroom-server"), f"{PREFIX}/#") for site in (A, B)}
    device = {site: trust.to_school(site, DEVICE[site][1]) for site in (A, B)}
    cmds = {site: subscribe(device[site], cmd_topic(site)) for site in (A, B)}

    publish(collector, cmd_topic(A), b'{"cmd":"lock","id":"for-penny-acres"}')
    publish(collector, cmd_topic(B), b'{"cmd":"lock","id":"for-hilltop"}')
    cmds[A].wait_for("for-penny-acres")
    cmds[B].wait_for("for-hilltop")
    local[A].wait_for("for-penny-acres")
    local[B].wait_for("for-hilltop")
    assert not any(f"/{B}/" in t for t in local[A].topics()) and not local[A].has("for-hilltop")
    assert not any(f"/{A}/" in t for t in local[B].topics()) and not local[B].has("for-penny-acres")

    # penny-acres' broker goes down (power cut): hilltop's events and commands carry on.
    trust.schools[A].kill()
    b_event = event(B)
    publish(device[B], b_event[0], b_event[1])
    at_central.wait_for(b_event[2])
    publish(collector, cmd_topic(B), b'{"cmd":"unlock","id":"still-for-hilltop"}')
    cmds[B].wait_for("still-for-hilltop")
    assert trust.central.is_running and trust.schools[B].is_running


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_bridge_refuses_a_central_broker_whose_certificate_names_another_host(tmp_path):
    """TLS on the link checks the name too: a central broker with another host's certificate
    (signed by the same CA) gets no connection, so no event of the school."""
    from trust_fixtures import make_ca, run_cli, start_generated

    tls = make_ca(tmp_path / "tls", hosts=("elsewhere.trust.example",))
    configs = {A: make_school_a(tmp_path), B: make_school_b(tmp_path)}
    run_as = ["--run-as", "root"] if os.geteuid() == 0 else []
    central_port, school_port = free_port(), free_port()
    central_out, school_out = tmp_path / "central", tmp_path / "school"
    run_cli("broker-config", "--central", "--config", str(configs[A]), "--config", str(configs[B]),
            "--out", str(central_out), "--bind", "127.0.0.1", "--port", str(central_port),
            "--certfile", str(tls["cert"]), "--keyfile", str(tls["key"]),
            "--log-file", str(central_out / "mosquitto.log"), *run_as)
    central = start_generated(central_out, central_port)
    run_cli("broker-config", "--config", str(configs[A]), "--out", str(school_out), "--bind", "127.0.0.1",
            "--port", str(school_port), "--bridge-to", f"mqtts://127.0.0.1:{central.port}",
            "--bridge-credentials", str(central_out / "credentials" / f"bridge-{A}.yaml"),
            "--bridge-ca-file", str(tls["ca"]), "--log-file", str(school_out / "mosquitto.log"), *run_as)
    school = start_generated(school_out, school_port)
    try:
        wait_until(lambda: "host name verification failed" in school.log_path.read_text(), timeout=60,
                   message=lambda: school.log_path.read_text()[-3000:])
        assert bridge_connections(central, A) == 0
    finally:
        school.stop()
        central.stop()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_an_enrolled_device_off_site_reports_to_the_central_broker_as_itself_and_no_one_else(tmp_path):
    # Issue 17 item 4: off the school network a device "reaches the trust's broker if it is
    # public-facing".  broker-config --central --db gives every device that enrolled with
    # the trust's collector its own account there (its enrolment hash, the same password as
    # at school) with the rules it has at school.
    from server.devices import mosquitto_hash
    from server.store import Store
    from services import ServiceError
    from trust_fixtures import connect

    device, other = DEVICE[B][1], "hb-5b-pi-02"
    db = f"sqlite:///{tmp_path / 'central.db'}"
    store = Store.open(db)
    store.set_device_credentials(device, "unused-here", "test", site=B, room="5b",
                                 mqtt_hash=mosquitto_hash("the-devices-own-pw"))
    store.close()
    trust = build_trust(tmp_path, central_args=("--db", db))
    try:
        collector = trust.to_central("classroom-server-1")
        at_central = subscribe(collector, f"{PREFIX}/#")
        away = connect(trust.central, device, "the-devices-own-pw", ca=trust.tls["ca"])
        trust.clients.append(away)
        cmds = subscribe(away, cmd_topic(B), f"{PREFIX}/{B}/5b/{other}/cmd")

        # As another device of its school, and as a device of another school: dropped.
        as_other = (f"{PREFIX}/{B}/5b/{other}/event", event(B)[1].replace(device.encode(), other.encode()))
        publish(away, *as_other)
        forged = event(A)
        publish(away, forged[0], forged[1])
        publish(collector, f"{PREFIX}/{B}/5b/{other}/cmd", b'{"cmd":"lock","id":"for-the-other-device"}')
        # Positive controls, after: its own event reaches the collector, its own command reaches it.
        own = event(B)
        publish(away, own[0], own[1])
        at_central.wait_for(own[2])
        publish(collector, cmd_topic(B), b'{"cmd":"lock","id":"for-this-device"}')
        cmds.wait_for("for-this-device")
        assert not at_central.has(forged[2]) and not any(t.endswith(f"/{other}/event") for t in at_central.topics())
        assert not cmds.has("for-the-other-device")

        # A device that never enrolled has no account on the central broker.
        with pytest.raises(ServiceError, match="Not authorized|Bad user name or password"):
            connect(trust.central, DEVICE[A][1], "the-devices-own-pw", ca=trust.tls["ca"], timeout=10)
        acl = (trust.central_out / "acl").read_text()
        assert f"user {device}\n" in acl and f"user {DEVICE[A][1]}\n" not in acl
    finally:
        trust.close()
