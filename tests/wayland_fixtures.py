"""A real Wayland desktop for tests: headless sway running as an unprivileged user (sway
refuses root, like a real desktop session), and ``wtype`` to type into it as that user
through the virtual-keyboard protocol, the way a keyboard would."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from agent.desktop.session import Session
from services import require_binary, require_root, skip_or_fail, spawn, terminate, wait_until

USER = "nobody"


@pytest.fixture
def sway_session(tmp_path):
    require_root()
    require_binary("sway")
    try:
        with headless_sway(tmp_path / "sway.log") as session:
            yield session
    except SwayRuntimeDirInUse as e:
        skip_or_fail(str(e))


class SwayRuntimeDirInUse(RuntimeError):
    pass


@contextlib.contextmanager
def headless_sway(log_path: Path, user: str = USER) -> Iterator[Session]:
    """A headless sway desktop (800x600) as *user*; also used by bench/overlay_latency.py."""
    sway = shutil.which("sway")
    if sway is None:
        raise RuntimeError("sway is not installed")
    entry = pwd.getpwnam(user)
    runtime_dir = Path(f"/run/user/{entry.pw_uid}")
    # One user, one runtime dir: two test runs on one machine take turns rather than
    # one failing on the other's desktop.
    with open("/run/lock/classroom-safety-sway.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        clear_stale_runtime_dir(runtime_dir, entry.pw_uid)
        if runtime_dir.exists():
            raise SwayRuntimeDirInUse(f"{runtime_dir} is in use; not touching a real session")
        yield from _run_sway(log_path, user, entry, runtime_dir, sway)


def _run_sway(log_path, user, entry, runtime_dir, sway):
    runtime_dir.mkdir(parents=True, mode=0o700)
    os.chown(runtime_dir, entry.pw_uid, entry.pw_gid)
    # In the user's own runtime dir: pytest's temp dirs are root-only.
    conf = runtime_dir / "sway.conf"
    conf.write_text("output HEADLESS-1 resolution 800x600\n")
    os.chown(conf, entry.pw_uid, entry.pw_gid)
    env = ["PATH=/usr/bin:/bin", f"XDG_RUNTIME_DIR={runtime_dir}", "WLR_BACKENDS=headless",
           "WLR_LIBINPUT_NO_DEVICES=1", "WLR_RENDERER=pixman", "HOME=/nonexistent"]
    proc = spawn(["runuser", "-u", user, "--", "env", "-i", *env, sway, "-c", str(conf)], log_path=log_path)
    try:
        def started():
            assert proc.poll() is None, "sway exited"
            return any(p.name.startswith("wayland-") and not p.name.endswith(".lock") for p in runtime_dir.iterdir())
        wait_until(started, timeout=15, message=lambda: "sway did not start: " + Path(log_path).read_text()[-800:])
        yield Session(id="w1", user=user, uid=entry.pw_uid, type="wayland", seat="seat0")
    finally:
        terminate(proc)
        for p in psutil.process_iter(["name", "username"]):
            if p.info["name"] in ("swaylock", "swayidle", "sway") and p.info["username"] == user:
                p.kill()
        shutil.rmtree(runtime_dir, ignore_errors=True)


def clear_stale_runtime_dir(runtime_dir: Path, uid: int) -> None:
    """Remove a runtime dir an interrupted test run left behind (a killed pytest never
    reaches headless_sway's cleanup), so one killed run does not fail every later one.
    Only our own leftover goes: it holds the sway.conf written below, and no process of
    the user is alive.  A real session of that user (any live process) is never touched."""
    if not (runtime_dir / "sway.conf").exists():
        return
    if any(p.info["uids"] and p.info["uids"].real == uid for p in psutil.process_iter(["uids"])):
        return
    shutil.rmtree(runtime_dir, ignore_errors=True)


def wtype(session: Session, *args: str) -> None:
    """Type into the session as its user: ``wtype(s, "246801", "-k", "Return")``."""
    binary = require_binary("wtype")
    # Each wtype run is a new virtual keyboard, and the first key it sends can arrive
    # before the client has its keymap and be dropped; a Shift tap goes first.
    result = subprocess.run(["runuser", "-u", session.user, "--", "env", f"XDG_RUNTIME_DIR=/run/user/{session.uid}",
                             f"WAYLAND_DISPLAY={wayland_socket(session).name}", binary, "-k", "Shift_L", *args],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, f"wtype {args}: {result.stderr}"


def wayland_socket(session: Session) -> Path:
    runtime_dir = Path(f"/run/user/{session.uid}")
    return next(p for p in sorted(runtime_dir.iterdir()) if p.name.startswith("wayland-") and not p.name.endswith(".lock"))


class VirtualPointer:
    """A mouse for the headless desktop (which has no input devices): wayvnc, run as the
    session's user, makes a virtual pointer through the compositor (wlr-virtual-pointer)
    for whoever speaks RFB to it on a unix socket; this speaks just enough of RFB to move
    and press it.  It never asks for a picture of the screen (no FramebufferUpdateRequest
    is ever sent), so nothing is captured: wayvnc is only the pointer's way in.
    ``move(x, y)``, ``down()``, ``up()``, ``close()``."""

    def __init__(self, session: Session, log_path: Path):
        import socket as _socket

        binary = require_binary("wayvnc")
        wayland = wayland_socket(session)
        self.path = wayland.parent / "pointer.sock"
        self.proc = spawn(["runuser", "-u", session.user, "--", "env", "-i", "PATH=/usr/bin:/bin",
                           f"XDG_RUNTIME_DIR={wayland.parent}", f"WAYLAND_DISPLAY={wayland.name}", binary,
                           "-C", "/dev/null", "-u", str(self.path)], log_path=log_path)
        wait_until(lambda: self.path.exists(), timeout=15, message="wayvnc did not start")
        self.sock = _socket.socket(_socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(self.path))
        version = self._read(12)
        assert version.startswith(b"RFB 003."), version
        self.sock.sendall(b"RFB 003.008\n")
        types = self._read(self._read(1)[0])
        assert 1 in types, f"wayvnc wants authentication: {list(types)}"
        self.sock.sendall(b"\x01")                    # security type None
        assert self._read(4) == b"\0\0\0\0", "wayvnc refused the connection"
        self.sock.sendall(b"\x01")                    # ClientInit: shared
        self._read(4 + 16)                            # ServerInit: size and pixel format
        self._read(int.from_bytes(self._read(4), "big"))  # the desktop's name
        self.x = self.y = 0
        self.buttons = 0

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("wayvnc closed the connection")
            data += chunk
        return data

    def _send(self) -> None:
        self.sock.sendall(bytes([5, self.buttons]) + self.x.to_bytes(2, "big") + self.y.to_bytes(2, "big"))

    def move(self, x: int, y: int) -> None:
        self.x, self.y = x, y
        self._send()

    def down(self) -> None:
        self.buttons = 1
        self._send()

    def up(self) -> None:
        self.buttons = 0
        self._send()

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            terminate(self.proc)
