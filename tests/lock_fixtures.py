"""Fixtures for the lock / sessions / guard tests: a fake runtime, a recording command
runner, and a real Xvfb display.

``FakeRuntime`` implements exactly the runtime contract of COMMON.md (emit_event, post,
call_later, clock, policy, bootstrap, state_dir, current_user) with a FakeClock, and
validates every event it is given with agent.protocol, so a component that emits a
malformed event fails its test.
"""

from __future__ import annotations

import io
import os
import queue
import subprocess
import threading
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import protocol
from agent.clock import FakeClock
from agent.config import effective_policy, load_tree
from services import require_binary, spawn, terminate, wait_until

EXAMPLE = Path(__file__).resolve().parent.parent / "config"


class FakeTimer:
    def __init__(self, due, fn):
        self.due, self.fn, self.cancelled = due, fn, False

    def cancel(self):
        self.cancelled = True


class FakeRuntime:
    def __init__(self, tmp_path, device="5b-pi-01", start: datetime | None = None, user="pupil1"):
        self.tree = load_tree(EXAMPLE)
        self.device = device
        self.clock = FakeClock(start)
        self.state_dir = Path(tmp_path) / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap = SimpleNamespace(device=device, site="penny-acres", session_user=None,
                                         screen_backend="headless", staff_pin_hash=None,
                                         state_dir=str(self.state_dir))
        self.events: list[dict] = []
        self.timers: list[FakeTimer] = []
        self.posted: "queue.SimpleQueue" = queue.SimpleQueue()
        self.components: list = []
        self.user = user
        self.policy = self.evaluate()

    def evaluate(self):
        self.policy = effective_policy(self.tree, self.device, self.clock())
        return self.policy

    def set_time(self, moment: datetime):
        self.clock.set(moment)
        return self.evaluate()

    def emit_event(self, type, **fields):  # noqa: A002
        event = {"id": protocol.new_id(), "type": type, "ts": protocol.now_ts(self.clock()),
                 "site": self.policy.site, "room": self.policy.room, "device": self.device, **fields}
        protocol.validate("event", event)
        protocol.decode(protocol.encode(event))  # must be JSON-serialisable
        self.events.append(event)
        return event

    def post(self, fn, *args):
        # The test's main thread plays the queue thread: run at once.  Other threads
        # (watchdog, overlay reader) queue; the test runs those with run_posted().
        if threading.current_thread() is threading.main_thread():
            fn(*args)
        else:
            self.posted.put((fn, args))

    def run_posted(self, timeout: float = 5.0) -> int:
        """Run posted jobs until one has run and the queue is empty; return how many ran."""
        ran = 0
        fn, args = self.posted.get(timeout=timeout)
        while True:
            fn(*args)
            ran += 1
            try:
                fn, args = self.posted.get_nowait()
            except queue.Empty:
                return ran

    def call_later(self, seconds, fn, *args):
        timer = FakeTimer(self.clock() + timedelta(seconds=seconds), lambda: fn(*args))
        self.timers.append(timer)
        return timer

    def due_timers(self):
        return [t for t in self.timers if not t.cancelled and t.due <= self.clock()]

    def run_due(self) -> int:
        due = self.due_timers()
        for t in due:
            t.cancelled = True
            t.fn()
        return len(due)

    def current_user(self):
        return self.user

    def of_type(self, kind):
        return [e for e in self.events if e["type"] == kind]


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

    def spawn(self, argv, env=None, stdin_text=None):
        proc = FakeProc(argv)
        proc.stdin_text = stdin_text
        self.spawned.append(proc)
        return proc


@pytest.fixture
def fake_runtime(tmp_path):
    return FakeRuntime(tmp_path)


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
