"""Fixtures for the lock / sessions / guard tests: a recording command runner, a real
Xvfb display (``xvfb``; ``x11_session``: one that asks for a cookie, as a display
manager's does, with a pupil at it), and a real program named like a bypass tool.  The
runtime these tests give their components is tests/fake_runtime.py's ``FakeRuntime``.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from services import require_binary, spawn, terminate, wait_until


class FakeProc:
    """A Popen stand-in: poll/wait/terminate/send_signal recorded; stdout scriptable."""

    _next_pid = 40000

    def __init__(self, argv, stdout_text=""):
        self.argv = list(argv)
        FakeProc._next_pid += 1
        self.pid = FakeProc._next_pid
        self.returncode = None
        self.signals: list[int] = []
        self.stdout = io.StringIO(stdout_text)

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.argv, timeout or 0)
        return self.returncode

    def exit(self, code=0):
        self.returncode = code

    def send_signal(self, sig):
        self.signals.append(sig)

    def terminate(self):
        self.signals.append(15)
        self.returncode = -15


class RecordingRunner:
    """CommandRunner that records argv and answers from a script of (prefix -> result)."""

    def __init__(self, answers: dict | None = None):
        self.ran: list[list[str]] = []
        self.spawned: list[FakeProc] = []
        self.answers = answers or {}

    def run(self, argv, timeout=10.0, env=None):
        argv = list(argv)
        self.ran.append(argv)
        for key, (code, out) in self.answers.items():
            if " ".join(argv).startswith(key):
                return subprocess.CompletedProcess(argv, code, out, "")
        return subprocess.CompletedProcess(argv, 0, "", "")

    def spawn(self, argv, env=None, stdin_text=None, stdin_path=None):
        proc = FakeProc(argv)
        proc.stdin_text = stdin_text
        self.spawned.append(proc)
        return proc


@pytest.fixture
def xvfb():
    """A real X server on a display it picks itself (-displayfd): SimpleNamespace(display)."""
    binary = require_binary("Xvfb")
    read_fd, write_fd = os.pipe()
    proc = spawn([binary, "-displayfd", str(write_fd), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                 pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        assert number.isdigit(), "Xvfb did not report its display"
        display = f":{number}"
        env = dict(os.environ, DISPLAY=display)
        wait_until(lambda: subprocess.run(["xdpyinfo"], env=env, capture_output=True).returncode == 0
                   if _has("xdpyinfo") else True, timeout=10)
        yield SimpleNamespace(display=display, env=env, proc=proc)
    finally:
        terminate(proc)


class X11Session:
    """An X display that wants the MIT cookie, as LightDM's does, and its pupil (``nobody``).

    ``display_setup(dir)`` is LightDM's display-setup hook (scripts/session-grant.sh
    --display-setup, as root): the server's cookie for the agent's user (root in the
    tests).  The pupil has their own copy, as ~/.Xauthority, and runs X clients with
    ``pupil(*argv)``; ``grant()`` is the session's login hook, run as the pupil, letting
    the agent's user draw by ``xhost``.  ``agent_cookie`` is a root-only copy for tests
    that look at the display themselves."""

    user = "nobody"

    def __init__(self, tmp_path: Path):
        import secrets
        import shutil
        import tempfile

        from services import require_root

        require_root()
        for tool in ("Xvfb", "xauth", "xhost", "xdotool", "xwininfo"):
            require_binary(tool)
        cookie = secrets.token_hex(16)
        server_auth = self.server_auth = tmp_path / "server.auth"
        self._xauth(server_auth, ":0", cookie)  # the server takes every record, whatever its display
        read_fd, write_fd = os.pipe()
        self.proc = spawn([shutil.which("Xvfb"), "-displayfd", str(write_fd), "-auth", str(server_auth),
                           "-screen", "0", "1024x768x24", "-nolisten", "tcp",
                           # no reset when the last client leaves: that would drop the session's grant
                           "-noreset"],
                          pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        assert number.isdigit(), "Xvfb did not report its display"
        self.display = f":{number}"
        self.agent_cookie = tmp_path / "agent.xauth"
        self._xauth(self.agent_cookie, self.display, cookie)
        self.home = Path(tempfile.mkdtemp(prefix="pupil-home-", dir="/tmp"))
        self.pupil_cookie = self.home / ".Xauthority"
        self._xauth(self.pupil_cookie, self.display, cookie)
        import pwd

        entry = pwd.getpwnam(self.user)
        for path in (self.home, self.pupil_cookie):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.uid = entry.pw_uid

    @staticmethod
    def _xauth(path: Path, display: str, cookie: str) -> None:
        subprocess.run(["xauth", "-f", str(path), "add", display, "MIT-MAGIC-COOKIE-1", cookie],
                       check=True, capture_output=True)
        os.chmod(path, 0o600)

    def pupil_argv(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", "env", "-i", "PATH=/usr/bin:/bin", f"HOME={self.home}",
                f"DISPLAY={self.display}", f"XAUTHORITY={self.pupil_cookie}", *argv]

    def pupil(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run an X client as the pupil, with their own cookie."""
        out = subprocess.run(self.pupil_argv(*argv), capture_output=True, text=True, timeout=30)
        assert not check or out.returncode == 0, f"{argv}: {out.stderr}"
        return out

    def grant(self) -> None:
        import shutil

        script = self.home / "session-grant.sh"  # where the pupil can read it
        shutil.copy(Path(__file__).resolve().parent.parent / "scripts/session-grant.sh", script)
        out = subprocess.run(self.pupil_argv("sh", str(script), "root"), capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr

    def display_setup(self, directory: Path, agent_user: str = "root") -> Path:
        """LightDM's display-setup hook (scripts/session-grant.sh --display-setup), as root:
        the server's cookie for the agent, in *directory* instead of /run/classroom-safety."""
        repo = Path(__file__).resolve().parent.parent
        out = subprocess.run(["sh", str(repo / "scripts/session-grant.sh"), "--display-setup", agent_user],
                             env={"PATH": "/usr/bin:/bin", "DISPLAY": self.display, "XAUTHORITY": str(self.server_auth),
                                  "CLASSROOM_XAUTH_DIR": str(directory)}, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return directory / "Xauthority"

    def close(self) -> None:
        import shutil

        terminate(self.proc)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def x11_session(tmp_path):
    session = X11Session(tmp_path)
    try:
        yield session
    finally:
        session.close()


def _has(name):
    import shutil

    return shutil.which(name) is not None


class PupilTool:
    """A real program named like a bypass tool, run by an ordinary account (nobody),
    as a pupil would run it: ``.wrapper`` (runuser) and ``.pid`` (the tool itself)."""

    def __init__(self, name: str, user: str = "nobody", script: str | None = None):
        import shutil
        import tempfile

        from services import require_root

        require_root()
        self.dir = Path(tempfile.mkdtemp(prefix="pupil-tool-", dir="/tmp"))
        self.dir.chmod(0o755)  # the pupil's account must reach it
        self.path = self.dir / name
        shutil.copy("/bin/sleep", self.path)
        self.path.chmod(0o755)
        argv = [str(self.path), "300"] if script is None else ["/bin/sh", "-c", script.format(tool=self.path,
                                                                                               dir=self.dir)]
        self.wrapper = spawn(["runuser", "-u", user, "--", *argv])
        self.name = name
        self.pid = wait_until(self._find, timeout=10, message=f"{name} did not start")

    def _find(self):
        import psutil

        for child in psutil.Process(self.wrapper.pid).children(recursive=True):
            return child.pid
        return None

    def comm(self) -> str | None:
        try:
            with open(f"/proc/{self.pid}/comm") as f:
                return f.read().strip()
        except OSError:
            return None

    def close(self):
        import shutil

        terminate(self.wrapper)
        shutil.rmtree(self.dir, ignore_errors=True)
