"""Passwords, sessions, and the staff/enrolment CLI; plus `classroom-server serve` end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from server.http.auth import hash_password, login, token_hash, verify_password
from server.cli import main
from services import free_port, spawn, terminate, wait_until

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, REPO, add_staff

pytestmark = pytest.mark.timeout(60)
CLI = str(Path(sys.executable).parent / "classroom-server")


def test_argon2_hashes_and_verifies():
    h = hash_password("a long passphrase")
    assert h.startswith("$argon2id$") and "a long passphrase" not in h
    assert verify_password(h, "a long passphrase")
    assert not verify_password(h, "a long passphrasE")
    assert not verify_password(None, "anything") and not verify_password("garbage", "x")


def test_login_creates_hashed_session(sqlite_store):
    add_staff(sqlite_store, "s.patel", "dsl")
    assert login(sqlite_store, "s.patel", "nope") is None
    assert login(sqlite_store, "ghost", PASSWORD) is None
    token = login(sqlite_store, "s.patel", PASSWORD)
    assert sqlite_store.get_session(token_hash(token))["role"] == "dsl"
    assert sqlite_store.get_session(token) is None
    sqlite_store.update_user("s.patel", disabled=1)
    assert login(sqlite_store, "s.patel", PASSWORD) is None


def run_cli(argv, stdin=""):
    old_in = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:
        sys.stdin = old_in
    return exit_info.value.code


def test_cli_user_add_and_enrol_token(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/s.db"
    assert run_cli(["user", "add", "s.patel", "--role", "dsl", "--db", db], stdin=PASSWORD + "\n") == 0
    assert run_cli(["user", "add", "s.patel", "--role", "dsl", "--db", db], stdin=PASSWORD + "\n") == 1
    assert run_cli(["user", "add", "x", "--role", "king", "--db", db], stdin=PASSWORD + "\n") == 1
    assert run_cli(["user", "add", "y", "--role", "dsl", "--db", db], stdin="short\n") == 1
    assert run_cli(["user", "add", "z", "--role", "dsl", "--db", "mysql://nope"], stdin=PASSWORD) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--role 'king'" in err and "at least 10" in err and "sqlite:///PATH" in err
    assert err.count("\n") == 4  # one line per error
    assert PASSWORD not in err
    assert run_cli(["enrol-token", "--device", "5b-pi-01", "--config", str(REPO / "config"), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "one-time enrolment token" in out and len(out.strip().splitlines()[-1]) >= 40
    assert run_cli(["enrol-token", "--device", "nope", "--config", str(REPO / "config"), "--db", db]) == 1


def test_cli_user_add_password_file(tmp_path, capsys):
    """A one-line file or a broker-config credentials YAML; a missing file is one line, nothing added."""
    from server.store import Store

    db = f"sqlite:///{tmp_path}/s.db"
    plain, creds = tmp_path / "pw.txt", tmp_path / "creds.yaml"
    plain.write_text(PASSWORD + "\n")
    creds.write_text(f"username: m.khan\npassword: {PASSWORD}-2\n")
    assert run_cli(["user", "add", "a.jones", "--role", "teacher", "--password-file", str(plain), "--db", db]) == 0
    assert run_cli(["user", "add", "m.khan", "--role", "teacher", "--password-file", str(creds), "--db", db]) == 0
    assert run_cli(["user", "add", "b.b", "--role", "teacher", "--password-file", str(tmp_path / "no"), "--db", db]) == 1
    err = capsys.readouterr().err
    assert err == f"classroom-server: error: {tmp_path / 'no'}: cannot read password file (No such file or directory)\n"
    store = Store.open(db)
    try:
        assert login(store, "a.jones", PASSWORD) and login(store, "m.khan", PASSWORD + "-2")
        assert store.get_user("b.b") is None
    finally:
        store.close()


@pytest.mark.integration
def test_serve_runs_api_and_ingest(mosquitto, tmp_path):
    port = free_port()
    secret = tmp_path / "mqtt-password"
    secret.write_text("not-needed-anonymous-broker\n")
    log = tmp_path / "serve.log"
    proc = spawn([CLI, "serve", "--config", str(REPO / "config"),
                  "--db", f"sqlite:///{tmp_path}/s.db", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}",
                  "--port", str(port), "--mqtt-password-file", str(secret)],
                 log_path=log, cwd=str(REPO))
    try:
        def healthy():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                body = json.loads(r.read())
                return body if body["broker"] else None

        body = wait_until(healthy, 30, message=lambda: log.read_text())
        assert body["ok"] and body["store"] == "sqlite"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            assert b"classroom_broker_connected 1" in r.read()
    finally:
        terminate(proc)
    assert "not-needed-anonymous-broker" not in log.read_text()


@pytest.mark.integration
def test_serve_with_two_ingest_workers_stores_everything_once(mosquitto, tmp_path):
    from agent import protocol
    from server.store import Store
    from services import close_client, mqtt_client

    from server_fixtures import make_event, topic_of

    port = free_port()
    db = f"sqlite:///{tmp_path}/s.db"
    log = tmp_path / "serve.log"
    proc = spawn([CLI, "serve", "--db", db, "--broker", f"mqtt://127.0.0.1:{mosquitto.port}", "--port", str(port),
                  "--ingest-workers", "2", "--ingest-id", "srv"], log_path=log, cwd=str(REPO))
    try:
        wait_until(lambda: log.read_text().count("ingest: connected") >= 2, 30, message=lambda: log.read_text())
        wait_until(lambda: "Uvicorn running" in log.read_text(), 30, message=lambda: log.read_text())
        device = mqtt_client(mosquitto)
        events = [make_event() for _ in range(300)]
        infos = [device.publish(topic_of("5b", "5b-pi-01", "event"), protocol.encode(e), qos=1) for e in events]
        for info in infos:
            info.wait_for_publish(10)
        close_client(device)
        store = Store.open(db)
        try:
            wait_until(lambda: store.count("events") == 300, 20)
        finally:
            store.close()
    finally:
        terminate(proc)
    broker_log = mosquitto.log_path.read_text()
    assert " as srv " in broker_log and " as srv-1 " in broker_log  # both workers joined the broker


def test_console_script_lists_the_commands():
    r = subprocess.run([CLI, "--help"], capture_output=True, text=True, cwd=str(REPO), timeout=30)
    assert "serve" in r.stdout and "enrol-token" in r.stdout
