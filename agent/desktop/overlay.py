"""The overlay child process, from the agent's side: start it, talk to it, keep it up.

An overlay is a full-screen window in a process of its own (agent/desktop/programs/:
Tk on X11, GTK layer-shell on Wayland), started ahead of time and kept hidden, so
blanking is one line down a pipe.  The conversation is JSON lines both ways
(programs/overlay_core.py has the protocol).  ``OverlayBackend`` is the part the X11
and Wayland backends share; they say only how to launch theirs.

It runs as the agent's own user, not the pupil's, so the pupil cannot kill or signal it
(agent/desktop/session.py: which user runs what).  What the pupil's own programs can
still do is what the display lets any client do (on X11: unmap, move, resize, restack or
disconnect any window), so while it should be showing it is held up three ways:

* the overlay checks its own window continuously and puts it back (programs/x11_watch.py
  on X11) and says ``tampered``;
* the agent asks it every ``WATCH_SECONDS`` what it shows: an overlay that says it is not
  shown is told to show again, one that does not answer within ``ANSWER_SECONDS`` (hung,
  or held off by a server grab) is ended and started again;
* one that dies is started again and told to show; after ``MAX_DEATHS`` deaths within
  ``DEATH_WINDOW`` seconds (or ``MAX_RESTORES`` put-backs: someone is fighting it)
  ``fallback`` covers the screen as well (swaylock on Wayland, the display manager's lock
  on X11), and the watch keeps trying to bring the overlay back.

Every one of these is reported through ``when_tampered(fields)`` (the guard sends it as a
``tamper`` event), at most once per kind and action every ``REPORT_SECONDS`` (the next
report counts the ones left out in ``repeats``).  A wrong staff PIN
typed on the overlay updates the device's ``PinBackoffFile`` (agent/desktop/pin.py),
which every overlay is given when it starts and on every show; every
``PinBackoff.REPORT_EVERY``-th wrong try in a row is reported too.  Words that say no PIN
(``Words.pin``: the DSL's hold) go with ``"pin": false``, and the overlay takes none.

When an overlay has covered the screen or been hidden, any overlay left by an earlier
agent process (one that died mid-alert) is ended.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from .base import ScreenBackend, picture_of, pin_allowed
from .pin import PinBackoff, PinBackoffFile

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
    ``when_cleared(by)`` is called when the staff PIN cleared it; ``when_tampered(fields)``
    when it had to be put back.  ``drawn()`` asks the overlay what its widgets show now."""

    name = "overlay"
    module = ""
    MAX_DEATHS = 3           # deaths while showing, within DEATH_WINDOW: hand over to the fallback
    DEATH_WINDOW = 60.0
    MAX_RESTORES = 6         # put-backs within DEATH_WINDOW: someone is fighting it
    WATCH_SECONDS = 1.0      # how often a shown overlay is asked what it shows
    ANSWER_SECONDS = 3.0     # no answer in this long: hung, or held off the display
    FALLBACK_RETRY = 30.0    # while fallen back: engage the fallback again at most this often
    RETRY_SECONDS = 5.0      # while fallen back: try to bring the overlay back this often
    REPORT_SECONDS = 10.0    # one tamper report per kind in this long (the rest are counted)
    TAMPER_PREFIX = "overlay_"  # tamper reports say what: overlay_unmapped, overlay_moved...

    def __init__(self, staff_pin_hash: str | None = None, on_event: Callable[[dict], None] | None = None,
                 pin_backoff: PinBackoffFile | None = None):
        super().__init__()
        self.staff_pin_hash = staff_pin_hash
        self.on_event = on_event or (lambda event: None)
        self.pin_backoff = pin_backoff if pin_backoff is not None else PinBackoffFile(None)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._wanted: str | None = None   # the message that should be up, or None
        self._closing = False
        self._deaths: collections.deque[float] = collections.deque()
        self._restores: collections.deque[float] = collections.deque()
        self._reported: dict[str, tuple[float, int]] = {}  # what -> (last report, repeats since)
        self.fallback: ScreenBackend | None = None  # covers the screen when the overlay cannot
        # The on-screen report button (agent/desktop/button.py) hides while this covers the
        # screen: ``companion(self, True)`` as it shows, ``(self, False)`` once hidden; and
        # ``ignore_windows()``: its X window, which the X11 overlay must not call covering it.
        self.companion: Callable[[object, bool], None] | None = None
        self.ignore_windows: Callable[[], list[int]] = lambda: []
        self.fell_back = False                      # the fallback is engaged now
        self._fell_back_at = 0.0
        self._last_retry = 0.0
        self.ready = threading.Event()
        self._state: dict | None = None
        self._state_cond = threading.Condition()
        self._state_asked = 0
        self._state_got = 0
        self._wake = threading.Event()
        self._watch: threading.Thread | None = None

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

    def display_alive(self) -> bool:
        """False when the display itself has gone (a logout): an overlay dying then is no tamper."""
        return True

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
        self._write(proc, {"op": "config", "pin_hash": self.staff_pin_hash, "backoff": self.pin_backoff.snapshot()})
        return proc

    @staticmethod
    def _write(proc: subprocess.Popen, obj: dict) -> bool:
        try:
            proc.stdin.write(json.dumps(obj).encode() + b"\n")
            return True
        except (BrokenPipeError, OSError, AttributeError, ValueError):
            return False

    def _send_locked(self, obj: dict) -> bool:
        proc = self._ensure_locked()
        if proc is not None and self._write(proc, obj):
            return True
        log.warning("screen overlay is not running; starting it again")
        self._proc = None
        proc = self._ensure_locked()
        return proc is not None and self._write(proc, obj)

    def _send(self, obj: dict) -> bool:
        with self._lock:
            return self._send_locked(obj)

    def _show_op(self, message: str) -> dict:
        return {"op": "show", "message": message, "picture": picture_of(message), "pin": pin_allowed(message),
                "backoff": self.pin_backoff.snapshot(), "ignore": self._ignored()}

    def _ignored(self) -> list[int]:
        try:
            return list(self.ignore_windows())
        except Exception:  # noqa: BLE001 - the button is a nicety; the blank is not
            return []

    def _cover(self, covering: bool) -> None:
        companion = self.companion
        if companion is not None:
            try:
                companion(self, covering)
            except Exception:  # noqa: BLE001 - the button must never stop a blank
                log.exception("the on-screen button did not follow the %s overlay", self.name)

    def _reshow(self) -> bool:
        """Show what is wanted again, unless it stopped being wanted meanwhile."""
        with self._lock:
            if self._wanted is None or self._closing:
                return True
            return self._send_locked(self._show_op(self._wanted))

    def _read(self, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                log.warning("overlay said something unexpected: %r", raw[:80])
                continue
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind == "ready":
                self.ready.set()
            elif kind == "state":
                with self._state_cond:
                    self._state = {k: v for k, v in event.items() if k not in ("event", "seq")}
                    seq = event.get("seq")
                    self._state_got = seq if isinstance(seq, int) else self._state_asked
                    self._state_cond.notify_all()
            elif kind in ("shown", "hidden"):
                self._end_strays(keep=proc.pid)
            elif kind in ("pin_wrong", "cleared") and isinstance(event.get("backoff"), dict):
                backoff = self.pin_backoff.update(event["backoff"])
                if kind == "pin_wrong" and backoff.should_report:
                    self._tampered("pin_failures", "reported", failures=backoff.failures,
                                   wait_seconds=round(backoff.wait(time.time())))
            elif kind == "tampered":
                what = [str(w) for w in event.get("what") or []][:8]
                self._tampered(self.TAMPER_PREFIX + "_".join(what or ["changed"]), "restored")
                self._count_restore()
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
            if self._closing or self._proc is not proc:
                return
            self._proc = None
            wanted = self._wanted
        if wanted is None:
            return  # started again at the next show
        if not self.display_alive():
            log.info("the display the overlay drew on has gone (a logout); waiting for the next one")
            return
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.DEATH_WINDOW:
            self._deaths.popleft()
        if len(self._deaths) >= self.MAX_DEATHS and self.fallback is not None:
            self._tampered(self.TAMPER_PREFIX + "ended", "fallback", exit=proc.returncode)
            self._fall_back(wanted)
            return
        self._tampered(self.TAMPER_PREFIX + "ended", "restarted", exit=proc.returncode)
        if len(self._deaths) > 1:
            time.sleep(min(2.0, 0.25 * len(self._deaths)))  # not a hot loop if it cannot start
        log.warning("the screen overlay ended while showing; showing it again")
        if not self._reshow() and self.fallback is not None:
            self._fall_back(wanted)

    def _count_restore(self) -> None:
        now = time.monotonic()
        self._restores.append(now)
        while self._restores and now - self._restores[0] > self.DEATH_WINDOW:
            self._restores.popleft()
        wanted = self._wanted
        if len(self._restores) >= self.MAX_RESTORES and wanted is not None and self.fallback is not None \
                and not self.fell_back:
            self._tampered(self.TAMPER_PREFIX + "fought", "fallback", restores=len(self._restores))
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
        now = time.monotonic()
        if self.fell_back and now - self._fell_back_at < self.FALLBACK_RETRY:
            return  # engaged a moment ago; a display-manager lock must not be started every second
        log.error("the %s overlay cannot hold the screen; covering it with %s as well", self.name, self.fallback.name)
        self.fell_back = True
        self._fell_back_at = now
        try:
            self.fallback.show(message)
        except Exception:  # noqa: BLE001 - the overlay is still tried by the watch
            log.exception("the %s fallback failed", self.fallback.name)

    # ------------------------------------------------------------------ tamper reports
    def _tampered(self, what: str, action: str, **details) -> None:
        """Report *what* happened (``action``: what was done about it), rate-limited per kind."""
        now = time.monotonic()
        key = f"{what}:{action}"
        last, repeats = self._reported.get(key, (None, 0))
        if last is not None and now - last < self.REPORT_SECONDS and what != "pin_failures":
            self._reported[key] = (last, repeats + 1)
            return
        self._reported[key] = (now, 0)
        fields = {"what": what, "action": action, **details}
        if repeats:
            fields["repeats"] = repeats
        log.warning("screen tamper: %s", fields)
        callback = self.when_tampered
        if callback is not None:
            try:
                callback(fields)
            except Exception:  # noqa: BLE001 - reporting must not stop the restoring
                log.exception("tamper report failed")

    # ------------------------------------------------------------------ the watch
    def _start_watch(self) -> None:
        if self._watch is None or not self._watch.is_alive():
            self._watch = threading.Thread(target=self._watch_loop, name=f"{self.name}-overlay-watch", daemon=True)
            self._watch.start()
        self._wake.set()

    def _watch_loop(self) -> None:
        unanswered = 0
        while not self._closing:
            self._wake.wait(self.WATCH_SECONDS if self._wanted is not None else None)
            self._wake.clear()
            if self._closing or self._wanted is None:
                unanswered = 0
                continue
            try:
                unanswered = self._watch_once(unanswered)
            except Exception:  # noqa: BLE001 - the watch must keep watching
                log.exception("overlay watch failed")

    def _watch_once(self, unanswered: int) -> int:
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            # Nothing running and the reader is not starting one: it could not start, or
            # it was handed over to the fallback.  Try again (gently, once fallen back),
            # and engage the fallback again while the overlay cannot hold the screen.
            if proc is None and self.display_alive() and (
                    not self.fell_back or time.monotonic() - self._last_retry >= self.RETRY_SECONDS):
                self._last_retry = time.monotonic()
                if not self._reshow() and self.fallback is not None and self._wanted is not None:
                    self._fall_back(self._wanted)
            return 0
        state = self.drawn(timeout=self.ANSWER_SECONDS)
        if self._wanted is None:
            return 0
        if state is None:
            if proc.poll() is None:
                unanswered += 1
                if unanswered >= 2:
                    self._tampered(self.TAMPER_PREFIX + "unresponsive", "restarted")
                    proc.kill()  # the reader sees it end and starts it again
                    return 0
            return unanswered
        if not state.get("shown"):
            self._tampered(self.TAMPER_PREFIX + "hidden", "restored")
            self._count_restore()
            self._reshow()
        return 0

    def drawn(self, timeout: float = 5.0) -> dict | None:
        """What the overlay's widgets show now (``shown``, ``message``, ``hint``), asked of
        the overlay itself; None if it does not answer.  For the watch, ``status`` and tests."""
        with self._state_cond:
            self._state_asked += 1
            seq = self._state_asked
        if not self._send({"op": "state", "seq": seq}):
            return None
        deadline = time.monotonic() + timeout
        with self._state_cond:
            while self._state_got < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._state_cond.wait(left)
            return dict(self._state or {})

    # ------------------------------------------------------------------ ScreenBackend
    def show(self, message: str) -> None:
        with self._lock:
            self._wanted = message
            sent = self._send_locked(self._show_op(message))
        self._cover(True)  # after our own line: the blank comes first
        self._start_watch()
        if not sent and self.fallback is not None:
            log.error("no screen overlay; blanking with %s", self.fallback.name)
            self._fall_back(message)

    def set_message(self, message: str) -> None:
        with self._lock:
            self._wanted = message
            self._send_locked({"op": "message", "message": message, "picture": picture_of(message),
                               "pin": pin_allowed(message)})

    def hide(self) -> None:
        with self._lock:
            self._wanted = None
            proc = self._proc
            if proc is not None and proc.poll() is None:
                self._write(proc, {"op": "hide"})
        self._deaths.clear()
        self._restores.clear()
        if self.fallback is not None:
            self.fallback.hide()
            self.fell_back = False
        self._cover(False)

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
        self._wake.set()
        if proc is not None and proc.poll() is None:
            self._stop(proc)
        if self.fallback is not None:
            self.fallback.close()
