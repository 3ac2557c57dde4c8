"""The lock component: idle lock, out-of-hours lock and staff lock/unlock on a device.

Glue between the runtime (policy, commands, events, clock) and agent/lock.py (state and
backends) and agent/idle.py.  Everything happens on the runtime's queue thread: ``tick``
runs from a runtime timer when the next idle check is due (``threshold - idle`` away, so
an active desktop costs one check per lock period), or at once when a backend reports
something (the user unlocked, the staff PIN was typed).  It returns the seconds until it
next needs to run, so tests drive it with a fake clock and no sleeping.

Events: ``lock`` {reason, by, mode, user} and ``unlock`` {reason, by, user}.
"""

from __future__ import annotations

import logging

from .lock import SESSION_MODE, LockDecision, LockState, make_lock

log = logging.getLogger(__name__)

__all__ = ["LockComponent"]

MAX_SLEEP = 60.0  # re-check at least this often (policy, clock jumps, a dead idle watcher)
LOCKED_POLL = 5.0  # while locked, how often to ask the backend whether the user is back


class LockComponent:
    name = "lock"

    def __init__(self, backend=None, idle=None, session_fn=None, backend_kind: str | None = None):
        self.backend = backend
        self.idle = idle
        self.session_fn = session_fn
        self.backend_kind = backend_kind
        self.state = LockState()
        self.current: LockDecision | None = None
        self.policy = None
        self.runtime = None
        self._timer = None
        self._stopped = False

    # ------------------------------------------------------------------ runtime contract
    def start(self, runtime) -> None:
        self.runtime = runtime
        if self.session_fn is None:
            self.session_fn = self._default_session
        kind = self.backend_kind or getattr(runtime.bootstrap, "screen_backend", "headless") or "headless"
        if kind == "auto":
            from .screen import detect_backend

            kind = detect_backend()
        if self.idle is None:
            from .idle import make_idle

            self.idle = make_idle(kind, clock=runtime.clock, session_fn=self.session_fn)
        if self.backend is None:
            self.backend = make_lock(kind, session_fn=self.session_fn,
                                     staff_pin_hash=getattr(runtime.bootstrap, "staff_pin_hash", None),
                                     idle_fn=self.idle.idle_seconds)
        for source in (self.backend, self.idle):
            if hasattr(source, "when_changed"):
                source.when_changed = self.wake
        if runtime.policy is not None:
            self.on_policy(runtime.policy)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        for part in (self.idle, self.backend):
            try:
                part.close()
            except Exception:  # noqa: BLE001 - stopping must finish
                log.exception("closing %s failed", part)

    def on_policy(self, policy) -> None:
        self.policy = policy
        now = self.runtime.clock()
        self.state.set_schedule(policy.locked, policy.lock_reason, now)
        if self.idle is not None:
            self.idle.set_timeout(self._threshold())
        self.tick()

    def on_command(self, cmd: dict) -> bool:
        name = cmd.get("cmd")
        if name == "lock":
            self.state.staff_lock(str(cmd.get("by") or "staff"))
            self._apply()
            return True
        if name == "unlock":
            by = str(cmd.get("by") or "staff")
            self.state.staff_unlock(self.runtime.clock(), getattr(self.policy, "next_change", None))
            self._apply(unlock_reason="staff", unlock_by=by)
            return True
        return False

    # ------------------------------------------------------------------ work
    def wake(self) -> None:
        """From any thread: run tick soon (a backend or idle watcher saw something)."""
        if not self._stopped and self.runtime is not None:
            self.runtime.post(self.tick)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if self._stopped else self.runtime.call_later(delay, self.tick)

    def _threshold(self) -> int:
        return int(getattr(self.policy, "idle_lock_minutes", 0) or 0) * 60

    def _user(self) -> str | None:
        try:
            return self.runtime.current_user()
        except Exception:  # noqa: BLE001 - unknown user is fine in an event
            return None

    def _default_session(self):
        for component in getattr(self.runtime, "components", []) or []:
            if getattr(component, "name", None) == "sessions":
                return component.desktop()
        from .sessions import pick_desktop, read_sessions

        return pick_desktop(read_sessions(), getattr(self.runtime.bootstrap, "session_user", None))

    def tick(self) -> float:
        """Check the backend and the idle time; apply; return seconds until the next check."""
        if self.policy is None or self.backend is None:
            return MAX_SLEEP
        now = self.runtime.clock()
        unlock_reason = unlock_by = None
        back = self.backend.poll()
        if back is not None:
            reason, by = back
            if reason == "staff_pin":
                self.state.staff_unlock(now, getattr(self.policy, "next_change", None))
            else:
                self.state.idle = False
            unlock_reason, unlock_by = reason, by
        threshold = self._threshold()
        idle = self.idle.idle_seconds() if self.idle is not None else None
        delay = MAX_SLEEP
        # Idle only matters on an otherwise unlocked device: a night under the timetable
        # lock must not leave an idle lock waiting for the morning.
        if threshold and idle is not None and self.state.decide(now) is None:
            if back is None and idle >= threshold:
                self.state.idle = True
            else:
                delay = min(MAX_SLEEP, max(1.0, threshold - idle))
        self._apply(unlock_reason=unlock_reason, unlock_by=unlock_by)
        if self.current is not None:
            delay = LOCKED_POLL
        elif self.state.override_until is not None:
            # A staff unlock of a timetable lock ends on the dot, not up to a minute late.
            delay = max(0.0, min(delay, (self.state.override_until - self.runtime.clock()).total_seconds()))
        self._schedule(delay)
        return delay

    def _apply(self, unlock_reason: str | None = None, unlock_by: str | None = None) -> None:
        want = self.state.decide(self.runtime.clock())
        have = self.current
        if want == have:
            return
        if want is None:
            self.current = None
            try:
                self.backend.unlock()
            finally:
                reason = unlock_reason or ("schedule" if have and have.mode != SESSION_MODE else "staff")
                by = unlock_by or ("schedule" if reason == "schedule" else "staff")
                self.runtime.emit_event("unlock", reason=reason, by=by, user=self._user(),
                                        previous=have.reason if have else None)
            return
        messages = getattr(self.policy, "messages", {}) or {}
        self.current = want
        if have is not None and (have.mode, have.by) == (want.mode, want.by):
            # Friday evening becomes the weekend becomes half term: one lock, not three.
            return
        try:
            self.backend.lock(want.mode, messages.get(want.message_key) or messages.get("locked") or "")
        finally:
            self.runtime.emit_event("lock", reason=want.reason, by=want.by, mode=want.mode, user=self._user())

    @property
    def is_locked(self) -> bool:
        return self.current is not None
