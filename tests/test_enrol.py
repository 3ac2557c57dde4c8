"""Device enrolment by token: ``classroom-agent enrol`` against the real collector (uvicorn on a
loopback port) and ``scripts/install-agent.sh --token``.

The credentials file is 0600 and owned by the agent's user; the password it holds logs in
to the collector; the site and room are recorded; every failure is one line and writes
nothing; the token never appears in any output; the install script redeems the token once
(a second run changes nothing).
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from server_fixtures import REPO, sqlite_store, tree  # noqa: F401
from services import free_port, require_root
from web_fixtures import LiveServer

pytestmark = pytest.mark.timeout(90)
AGENT = str(Path(sys.executable).parent / "classroom-agent")
SCRIPT = REPO / "scripts" / "install-agent.sh"


@pytest.fixture
def live_collector(sqlite_store, tree):
    from server.http.app import Settings, create_app

    app = create_app(Settings(db_url="unused"), store=sqlite_store, tree=tree)
    server = LiveServer(app).start()
    yield server
    server.stop()


def _token(store, tree, device="5b-pi-01", **kw) -> str:
    from server.devices import create_enrol_token

    return create_enrol_token(store, device, "tech", tree, **kw)["token"]


def _enrol(*argv, stdin=None):
    return subprocess.run([AGENT, "enrol", *argv], capture_output=True, text=True, timeout=60, input=stdin)


def _login(url: str, device: str, password: str) -> int:
    import httpx

    return httpx.get(f"{url}/api/v1/device/whoami", auth=(device, password), timeout=10).status_code


def test_enrol_writes_the_devices_own_credentials(live_collector, sqlite_store, tree, tmp_path):
    require_root("giving the credentials file to the agent's user")
    token = _token(sqlite_store, tree)
    creds = tmp_path / "credentials.yaml"
    result = _enrol("--collector", live_collector.url, "--token", token, "--credentials", str(creds),
                    "--owner", "nobody", "--device", "5b-pi-01")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"5b-pi-01: enrolled (room 5b); credentials written to {creds} (0600, owner nobody)"
    st = creds.stat()
    assert oct(st.st_mode & 0o777) == "0o600" and pwd.getpwuid(st.st_uid).pw_name == "nobody"
    data = yaml.safe_load(creds.read_text())
    assert data["username"] == "5b-pi-01" and (data["site"], data["room"]) == ("penny-acres", "5b")
    assert _login(live_collector.url, "5b-pi-01", data["password"]) == 200
    assert token not in result.stdout + result.stderr and data["password"] not in result.stdout + result.stderr
    # The agent's own loader reads it.
    from agent.config.credentials import load_credentials

    assert load_credentials(creds) == ("5b-pi-01", data["password"])
    # Used once: a second try is refused and changes nothing.
    again = _enrol("--collector", live_collector.url, "--token", token, "--credentials", str(tmp_path / "x.yaml"),
                   "--owner", "nobody")
    assert again.returncode == 1 and not (tmp_path / "x.yaml").exists()
    assert again.stderr.strip() == ("classroom-agent: error: token: not valid, already used or expired; "
                                    "ask a technician for a new one")


def test_enrol_failures_are_one_line_and_write_nothing(live_collector, sqlite_store, tree, tmp_path):
    creds = tmp_path / "credentials.yaml"
    owner = ["--owner", pwd.getpwuid(os.geteuid()).pw_name]
    expired = _token(sqlite_store, tree, now=datetime.now(timezone.utc) - timedelta(hours=80))
    other = _token(sqlite_store, tree, device="5b-pi-02")
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["--collector", "ftp://x", "--token", "t" * 43], "--collector: 'ftp://x' is not an http(s):// URL"),
        (["--collector", dead, "--token", "t" * 43], f"cannot reach the collector at {dead} (Connection refused)"),
        (["--collector", live_collector.url, "--token", "t" * 43], "token: not valid, already used or expired"),
        (["--collector", live_collector.url, "--token", expired], "token: not valid, already used or expired"),
        (["--collector", live_collector.url, "--token", other, "--device", "5b-pi-01"],
         "the token was for '5b-pi-02', but this device is '5b-pi-01'; nothing was written"),
        (["--collector", live_collector.url + "/nothing-here", "--token", "t" * 43], "is not a classroom-server"),
        (["--collector", live_collector.url], "--token is required"),
    ]
    for argv, message in cases:
        result = _enrol(*argv, "--credentials", str(creds), *owner)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, (argv, result.stderr)
        assert lines[0].startswith("classroom-agent: error: ") and message in lines[0], (argv, lines)
        assert not creds.exists()
        for secret in (expired, other):
            assert secret not in result.stderr + result.stdout


def test_enrol_as_root_needs_the_agents_user_before_it_uses_the_token(live_collector, sqlite_store, tree, tmp_path):
    require_root("the default owner rule")
    try:
        agent_user = pwd.getpwnam("classroom-agent")
    except KeyError:
        agent_user = None
    token = _token(sqlite_store, tree)
    result = _enrol("--collector", live_collector.url, "--token", token, "--credentials", str(tmp_path / "c.yaml"))
    if agent_user is None:
        assert result.returncode == 1
        assert "--owner: no user 'classroom-agent'" in result.stderr
        assert not (tmp_path / "c.yaml").exists()
        assert [t["used_at"] for t in sqlite_store.list_enrol_tokens()] == [None]  # still good for a second try
    else:
        # A machine where the agent is installed: the credentials go to the agent's user.
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "c.yaml").stat().st_uid == agent_user.pw_uid


def _stand_in_venv(root: Path, tmp_path: Path) -> Path:
    """As tests/test_install_script.py: python exists, pip records its calls, classroom-agent is the real one."""
    venv_bin = root / "opt/classroom-safety/venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to("/usr/bin/python3")
    calls = tmp_path / "pip-calls"
    (venv_bin / "pip").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (venv_bin / "pip").chmod(0o755)
    (venv_bin / "classroom-agent").symlink_to(AGENT)
    return calls


def _script(*argv):
    return subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)


def test_install_script_with_a_token(live_collector, sqlite_store, tree, tmp_path):
    token = _token(sqlite_store, tree)
    base = ["--device", "5b-pi-01", "--site", "penny-acres", "--broker", "mqtt://127.0.0.1:1883",
            "--collector", live_collector.url]
    dry = _script(*base, "--token", token, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "classroom-agent enrol --collector " + live_collector.url in dry.stdout
    assert "(token on stdin, not shown)" in dry.stdout and token not in dry.stdout + dry.stderr
    assert [t["used_at"] for t in sqlite_store.list_enrol_tokens()] == [None]  # a dry run uses nothing
    for extra, message in ((["--token", "short"], "--token: not a token"),
                           (["--token", token, "--credentials", "/etc/hostname"], "give --token or --credentials"),
                           ([], "--token TOKEN (from `classroom-server enrol-token`) or --credentials FILE is required")):
        bad = _script(*base, *extra, "--dry-run")
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and lines[0].startswith("install-agent.sh: error: " + message), \
            bad.stderr

    require_root("setting file owners")
    root = tmp_path / "sdcard"
    _stand_in_venv(root, tmp_path)
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    real = [*base, "--token", token, "--root", str(root), "--service-user", "nobody"]
    first = _script(*real)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "5b-pi-01: enrolled (room 5b)" in first.stdout and token not in first.stdout + first.stderr
    creds = root / "etc/classroom-safety/credentials.yaml"
    st = creds.stat()
    assert (oct(st.st_mode & 0o777), pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name) == \
        ("0o600", "nobody", group)
    password = yaml.safe_load(creds.read_text())["password"]
    assert _login(live_collector.url, "5b-pi-01", password) == 200
    second = _script(*real)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "unchanged: /etc/classroom-safety/credentials.yaml (enrolled as 5b-pi-01)" in second.stdout
    assert second.stdout.rstrip().endswith("done: nothing needed changing")
    assert yaml.safe_load(creds.read_text())["password"] == password


def test_broker_config_credentials_also_log_in_to_the_collector(live_collector, sqlite_store, tree, tmp_path):
    from server.cli import main

    db = sqlite_store.url
    with pytest.raises(SystemExit) as done:
        main(["broker-config", "--config", str(REPO / "config"), "--out", str(tmp_path / "broker"), "--db", db])
    assert done.value.code == 0
    kept = yaml.safe_load((tmp_path / "broker/credentials/5b-pi-01.yaml").read_text())
    assert _login(live_collector.url, "5b-pi-01", kept["password"]) == 200
    row = sqlite_store.get_device("5b-pi-01")
    assert row["room"] == "5b" and row["mqtt_hash"] is None  # still a broker-config device, not "enrolled"
    # Running it again keeps the file (and so the login) as it was.
    with pytest.raises(SystemExit):
        main(["broker-config", "--config", str(REPO / "config"), "--out", str(tmp_path / "broker"), "--db", db])
    assert yaml.safe_load((tmp_path / "broker/credentials/5b-pi-01.yaml").read_text()) == kept
    assert _login(live_collector.url, "5b-pi-01", kept["password"]) == 200


def test_a_token_never_starts_with_a_dash_so_the_command_line_takes_it(monkeypatch):
    """``enrol --token -Ew...`` is an argparse error ("expected one argument"); one token in
    64 from token_urlsafe starts with "-".  The generator skips those."""
    import secrets

    from server.http import auth

    made = iter(["-Ew" + "a" * 40, "-x" + "b" * 41, "Ok" + "c" * 41])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(made))
    assert auth.new_token() == "Ok" + "c" * 41
