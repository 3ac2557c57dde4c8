"""The blank screen: hide whatever upset the pupil, show a calm message, until staff clear it.

DESIGN rule 1, "blank first, network second": ``Screen.blank()`` is called on the
button's own thread before the alert touches the network, and every backend returns
without waiting on anything but a local pipe or process start.

Backends (chosen by ``make_screen``; ``screen_backend: auto`` picks the first that fits):

* ``x11``      -- a full-screen, always-on-top Tk overlay in a subprocess
                  (``python -m agent.screen_overlay``, run as the agent's user so the
                  pupil cannot kill it), started once and kept hidden so
                  blanking is one line down a pipe.  It ignores Escape, Alt+F4 and the
                  close button, grabs the keyboard, and accepts the staff PIN.
* ``wayland``  -- labwc/wayfire: ``swaylock -c 000000`` run as the session user with
                  ``XDG_RUNTIME_DIR``/``WAYLAND_DISPLAY`` set; the agent ends it on clear.
* ``headless`` -- records state and message only (servers, simulated devices, tests).

Staff PIN: stored only as a salted scrypt hash, ``scrypt$N$r$p$<salt b64>$<hash b64>``
(``classroom-agent hash-pin`` makes one).  No backend ever captures the screen.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- staff PIN

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """Salted scrypt hash of a staff PIN, as stored in agent.yaml's ``staff_pin_hash``."""
    if not isinstance(pin, str) or not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise ValueError("a staff PIN is 4 to 12 digits")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=_SCRYPT["n"], r=_SCRYPT["r"], p=_SCRYPT["p"], dklen=32)
    b64 = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt)}${b64(digest)}"


def verify_pin(pin: str, stored: str | None) -> bool:
    """Constant-time check of *pin* against a ``hash_pin`` string; False for any malformed input."""
    if not stored or not isinstance(pin, str):
        return False
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
        salt, digest = base64.b64decode(pad(salt_b64)), base64.b64decode(pad(digest_b64))
        got = hashlib.scrypt(pin.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(digest))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, digest)


# --------------------------------------------------------------------------- command runner


class Runner:
    """Starts session tools.  Tests swap in a recording runner to check the exact commands."""

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _session_prefix(user: str | None) -> list[str]:
    """``runuser -u USER --`` when we are root and a session user is known (tools must
    run as the desktop user to reach its display)."""
    if user and os.geteuid() == 0:
        return ["runuser", "-u", user, "--"]
    return []


def _session_env(user: str | None, extra: dict[str, str]) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if user:
        try:
            pw = pwd.getpwnam(user)
            env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user,
                       XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR") if os.getuid() == pw.pw_uid
                       else f"/run/user/{pw.pw_uid}")
        except KeyError:
            log.warning("session user %r does not exist", user)
    for key in ("XDG_RUNTIME_DIR", "WAYLAND_DISPLAY", "DISPLAY", "XAUTHORITY"):
        if key not in env or env[key] is None:
            if os.environ.get(key):
                env[key] = os.environ[key]
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


# --------------------------------------------------------------------------- backends


class HeadlessBackend:
    """Remembers what a screen would show; for servers, simulated devices and tests."""

    name = "headless"

    def show(self, message: str) -> None:
        pass

    def set_message(self, message: str) -> None:
        pass

    def hide(self) -> None:
        pass

    def close(self) -> None:
        pass


class WaylandBackend:
    """swaylock as the session user; clearing ends it.  (A pupil cannot unlock it: the
    session's password is not theirs on a kiosk; staff clear from the teacher client.)"""

    name = "wayland"

    def __init__(self, session_user: str | None = None, runner: Runner | None = None,
                 wayland_display: str | None = None, user_fn: Callable[[], str | None] | None = None):
        self.session_user = session_user
        self.user_fn = user_fn or (lambda: None)  # who is logged in, when agent.yaml does not say
        self.runner = runner or Runner()
        self.wayland_display = wayland_display or os.environ.get("WAYLAND_DISPLAY") or "wayland-0"
        self._proc = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        user = self.session_user or self.user_fn()
        env = _session_env(user, {"WAYLAND_DISPLAY": self.wayland_display})
        argv = _session_prefix(user)
        if argv:
            # runuser resets the environment; pass the session's variables explicitly.
            argv += ["env"] + [f"{k}={env[k]}" for k in ("XDG_RUNTIME_DIR", "WAYLAND_DISPLAY") if k in env]
        return argv + ["swaylock", "-c", "000000"], env

    def show(self, message: str) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        argv, env = self.command()
        self._proc = self.runner.start(argv, env)

    def set_message(self, message: str) -> None:
        pass  # swaylock shows no text; the LED and the teacher carry the acknowledgement

    def hide(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            from .lock import release_swaylock  # lock.py imports this module

            release_swaylock(proc)  # SIGUSR1, never SIGTERM: see release_swaylock

    def close(self) -> None:
        self.hide()


class X11Backend:
    """The Tk overlay subprocess, spoken to with JSON lines on its stdin; it answers on stdout.
    (``session_user`` is accepted for symmetry with the other backends; the overlay runs as
    the agent's own user on purpose.)"""

    name = "x11"

    def __init__(self, session_user: str | None = None, staff_pin_hash: str | None = None,
                 display: str | None = None, on_event: Callable[[dict], None] | None = None):
        self.session_user = session_user
        self.staff_pin_hash = staff_pin_hash
        self.display = display or os.environ.get("DISPLAY") or ":0"
        self.on_event = on_event or (lambda event: None)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.ready = threading.Event()

    def start(self) -> None:
        """Start the overlay hidden, so a press only has to write one line."""
        with self._lock:
            self._ensure_locked()

    def _ensure_locked(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        # The overlay runs as the agent's own user, not the pupil's, so the pupil cannot
        # kill it; the session lets that user draw with `xhost +SI:localuser:<agent user>`
        # (or XAUTHORITY pointing at the session's cookie).
        env = _session_env(None, {"DISPLAY": self.display})
        argv = [sys.executable, "-m", "agent.screen_overlay"]
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = here + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
        self.ready.clear()
        self._proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=None, bufsize=0, start_new_session=True)
        threading.Thread(target=self._read, args=(self._proc,), name="overlay-reader", daemon=True).start()
        self._send_locked({"op": "config", "pin_hash": self.staff_pin_hash})
        return self._proc

    def _read(self, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                log.warning("overlay said something unexpected: %r", raw[:80])
                continue
            if event.get("event") == "ready":
                self.ready.set()
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a callback bug must not kill the reader
                log.exception("overlay event handler failed")
        log.info("screen overlay exited (%s)", proc.wait())

    def _send_locked(self, obj: dict) -> None:
        proc = self._proc
        try:
            proc.stdin.write(json.dumps(obj).encode() + b"\n")
        except (BrokenPipeError, OSError, AttributeError):
            log.warning("screen overlay is not running; restarting it")
            self._proc = None
            proc = self._ensure_locked()
            proc.stdin.write(json.dumps(obj).encode() + b"\n")

    def _send(self, obj: dict) -> None:
        with self._lock:
            self._ensure_locked()
            self._send_locked(obj)

    def show(self, message: str) -> None:
        self._send({"op": "show", "message": message})

    def set_message(self, message: str) -> None:
        self._send({"op": "message", "message": message})

    def hide(self) -> None:
        self._send({"op": "hide"})

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.write(b'{"op": "quit"}\n')
                proc.stdin.close()
                proc.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- the screen


def detect_backend(environ: dict[str, str] | None = None, *, x11_socket: str = "/tmp/.X11-unix/X0",
                   compositors: Sequence[str] = ("labwc", "wayfire")) -> str:
    """wayland if a Wayland session is visible, x11 if an X display is, else headless.
    (A systemd service has no DISPLAY, hence the look for the compositor and X socket.)"""
    env = os.environ if environ is None else environ
    if env.get("WAYLAND_DISPLAY") or (compositors and _running(*compositors)):
        return "wayland"
    if env.get("DISPLAY") or (x11_socket and os.path.exists(x11_socket)):
        return "x11"
    return "headless"


def _running(*names: str) -> bool:
    try:
        import psutil

        return any(p.info["name"] in names for p in psutil.process_iter(["name"]))
    except Exception:  # noqa: BLE001 - detection is best effort
        return False


class Screen:
    """The device's screen as the report sees it.

    ``blank(message)``, ``set_message(message)``, ``unblank()``; ``is_blank``, ``message``,
    ``blank_issued_at`` (``time.perf_counter_ns()`` when the last blank was issued, for the
    latency bench).  ``when_cleared(by)`` is called when staff clear it on the device
    (the PIN), from the overlay's reader thread.
    """

    def __init__(self, backend=None):
        self.backend = backend or HeadlessBackend()
        self._lock = threading.Lock()
        self.is_blank = False
        self.message: str | None = None
        self.blank_issued_at: int | None = None
        self.when_cleared: Callable[[str], None] | None = None
        self.history: list[tuple[str, str | None]] = []  # (op, message): what a headless screen "showed"
        if isinstance(self.backend, X11Backend):
            self.backend.on_event = self._on_backend_event

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def start(self) -> None:
        start = getattr(self.backend, "start", None)
        if start is not None:
            start()

    def blank(self, message: str) -> None:
        with self._lock:
            self.blank_issued_at = time.perf_counter_ns()
            self.is_blank = True
            self.message = message
            self.history.append(("blank", message))
            try:
                self.backend.show(message)
            except Exception:  # noqa: BLE001 - the state is recorded; the report still goes out
                log.exception("screen backend %s failed to blank", self.backend.name)

    def set_message(self, message: str) -> None:
        with self._lock:
            self.message = message
            self.history.append(("message", message))
            if self.is_blank:
                try:
                    self.backend.set_message(message)
                except Exception:  # noqa: BLE001
                    log.exception("screen backend %s failed to change the message", self.backend.name)

    def unblank(self) -> None:
        with self._lock:
            self.is_blank = False
            self.message = None
            self.history.append(("unblank", None))
            try:
                self.backend.hide()
            except Exception:  # noqa: BLE001
                log.exception("screen backend %s failed to unblank", self.backend.name)

    def staff_cleared(self, by: str = "staff-pin") -> None:
        """The screen was cleared on the device itself (PIN accepted)."""
        with self._lock:
            self.is_blank = False
            self.message = None
            self.history.append(("unblank", None))
        if self.when_cleared is not None:
            self.when_cleared(by)

    def try_pin(self, pin: str, stored_hash: str | None) -> bool:
        """Headless equivalent of typing the PIN on the overlay."""
        if self.is_blank and verify_pin(pin, stored_hash):
            try:
                self.backend.hide()
            finally:
                self.staff_cleared("staff-pin")
            return True
        return False

    def _on_backend_event(self, event: dict) -> None:
        if event.get("event") == "cleared":
            self.staff_cleared(str(event.get("by") or "staff-pin"))

    def close(self) -> None:
        self.backend.close()


def make_screen(backend: str = "auto", *, session_user: str | None = None, staff_pin_hash: str | None = None,
                runner: Runner | None = None, user_fn: Callable[[], str | None] | None = None) -> Screen:
    """A Screen with the named backend ('auto' detects)."""
    if backend == "auto":
        backend = detect_backend()
        if backend == "wayland" and not shutil.which("swaylock"):
            log.warning("Wayland session but swaylock is not installed; using the X11 overlay via XWayland")
            backend = "x11"
    if backend == "wayland":
        return Screen(WaylandBackend(session_user, runner, user_fn=user_fn))
    if backend == "x11":
        return Screen(X11Backend(session_user, staff_pin_hash))
    return Screen(HeadlessBackend())
