"""sd_notify against a real unix datagram socket (path and abstract), as systemd listens."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from agent.core import sdnotify

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def recv(sock) -> str:
    return sock.recv(4096).decode()


def test_ready_status_watchdog_stopping_on_a_path_socket(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = sdnotify.Notifier()
    assert n.is_enabled
    assert n.ready("listening")
    assert recv(sock) == "READY=1\nSTATUS=listening"
    assert n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    assert n.status("3 devices\nonline")
    assert recv(sock) == "STATUS=3 devices online"
    assert n.stopping()
    assert recv(sock) == "STOPPING=1"


def test_abstract_socket_name_with_at_sign():
    name = f"classroom-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert sdnotify.notify("READY=1", "@" + name)
        assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_no_socket_is_a_quiet_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.Notifier().ready() is False
    assert sdnotify.notify("READY=1", "") is False
    # A socket that does not exist (systemd went away) must not raise either.
    assert sdnotify.notify("WATCHDOG=1", str(tmp_path / "gone.sock")) is False
    assert sdnotify.notify("WATCHDOG=1", "vsock:2:1234") is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid():
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "nonsense"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({}) is None


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_real_agent_says_ready_pings_the_watchdog_and_says_stopping(tmp_path, mosquitto, listener):
    """`classroom-agent run` as systemd would start it: NOTIFY_SOCKET + WATCHDOG_USEC."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from services import spawn, terminate

    path, sock = listener
    repo = Path(__file__).resolve().parent.parent
    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text("\n".join([
        "device: 1a-pi-01", "site: penny-acres", f"broker_url: mqtt://127.0.0.1:{mosquitto.port}",
        "collector_url: http://127.0.0.1:9", f"credentials: {tmp_path / 'none.yaml'}",
        f"state_dir: {tmp_path / 'state'}", f"control_socket: {tmp_path / 'control.sock'}",
        f"config_dir: {repo / 'config'}", "",
    ]))
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")  # ping every 0.5 s
    env.pop("WATCHDOG_PID", None)
    proc = spawn([sys.executable, "-c", "import sys; from agent.cli import main; main(sys.argv[1:])",
                  "run", "--simulate", "--config", str(agent_yaml)], env=env, cwd=str(repo),
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock.settimeout(30)
        seen = [recv(sock)]
        while not seen[-1].startswith("READY=1"):  # pings may start before READY; both are fine
            seen.append(recv(sock))
        assert seen[-1].startswith("READY=1\nSTATUS=device 1a-pi-01"), seen
        assert set(seen[:-1]) <= {"WATCHDOG=1"}
        assert recv(sock) == "WATCHDOG=1" and recv(sock) == "WATCHDOG=1"  # and keep coming
        proc.send_signal(signal.SIGTERM)
        seen = [recv(sock)]
        while seen[-1] != "STOPPING=1":
            assert seen[-1] == "WATCHDOG=1", seen
            seen.append(recv(sock))
        assert proc.wait(timeout=20) == 0
    finally:
        terminate(proc)
