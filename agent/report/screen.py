"""The blank screen: hide whatever upset the pupil, show a calm message, until staff clear it.

DESIGN rule 1, "blank first, network second": ``Screen.blank()`` is called on the
button's own thread before the alert touches the network, and every backend returns
without waiting on anything but a local pipe or process start.

Backends (chosen by ``make_screen``; ``screen_backend: auto`` picks the first that fits):

* ``wayland``  -- labwc/wayfire (Raspberry Pi OS): a GTK overlay on a wlr-layer-shell
                  surface above every window (agent/screen_overlay_wayland.py, on the
                  system Python), with the message and the staff PIN; swaylock if it
                  cannot run.
* ``swaylock`` -- Wayland without layer-shell: ``swaylock -c 000000`` as the session
                  user.  Secure, but no words and no PIN: staff clear from their client.
* ``x11``      -- a full-screen, always-on-top Tk overlay (agent/screen_overlay.py).
* ``headless`` -- records state and message only (servers, simulated devices, tests).

Both overlays are subprocesses started once and kept hidden, so blanking is one line
down a pipe; they run as the agent's own user so the pupil cannot kill them, ignore
Escape, Alt+F4 and Alt+Tab, and accept the staff PIN (agent/overlay.py).

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


class SwaylockBackend:
    """``swaylock -c 000000`` as the session user; clearing ends it.  The fallback for a
    Wayland compositor without layer-shell: secure (ext-session-lock) but it shows no
    words and takes no PIN, so staff clear from the teacher client.  (A pupil cannot
    unlock it: the session's password is not theirs on a kiosk.)"""

    name = "swaylock"

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

    @property
    def is_shown(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def show(self, message: str) -> None:
        if self.is_shown:
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


class OverlayBackend:
    """An overlay subprocess (agent/overlay.py's protocol: JSON lines on its stdin, events
    on its stdout), started ahead of time and kept hidden so blanking is one line down a
    pipe.  It runs as the agent's own user, not the pupil's, so the pupil cannot kill it.

    If the overlay dies while it should be showing, it is started again and told to
    show; after ``MAX_QUICK_DEATHS`` deaths within seconds of starting, ``fallback`` (if
    any) blanks instead.  When an overlay has covered the screen or been hidden, any
    overlay left by an earlier agent process (one that died mid-alert) is ended."""

    name = "overlay"
    module = ""
    MAX_QUICK_DEATHS = 3
    QUICK_SECONDS = 3.0

    def __init__(self, staff_pin_hash: str | None = None, on_event: Callable[[dict], None] | None = None):
        self.staff_pin_hash = staff_pin_hash
        self.on_event = on_event or (lambda event: None)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._wanted: str | None = None   # the message that should be up, or None
        self._closing = False
        self._quick_deaths = 0
        self.fallback = None               # a backend to blank with if the overlay cannot run
        self.fell_back = False             # the fallback is what is blanking now
        self.ready = threading.Event()
        self._state: dict | None = None
        self._state_seen = threading.Event()

    # ------------------------------------------------------------------ for subclasses
    def launch(self) -> tuple[list[str], dict[str, str]] | None:
        """(argv, env) for the overlay now, or None when there is no screen to draw on yet."""
        raise NotImplementedError

    def stale(self) -> bool:
        """True when the running overlay is drawing on the wrong display (a new login)."""
        return False

    # ------------------------------------------------------------------ process
    def start(self) -> None:
        """Start the overlay hidden, so a press only has to write one line."""
        with self._lock:
            self._ensure_locked()

    def _ensure_locked(self) -> subprocess.Popen | None:
        if self._proc is not None and self._proc.poll() is None and not self.stale():
            return self._proc
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # its display has gone (a new login); no time to be gentle on a press
        launch = self.launch()
        if launch is None:
            self._proc = None
            return None
        argv, env = launch
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = here + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
        self.ready.clear()
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=None, bufsize=0, start_new_session=True)
        except OSError as exc:
            log.error("cannot start the screen overlay %s: %s", argv[0], exc)
            self._proc = None
            return None
        proc.started_at = time.monotonic()
        self._proc = proc
        threading.Thread(target=self._read, args=(proc,), name=f"{self.name}-overlay-reader", daemon=True).start()
        self._write(proc, {"op": "config", "pin_hash": self.staff_pin_hash})
        return proc

    @staticmethod
    def _write(proc: subprocess.Popen, obj: dict) -> bool:
        try:
            proc.stdin.write(json.dumps(obj).encode() + b"\n")
            return True
        except (BrokenPipeError, OSError, AttributeError, ValueError):
            return False

    def _send(self, obj: dict) -> bool:
        with self._lock:
            proc = self._ensure_locked()
            if proc is not None and self._write(proc, obj):
                return True
            log.warning("screen overlay is not running; starting it again")
            self._proc = None
            proc = self._ensure_locked()
            return proc is not None and self._write(proc, obj)

    def _read(self, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                log.warning("overlay said something unexpected: %r", raw[:80])
                continue
            kind = event.get("event")
            if kind == "ready":
                self.ready.set()
            elif kind == "state":
                self._state = {k: v for k, v in event.items() if k != "event"}
                self._state_seen.set()
            elif kind in ("shown", "hidden"):
                self._quick_deaths = 0
                self._end_strays(keep=proc.pid)
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a callback bug must not kill the reader
                log.exception("overlay event handler failed")
        code = proc.wait()
        log.info("screen overlay exited (%s)", code)
        self._died(proc)

    def _died(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if self._closing or self._proc is not proc or self._wanted is None:
                return
            self._proc = None
            if time.monotonic() - getattr(proc, "started_at", 0) < self.QUICK_SECONDS:
                self._quick_deaths += 1
            wanted = self._wanted
        if self._quick_deaths >= self.MAX_QUICK_DEATHS and self.fallback is not None:
            log.error("the %s overlay keeps failing; blanking with %s instead", self.name, self.fallback.name)
            self._fall_back(wanted)
            return
        if self._quick_deaths:
            time.sleep(min(2.0, 0.25 * self._quick_deaths))  # not a hot loop if it cannot start
        log.warning("the screen overlay died while showing; showing it again")
        if not self._send({"op": "show", "message": wanted}) and self.fallback is not None:
            self._fall_back(wanted)

    def _end_strays(self, keep: int) -> None:
        """End overlays of ours left running by an earlier agent process."""
        try:
            import psutil

            me = os.getuid()
            for p in psutil.process_iter(["pid", "uids", "cmdline"]):
                cmd = p.info["cmdline"] or []
                if p.info["pid"] != keep and p.info["uids"] and p.info["uids"].real == me \
                        and self.module in cmd and "-m" in cmd:
                    log.info("ending a screen overlay left by an earlier agent (pid %s)", p.info["pid"])
                    p.terminate()
        except Exception:  # noqa: BLE001 - tidying is best effort
            log.debug("could not look for stray overlays", exc_info=True)

    def _fall_back(self, message: str) -> None:
        self.fell_back = True
        self.fallback.show(message)

    def drawn(self, timeout: float = 5.0) -> dict | None:
        """What the overlay's widgets show now (``shown``, ``message``, ``hint``), asked of
        the overlay itself; None if it does not answer.  For ``status`` and tests."""
        self._state_seen.clear()
        if not self._send({"op": "state"}) or not self._state_seen.wait(timeout):
            return None
        return self._state

    # ------------------------------------------------------------------ backend interface
    def show(self, message: str) -> None:
        self._wanted = message
        if not self._send({"op": "show", "message": message}) and self.fallback is not None:
            log.error("no screen overlay; blanking with %s", self.fallback.name)
            self._fall_back(message)

    def set_message(self, message: str) -> None:
        self._wanted = message
        self._send({"op": "message", "message": message})

    def hide(self) -> None:
        self._wanted = None
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._write(proc, {"op": "hide"})
        if self.fallback is not None:
            self.fallback.hide()
            self.fell_back = False

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        try:
            proc.stdin.write(b'{"op": "quit"}\n')
            proc.stdin.close()
            proc.wait(timeout=3)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._stop(proc)
        if self.fallback is not None:
            self.fallback.close()


class X11Backend(OverlayBackend):
    """The Tk overlay (agent/screen_overlay.py) on the X display.  The session lets the
    agent's user draw with ``xhost +SI:localuser:<agent user>`` (scripts/session-grant.sh).
    (``session_user`` is accepted for symmetry with the other backends.)"""

    name = "x11"
    module = "agent.screen_overlay"

    def __init__(self, session_user: str | None = None, staff_pin_hash: str | None = None,
                 display: str | None = None, on_event: Callable[[dict], None] | None = None):
        super().__init__(staff_pin_hash, on_event)
        self.session_user = session_user
        self.display = display or os.environ.get("DISPLAY") or ":0"

    def launch(self) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-m", self.module], _session_env(None, {"DISPLAY": self.display})


OVERLAY_PYTHON = "/usr/bin/python3"   # Debian's python3-gi and gir1.2-gtklayershell-0.1 live here


def wayland_overlay_available(python: str = OVERLAY_PYTHON) -> bool:
    """Whether the GTK layer-shell overlay can run (its Python and typelib are installed)."""
    import glob

    return os.access(python, os.X_OK) and bool(
        glob.glob("/usr/lib/*/girepository-1.0/GtkLayerShell-0.1.typelib")
        + glob.glob("/usr/lib/girepository-1.0/GtkLayerShell-0.1.typelib"))


class WaylandBackend(OverlayBackend):
    """The GTK layer-shell overlay (agent/screen_overlay_wayland.py) on the session's
    Wayland socket, with the calm message and the staff PIN.  It runs on the system
    Python as the agent's own user; the session lets that user reach its socket with an
    ACL (scripts/session-grant.sh).  Falls back to swaylock if the overlay cannot run."""

    name = "wayland"
    module = "agent.screen_overlay_wayland"

    def __init__(self, session_user: str | None = None, staff_pin_hash: str | None = None, *,
                 wayland_display: str | None = None, user_fn: Callable[[], str | None] | None = None,
                 python: str = OVERLAY_PYTHON, runner: Runner | None = None,
                 on_event: Callable[[dict], None] | None = None):
        super().__init__(staff_pin_hash, on_event)
        self.session_user = session_user
        self.user_fn = user_fn or (lambda: None)
        self.wayland_display = wayland_display or os.environ.get("WAYLAND_DISPLAY") or "wayland-0"
        self.python = python
        self.fallback = SwaylockBackend(session_user, runner, wayland_display=self.wayland_display, user_fn=user_fn)
        self._socket: str | None = None
        self._private_dir: str | None = None

    def socket_path(self) -> str | None:
        """The session's Wayland socket: absolute already, or in the session user's
        runtime dir (the named one, else the first ``wayland-N`` there)."""
        if os.path.isabs(self.wayland_display):
            return self.wayland_display if os.path.exists(self.wayland_display) else None
        user = self.session_user or self.user_fn()
        runtime_dir = None
        if user:
            try:
                runtime_dir = f"/run/user/{pwd.getpwnam(user).pw_uid}"
            except KeyError:
                log.warning("session user %r does not exist", user)
        runtime_dir = runtime_dir or os.environ.get("XDG_RUNTIME_DIR")
        if not runtime_dir:
            return None
        named = os.path.join(runtime_dir, self.wayland_display)
        if os.path.exists(named):
            return named
        try:
            found = sorted(n for n in os.listdir(runtime_dir) if n.startswith("wayland-") and not n.endswith(".lock"))
        except OSError:
            return None
        return os.path.join(runtime_dir, found[0]) if found else None

    def stale(self) -> bool:
        # One stat on the press path: a compositor that has gone took its socket with it
        # (and the overlay with it, as GTK exits when its display goes).  Finding the new
        # session's socket is launch()'s job, not every blank's.
        return self._socket is None or not os.path.exists(self._socket)

    def launch(self) -> tuple[list[str], dict[str, str]] | None:
        self._socket = self.socket_path()
        if self._socket is None:
            return None
        if self._private_dir is None:
            import tempfile

            # GTK wants an XDG_RUNTIME_DIR of its own; the pupil's is not ours to write.
            # Under systemd that is in RuntimeDirectory= (the rest of the disk is read-only).
            self._private_dir = tempfile.mkdtemp(prefix="overlay-", dir=os.environ.get("RUNTIME_DIRECTORY") or None)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WAYLAND_DISPLAY": self._socket,
               "XDG_RUNTIME_DIR": self._private_dir, "GDK_BACKEND": "wayland",
               "GSETTINGS_BACKEND": "memory", "NO_AT_BRIDGE": "1", "HOME": self._private_dir}
        return [self.python, "-m", self.module], env

    def close(self) -> None:
        super().close()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None


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
        if isinstance(self.backend, OverlayBackend):
            self.backend.on_event = self._on_backend_event

    @property
    def backend_name(self) -> str:
        if getattr(self.backend, "fell_back", False):
            return f"{self.backend.name} (fallback: {self.backend.fallback.name})"
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
    if backend == "wayland" and not wayland_overlay_available():
        log.warning("the Wayland overlay needs python3-gi and gir1.2-gtklayershell-0.1; "
                    "blanking with swaylock, which shows no message and takes no PIN")
        backend = "swaylock"
    if backend == "swaylock" and not shutil.which("swaylock"):
        log.warning("swaylock is not installed; using the X11 overlay via XWayland")
        backend = "x11"
    if backend == "wayland":
        return Screen(WaylandBackend(session_user, staff_pin_hash, user_fn=user_fn, runner=runner))
    if backend == "swaylock":
        return Screen(SwaylockBackend(session_user, runner, user_fn=user_fn))
    if backend == "x11":
        return Screen(X11Backend(session_user, staff_pin_hash))
    return Screen(HeadlessBackend())
