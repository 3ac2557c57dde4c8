"""sd_notify against a real unix datagram socket (path and abstract), as systemd listens."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from agent import sdnotify

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
