"""The overlay child process, from the agent's side: start it, talk to it, keep it alive.

An overlay is a full-screen window in a process of its own (agent/desktop/programs/:
Tk on X11, GTK layer-shell on Wayland), started ahead of time and kept hidden, so
blanking is one line down a pipe.  The conversation is JSON lines both ways
(programs/overlay_core.py has the protocol).  ``OverlayBackend`` is the part the X11
and Wayland backends share; they say only how to launch theirs.

It runs as the agent's own user, not the pupil's, so the pupil cannot kill it
(agent/desktop/session.py: which user runs what).  If it dies while it should be
showing it is started again and told to show; after ``MAX_QUICK_DEATHS`` deaths within
seconds of starting, ``fallback`` (swaylock on Wayland) blanks instead.  When an overlay
has covered the screen or been hidden, any overlay left by an earlier agent process (one
that died mid-alert) is ended.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from .base import ScreenBackend

log = logging.getLogger(__name__)

# The directory that holds the ``agent`` package (the checkout, or site-packages): the
# overlays run as ``python -m agent.desktop.programs.X``, the Wayland one on Debian's
# own python3, which knows nothing of the agent's virtualenv.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def child_env(env: dict[str, str]) -> dict[str, str]:
    """*env* with PYTHONPATH leading to this ``agent`` package, for a child program."""
    inherited = os.environ.get("PYTHONPATH")
    return {**env, "PYTHONPATH": PACKAGE_ROOT + (os.pathsep + inherited if inherited else "")}


class OverlayBackend(ScreenBackend):
    """An overlay subprocess; subclasses give ``launch()`` (and ``stale()``).

    ``on_event(event)`` sees every event the overlay says (its reader thread);
    ``when_cleared(by)`` is called when the staff PIN cleared it.  ``drawn()`` asks the
    overlay what its widgets show now."""

    name = "overlay"
    module = ""
    MAX_QUICK_DEATHS = 3
    QUICK_SECONDS = 3.0

    def __init__(self, staff_pin_hash: str | None = None, on_event: Callable[[dict], None] | None = None):
        super().__init__()
        self.staff_pin_hash = staff_pin_hash
        self.on_event = on_event or (lambda event: None)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._wanted: str | None = None   # the message that should be up, or None
        self._closing = False
        self._quick_deaths = 0
        self.fallback: ScreenBackend | None = None  # blanks if the overlay cannot run
        self.fell_back = False                      # the fallback is what is blanking now
        self.ready = threading.Event()
        self._state: dict | None = None
        self._state_seen = threading.Event()

    @property
    def description(self) -> str:
        if self.fell_back and self.fallback is not None:
            return f"{self.name} (fallback: {self.fallback.name})"
        return self.name

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
        self.ready.clear()
        try:
            proc = subprocess.Popen(argv, env=child_env(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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
                if kind == "cleared" and self.when_cleared is not None:
                    self.when_cleared(str(event.get("by") or "staff-pin"))
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

    # ------------------------------------------------------------------ ScreenBackend
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
