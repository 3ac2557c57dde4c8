"""The MQTT link against a real mosquitto: status + Last Will, auth, TCP_NODELAY,
store-then-publish with resend after a broker outage, and bad cmd payloads."""

import json
import logging
import socket
from types import SimpleNamespace

import pytest

from agent.errors import UserError
from agent.config.credentials import load_credentials
from agent.uplink.link import Link
from agent.uplink.outbox import Outbox
from runtime_fixtures import PREFIX, Subscriber, publish
from services import mosquitto_passwd, wait_until

pytestmark = pytest.mark.integration


def make_link(tmp_path, broker, **kw):
    box = Outbox(tmp_path / "outbox.db")
    commands = []
    kw.setdefault("on_command", commands.append)
    link = Link(broker_url=f"mqtt://127.0.0.1:{broker.port}", prefix="classroom/v1", site="penny-acres",
                room="1a", device="1a-pi-01", outbox=box, config_version="abc123abc123", **kw)
    return link, box, commands


def alert(n="00000000-0000-4000-8000-000000000001"):
    return {"id": n, "state": "raised", "site": "penny-acres", "room": "1a", "device": "1a-pi-01",
            "seat": "Table 1", "ts": "2026-11-24T10:00:00.000Z", "by": "pupil"}


def test_credentials_file(tmp_path):
    assert load_credentials(tmp_path / "absent.yaml") == (None, None)
    good = tmp_path / "c.yaml"
    good.write_text("username: 1a-pi-01\npassword: s3cret-value\n")
    assert load_credentials(good) == ("1a-pi-01", "s3cret-value")
    for text in ("username: [x\npassword: s3cret-value", "- s3cret-value", "username: x\npassword: 12345"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(UserError) as err:
            load_credentials(bad)
        assert str(bad) in str(err.value) and "s3cret" not in str(err.value) and "12345" not in str(err.value)


@pytest.mark.timeout(30)
def test_status_online_then_last_will_offline_then_goodbye(tmp_path, mosquitto):
    sub = Subscriber(mosquitto, PREFIX + "/status")
    link, box, _ = make_link(tmp_path, mosquitto)
    try:
        link.start()
        online = sub.wait_for("status", state="online")
        assert online["agent_version"] and online["config_version"] == "abc123abc123"
        assert link.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        # Drop the TCP connection without an MQTT DISCONNECT: the broker sends the Will.
        n_online = len([p for p in sub.payloads("status") if p["state"] == "online"])
        link.client.socket().shutdown(socket.SHUT_RDWR)
        sub.wait_for("status", state="offline")
        wait_until(lambda: len([p for p in sub.payloads("status") if p["state"] == "online"]) > n_online, 15,
                   message="link did not reconnect")
    finally:
        link.stop()
    last = sub.payloads("status")[-1]
    assert last["state"] == "offline"
    late = Subscriber(mosquitto, PREFIX + "/status")          # retained: a late subscriber sees it too
    assert late.wait_for("status")["state"] == "offline"
    sub.close()
    late.close()


@pytest.mark.timeout(30)
def test_password_auth(tmp_path, mosquitto_factory):
    pw = mosquitto_passwd(tmp_path / "passwd", {"1a-pi-01": "right-pass", "watcher": "w"})
    broker = mosquitto_factory(password_file=pw)
    link, _, _ = make_link(tmp_path, broker, username="1a-pi-01", password="wrong-pass")
    link.start()
    wait_until(lambda: "not authorised" in broker.log_path.read_text() or
               "not authorized" in broker.log_path.read_text(), 10)
    assert not link.is_connected
    link.stop()
    good, _, _ = make_link(tmp_path / "g", broker, username="1a-pi-01", password="right-pass")
    good.start()
    try:
        assert good.connected.wait(10)
    finally:
        good.stop()


@pytest.mark.timeout(40)
def test_send_is_stored_until_puback_and_resent_after_outage(tmp_path, mosquitto):
    sub = Subscriber(mosquitto, PREFIX + "/alert", persistent=True)
    link, box, _ = make_link(tmp_path, mosquitto)
    link.start()
    try:
        assert link.connected.wait(10)
        link.send("alert", alert())
        assert sub.wait_for("alert")["id"].endswith("1")
        wait_until(lambda: box.count() == 0, 10, message="PUBACK did not delete the row")
        mosquitto.stop()
        wait_until(lambda: not link.is_connected, 10)
        link.send("alert", alert("00000000-0000-4000-8000-000000000002"))
        assert box.count("alert") == 1                        # on disk while the broker is away
        mosquitto.start()
        sub.wait_for("alert", id="00000000-0000-4000-8000-000000000002", timeout=30)
        wait_until(lambda: box.count() == 0, 10)
    finally:
        link.stop()
        sub.close()


@pytest.mark.timeout(30)
def test_the_sending_thread_writes_while_paho_is_busy(tmp_path, mosquitto):
    """On plain TCP the thread that sends writes the socket itself: an alert gets out
    even while paho's network thread is stuck in a callback (agent/uplink/link.py _Client)."""
    import threading

    sub = Subscriber(mosquitto, PREFIX + "/alert")
    in_handler, release = threading.Event(), threading.Event()
    link, box, _ = make_link(tmp_path, mosquitto, on_command=lambda cmd: (in_handler.set(), release.wait(20)))
    link.start()
    try:
        assert link.subscribed.wait(10)
        publish(mosquitto, PREFIX + "/cmd", {"cmd": "lock", "by": "a.jones"})
        assert in_handler.wait(10)                      # paho's thread is now held in on_message
        link.send("alert", alert())
        assert sub.wait_for("alert", timeout=10)["id"].endswith("1")
        assert box.count() == 1                         # the PUBACK waits for paho's thread ...
        release.set()
        wait_until(lambda: box.count() == 0, 10, message="PUBACK did not delete the row")  # ... and then lands
    finally:
        release.set()
        link.stop()
        sub.close()


@pytest.mark.timeout(30)
def test_rows_left_by_a_previous_run_are_sent_on_connect(tmp_path, mosquitto):
    sub = Subscriber(mosquitto, PREFIX + "/#")
    box = Outbox(tmp_path / "outbox.db")
    box.put(PREFIX + "/alert", json.dumps(alert("00000000-0000-4000-8000-000000000003")).encode(), 1, "alert")
    box.put(PREFIX + "/heartbeat", b'{"ts": "2026-11-24T10:00:00Z"}', 0, "heartbeat")
    box.close()
    link, box, _ = make_link(tmp_path, mosquitto)
    link.start()
    try:
        assert sub.wait_for("alert")["id"] == "00000000-0000-4000-8000-000000000003"
        sub.wait_for("heartbeat")
        wait_until(lambda: box.count() == 0, 10)
    finally:
        link.stop()
        sub.close()


@pytest.mark.timeout(30)
def test_malformed_cmd_is_ignored_with_one_log_line(tmp_path, mosquitto, caplog):
    link, _, commands = make_link(tmp_path, mosquitto)
    link.start()
    try:
        assert link.connected.wait(10)
        bad = [b"not json", b"[1, 2]", b'{"cmd": "explode", "by": "x"}', b'{"cmd": "ack", "by": "a.jones"}',
               b'{"cmd": "clear", "alert_id": "nope", "by": "a.jones"}', b"\xff\xfe", b'{"cmd": "ack"}']
        assert link.subscribed.wait(10)  # connected is not yet subscribed
        first = {"cmd": "ack", "alert_id": "00000000-0000-4000-8000-000000000002", "by": "a.jones"}
        publish(mosquitto, PREFIX + "/cmd", first)
        wait_until(lambda: commands, 10)
        with caplog.at_level(logging.WARNING, logger="agent.uplink.link"):
            for raw in bad:
                publish(mosquitto, PREFIX + "/cmd", raw)
            good = {"cmd": "ack", "alert_id": "00000000-0000-4000-8000-000000000001", "by": "a.jones"}
            publish(mosquitto, PREFIX + "/cmd", good)
            wait_until(lambda: len(commands) == 2, 10)
        assert commands == [first, good]                       # the link kept running
        lines = [r.getMessage() for r in caplog.records if r.name == "agent.uplink.link"]
        assert len(lines) == len(bad) and link.ignored_commands == len(bad)
        assert all(line.startswith(f"ignored cmd on {PREFIX}/cmd: ") and "\n" not in line for line in lines)
        assert "cmd: 'explode' is not one of" in lines[2] and "alert_id: is required" in lines[3]
        assert "alert_id: 'nope' is not a UUID" in lines[4]
    finally:
        link.stop()


def _make_tls(tmp_path):
    import subprocess

    from services import require_binary

    openssl = require_binary("openssl")
    d = tmp_path / "tls"
    d.mkdir()

    def run(*argv):
        subprocess.run([openssl, *argv], check=True, capture_output=True, timeout=30, cwd=d)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.crt")
    return d


@pytest.mark.timeout(30)
def test_tls_with_ca_file(tmp_path, mosquitto_factory):
    tls = _make_tls(tmp_path)
    broker = mosquitto_factory(f"cafile {tls / 'ca.crt'}\ncertfile {tls / 'server.crt'}\nkeyfile {tls / 'server.key'}\n")
    box = Outbox(tmp_path / "outbox.db")
    link = Link(broker_url=f"mqtts://127.0.0.1:{broker.port}", prefix="classroom/v1", site="penny-acres",
                room="1a", device="1a-pi-01", outbox=box, ca_file=str(tls / "ca.crt"))
    link.start()
    direct = []
    link.client.write_now = lambda: direct.append(1)  # an OpenSSL socket is written by one thread only
    try:
        assert link.connected.wait(10), "no TLS connection"
        link.send("alert", alert())
        wait_until(lambda: box.count() == 0, 10, message="alert not acknowledged over TLS")
        assert direct == []
    finally:
        link.stop()
    # Without our CA the broker's certificate is not trusted: no connection, nothing lost.
    wrong = Link(broker_url=f"mqtts://127.0.0.1:{broker.port}", prefix="classroom/v1", site="penny-acres",
                 room="1a", device="1a-pi-02", outbox=Outbox(tmp_path / "o2.db"), ca_file=str(tls / "server.crt"))
    wrong.start()
    try:
        wait_until(lambda: "alert unknown ca" in broker.log_path.read_text(), 10)
        assert not wrong.is_connected and "as 1a-pi-02" not in broker.log_path.read_text()
    finally:
        wrong.stop()


@pytest.mark.timeout(30)
def test_settling_deletes_acked_rows_later_and_fsyncs_only_unacked_ones(tmp_path, mosquitto):
    """With ``later`` (the runtime's real-time timer) the PUBACK's delete and the fsync
    wait for one settle job: off the alert's path, and no fsync for what the broker has."""
    import os
    import signal

    jobs = []
    link, box, _ = make_link(tmp_path, mosquitto, later=lambda seconds, fn, *args: jobs.append((seconds, fn, args)))
    syncs = []
    real_sync = box.sync
    box.sync = lambda: (syncs.append(1), real_sync())
    link.start()
    try:
        assert link.connected.wait(10)
        link.send("alert", alert())
        wait_until(lambda: link.acked == 1, 10, message="no PUBACK")
        assert box.count() == 1 and syncs == []          # nothing done on the alert's path ...
        [(seconds, settle, args)] = jobs                 # ... one settle job, however many reasons
        assert seconds == pytest.approx(0.05)
        settle(*args)
        assert box.count() == 0 and syncs == []          # acknowledged: deleted, never fsynced

        jobs.clear()
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)      # the broker takes the bytes but cannot answer
        try:
            link.send("alert", alert("00000000-0000-4000-8000-000000000002"))
            [(_, settle, args)] = jobs
            settle(*args)
            assert syncs == [1] and box.count() == 1     # unacknowledged: fsynced, kept
        finally:
            os.kill(mosquitto.proc.pid, signal.SIGCONT)
        wait_until(lambda: link.acked == 2, 10, message="no PUBACK after the broker woke")
        [(_, settle, args)] = jobs[1:]
        settle(*args)
        assert box.count() == 0
    finally:
        link.stop()


@pytest.mark.timeout(30)
def test_a_dropped_connection_fsyncs_what_the_broker_never_acknowledged(tmp_path, mosquitto):
    import os
    import signal

    link, box, _ = make_link(tmp_path, mosquitto, later=lambda seconds, fn, *args: None)
    syncs = []
    box.sync = lambda: syncs.append(1)
    link.start()
    try:
        assert link.connected.wait(10)
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)       # takes the alert, never answers ...
        link.send("alert", alert())
        assert syncs == []                                 # (settling would fsync it later)
        os.kill(mosquitto.proc.pid, signal.SIGKILL)        # ... and then the connection drops
        os.kill(mosquitto.proc.pid, signal.SIGCONT)
        wait_until(lambda: not link.is_connected, 10)
        wait_until(lambda: syncs, 10, message="no fsync when the connection dropped")
        assert box.count() == 1
    finally:
        mosquitto.start()
        link.stop()


# --------------------------------------------------------------------------- issue 13: order, size, reconnecting


@pytest.mark.timeout(30)
def test_nothing_over_the_payload_limit_is_stored_or_sent(tmp_path, mosquitto, caplog):
    from agent import protocol

    sub = Subscriber(mosquitto, PREFIX + "/event")
    link, box, _ = make_link(tmp_path, mosquitto)
    link.start()
    try:
        assert link.connected.wait(10)
        huge = {"id": "00000000-0000-4000-8000-000000000009", "type": "login", "ts": "2026-11-24T10:00:00.000Z",
                "site": "penny-acres", "room": "1a", "device": "1a-pi-01", "user": "x" * protocol.MAX_PAYLOAD}
        with caplog.at_level(logging.ERROR):
            assert link.send("event", huge) is None
        assert [r.getMessage() for r in caplog.records if "refused to send" in r.getMessage()] == [
            f"refused to send a {len(protocol.encode(huge))}-byte event message (the limit is {protocol.MAX_PAYLOAD}): "
            f"login {huge['id']}"]
        assert box.count() == 0
        small = dict(huge, user="pupil1", id="00000000-0000-4000-8000-00000000000a")
        link.send("event", small)
        sub.wait_for("event", id=small["id"])
        assert [p["id"] for p in sub.payloads("event")] == [small["id"]]    # still connected, nothing looped
        assert link.is_connected and link.refused == 0
    finally:
        link.stop()
        sub.close()


def test_report_evidence_is_trimmed_to_fit_keeping_the_newest():
    from agent import protocol
    from agent.report.alert import fit_domains

    from datetime import datetime, timedelta, timezone

    start = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
    domains = [{"domain": f"site-{i:05d}.example.org", "ts": protocol.now_ts(start + timedelta(seconds=i)),
                "count": 1} for i in range(4000)]
    kept, left_out = fit_domains(domains)
    assert left_out > 0 and len(kept) + left_out == 4000
    assert kept == domains[-len(kept):]                               # the newest, in their order
    event = {"id": protocol.new_id(), "type": "report_evidence", "ts": protocol.now_ts(), "site": "s", "room": "r",
             "device": "d", "alert_id": protocol.new_id(), "domains": kept, "truncated": left_out}
    assert len(protocol.encode(event)) <= protocol.MAX_PAYLOAD
    assert fit_domains(domains[:10]) == (domains[:10], 0)


def test_reconnect_back_off_is_jittered_and_bounded(tmp_path):
    link, box, _ = make_link(tmp_path, SimpleNamespace(port=1), reconnect_max=2.0)
    calls = []
    link.client.reconnect_delay_set = lambda min_delay, max_delay: calls.append((min_delay, max_delay))
    for _ in range(50):
        link._jitter_backoff()   # what each disconnection does (paho doubles from min to max itself)
    seen = set()
    for low, high in calls:
        assert 0.05 <= low <= 0.2 and 1.0 <= high <= 2.0
        seen.add((round(low, 3), round(high, 3)))
    assert len(seen) > 40                                               # devices do not knock in step
    assert link.client.connect_timeout == 2.0
    box.close()


@pytest.mark.timeout(60)
def test_the_backlog_goes_before_anything_new_and_before_online(tmp_path, mosquitto):
    """Rows stored while offline, then a send racing the reconnection: the subscriber sees
    the backlog in order, then ``online``; the racing message never ahead of the backlog."""
    import threading

    sub = Subscriber(mosquitto, PREFIX + "/#", persistent=True)
    link, box, _ = make_link(tmp_path, mosquitto)
    link.start()
    try:
        assert link.connected.wait(10)
        mosquitto.stop()
        wait_until(lambda: not link.is_connected, 10)
        backlog = [dict(alert(), id=f"00000000-0000-4000-8000-00000000010{i}") for i in range(5)]
        for a in backlog:
            link.send("alert", a)
        mosquitto.start()
        late = dict(alert(), id="00000000-0000-4000-8000-000000000200", state="escalated")
        stop = threading.Event()

        def racer():  # keeps trying to send the moment the socket is up
            while not stop.is_set():
                if link.is_connected:
                    link.send("alert", late)
                    return
        t = threading.Thread(target=racer, daemon=True)
        t.start()
        sub.wait_for("alert", id=late["id"], timeout=30)
        stop.set()
        t.join(5)
        order = [(tp.rsplit("/", 1)[1], json.loads(p).get("id") or json.loads(p)["state"])
                 for tp, p, _ in sub.messages]
        after = order[max(i for i, (k, v) in enumerate(order) if (k, v) == ("status", "offline")) + 1:] \
            if ("status", "offline") in order else order
        ids = [v for k, v in after if k == "alert"]
        assert ids[:5] == [a["id"] for a in backlog] and ids[-1] == late["id"]
        # "late" was committed during the reconnection: it goes with the backlog, after it, or
        # after online; never ahead of a row stored before it.
        assert after.index(("alert", backlog[-1]["id"])) < after.index(("status", "online"))
    finally:
        link.stop()
        sub.close()
