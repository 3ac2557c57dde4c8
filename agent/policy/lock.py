"""The lock: idle lock, out-of-hours lock, staff lock/unlock and the DSL's hold on a device.

Four reasons can hold a device locked at once, layered (``LockState``):

* **hold** -- the DSL's hold on an incident's device (policy 000 §11.4: quarantine until
  police advice has been sought): a ``hold`` command from the collector, lifted only by its
  ``release``.  A teacher's ``unlock`` and the staff PIN are refused (an ``unlock_refused``
  event each): the lock screen's words say no PIN (``Words.pin``), so the overlays take
  none, and a backend that lets go anyway is locked again at once.  Kept in
  ``state_dir/holds.json`` (written durably), so it survives an agent restart and a reboot;
  the collector also sends it again whenever the device reconnects (server/holds.py), so a
  device whose state was lost is held again at once.  A teacher's ``lock`` meanwhile goes
  underneath it, as do the timetable and idle locks.
* **staff** -- a ``lock`` command from a teacher; only a staff ``unlock`` (or the staff
  PIN on an X11 overlay) lifts it, or its own time: a lock with ``minutes`` ("Eyes on me",
  1 to 60) unlocks itself then, and one with ``message`` shows the teacher's words instead
  of the key stage's.
* **schedule** -- the timetable (``policy.locked``: out of hours, weekends, holidays,
  closures, locked room slots).  Lifts when the timetable says so, or for a while after
  a staff ``unlock`` (``STAFF_OVERRIDE``, never past the next timetable change).
* **idle** -- no input for ``policy.idle_lock_minutes``; lifted by the user's own
  session login (the normal unlock), or by staff.

Staff and schedule locks use a backend's *staff* mode: nothing a pupil knows lifts it.
Idle uses *session* mode: the desktop's own locker, unlocked with the user's password.
The backends (swaylock, the X11 overlay, LightDM's greeter, headless) and the idle
sources are the desktop's (agent/desktop/), the ones the runtime built unless given.

``LockComponent`` is the glue between the runtime (policy, commands, events, clock) and
them.  Everything happens on the runtime's queue thread: ``tick`` runs from a runtime
timer when the next idle check is due (``threshold - idle`` away, so an active desktop
costs one check per lock period), or at once when a backend reports something (the user
unlocked, the staff PIN was typed).  It returns the seconds until it next needs to run,
so tests drive it with a fake clock and no sleeping.

Events: ``lock`` {reason, by, mode, user; a hold adds ``hold_id``, ``incident``; a
teacher's timed lock adds ``until``}, ``unlock`` {reason, by, user; ``hold_lifted`` when the
last hold is released, ``expired`` when a timed lock ran out} and ``unlock_refused`` {by,
how, holds} (a teacher's unlock or the staff PIN under a hold; the teacher's ``unlock`` is
also answered ``refused`` in its ``cmd_result``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ..desktop.base import SESSION_MODE, STAFF_MODE, IdleSource, LockBackend, Words
from ..files import atomic_write
from ..protocol import CommandRefused, now_ts

if TYPE_CHECKING:
    from ..core.interfaces import RuntimeAPI

log = logging.getLogger(__name__)

__all__ = ["LockComponent", "LockDecision", "LockState", "STAFF_OVERRIDE"]

# A staff unlock during a timetable lock (an after-school club in a room without an
# "open" slot) lasts this long at most, so a forgotten device locks again by itself.
STAFF_OVERRIDE = timedelta(hours=1)

HOLDS_FILE = "holds.json"


@dataclass(frozen=True)
class LockDecision:
    reason: str  # hold | staff | idle | out_of_hours | weekend | holiday | closure | schedule
    by: str
    mode: str  # staff | session
    message_key: str  # key of policy.messages to show
    message: str | None = None  # a teacher's own words for their lock, instead of the key's
    until: datetime | None = None  # a teacher's timed lock unlocks itself then


class LockState:
    """The layered lock reasons; pure (no clock read, no I/O) so a fake clock can drive it."""

    def __init__(self) -> None:
        self.holds: dict[str, dict] = {}   # hold id -> {"by", "incident", "since"}: the DSL's
        self.staff_by: str | None = None
        self.staff_until: datetime | None = None
        self.staff_message: str | None = None
        self.idle = False
        self.schedule_reason: str | None = None
        self.override_until: datetime | None = None

    def set_schedule(self, locked: bool, reason: str | None, now: datetime) -> None:
        self.schedule_reason = (reason or "schedule") if locked else None
        if not locked:
            self.override_until = None  # the timetable opened by itself; no override needed

    def staff_lock(self, by: str, until: datetime | None = None, message: str | None = None) -> None:
        self.staff_by, self.staff_until, self.staff_message = by, until, message

    def staff_expired(self, now: datetime) -> str | None:
        """End a timed staff lock whose time is up; returns who had set it (else None).
        Only the staff layer ends: an idle or timetable lock underneath stays."""
        if self.staff_by is None or self.staff_until is None or now < self.staff_until:
            return None
        by = self.staff_by
        self.staff_by = self.staff_until = self.staff_message = None
        return by

    def staff_unlock(self, now: datetime, next_change: datetime | None) -> None:
        self.staff_by = self.staff_until = self.staff_message = None
        self.idle = False
        if self.schedule_reason is not None:
            until = now + STAFF_OVERRIDE
            if next_change is not None and next_change < until:
                until = next_change
            self.override_until = until

    def schedule_applies(self, now: datetime) -> bool:
        if self.schedule_reason is None:
            return False
        if self.override_until is not None and now < self.override_until:
            return False
        self.override_until = None
        return True

    def decide(self, now: datetime) -> LockDecision | None:
        if self.holds:
            first = min(self.holds.values(), key=lambda h: h.get("since") or "")
            return LockDecision("hold", str(first.get("by") or "dsl"), STAFF_MODE, "locked")
        if self.staff_by is not None and (self.staff_until is None or now < self.staff_until):
            return LockDecision("staff", self.staff_by, STAFF_MODE, "locked", self.staff_message, self.staff_until)
        if self.schedule_applies(now):
            key = "locked" if self.schedule_reason == "schedule" else "out_of_hours"
            return LockDecision(self.schedule_reason, "schedule", STAFF_MODE, key)
        if self.idle:
            return LockDecision("idle", "idle", SESSION_MODE, "locked")
        return None



# --------------------------------------------------------------------------- component

MAX_SLEEP = 60.0  # re-check at least this often (policy, clock jumps, a dead idle watcher)
LOCKED_POLL = 5.0  # while locked, how often to ask the backend whether the user is back


class LockComponent:
    """The lock as a runtime component (agent/core/interfaces.py: ``Component``).

    *backend* and *idle*: the runtime's desktop ones (``runtime.desktop``) unless given."""

    name = "lock"

    def __init__(self, backend: LockBackend | None = None, idle: IdleSource | None = None):
        self.backend = backend
        self.idle = idle
        self.state = LockState()
        self.current: LockDecision | None = None
        self.policy = None
        self.runtime: RuntimeAPI | None = None
        self._timer = None
        self._stopped = False

    # ------------------------------------------------------------------ Component
    def start(self, runtime: RuntimeAPI) -> None:
        self.runtime = runtime
        if self.backend is None:
            self.backend = runtime.desktop.lock
        if self.idle is None:
            self.idle = runtime.desktop.idle
        self.backend.when_changed = self.wake
        self.idle.when_changed = self.wake
        self.state.holds = self._load_holds()
        if self.state.holds:
            log.warning("lock: %d hold(s) from the DSL still in force; locking", len(self.state.holds))
        if runtime.policy is not None:
            self.on_policy(runtime.policy)
        elif self.state.holds:
            self._apply()  # held before any config: the words can wait, the lock cannot

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
        wordless = self.policy is None and self.current is not None  # held at start, before any config
        self.policy = policy
        now = self.runtime.clock()
        self.state.set_schedule(policy.locked, policy.lock_reason, now)
        if self.idle is not None:
            self.idle.set_timeout(self._threshold())
        if wordless and self.state.decide(now) == self.current:
            self._relock()  # the same lock, now with the key stage's words on it
        self.tick()

    def on_command(self, cmd: dict) -> bool:
        name = cmd.get("cmd")
        if name == "hold":
            self._hold(cmd)
            return True
        if name == "release":
            self._release(cmd)
            return True
        if name == "unlock" and self.state.holds:
            # Only the DSL's release lifts a hold; a teacher's unlock changes nothing at all,
            # and the teacher's screen is told so (cmd_result: refused).
            self._refuse(str(cmd.get("by") or "staff"), "unlock")
            raise CommandRefused("the device is on hold: only the DSL can lift it")
        if name == "lock":
            minutes = cmd.get("minutes")
            until = self.runtime.clock() + timedelta(minutes=minutes) if isinstance(minutes, int) else None
            self.state.staff_lock(str(cmd.get("by") or "staff"), until, cmd.get("message") or None)
            self._apply()
            if until is not None:
                self._schedule(min(LOCKED_POLL, self._until_expiry()))
            return True
        if name == "unlock":
            by = str(cmd.get("by") or "staff")
            self.state.staff_unlock(self.runtime.clock(), getattr(self.policy, "next_change", None))
            self._apply(unlock_reason="staff", unlock_by=by)
            return True
        return False

    # ------------------------------------------------------------------ holds
    def _holds_path(self) -> Path:
        return Path(self.runtime.state_dir) / HOLDS_FILE

    def _load_holds(self) -> dict[str, dict]:
        path = self._holds_path()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Unreadable is not "no hold": the collector re-sends holds on every reconnect.
            log.error("lock: %s unreadable (%s); the collector will send any hold again", path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}

    def _save_holds(self) -> None:
        try:
            # Durable: a power cut straight after the DSL's press must not lose the hold.
            atomic_write(self._holds_path(), json.dumps(self.state.holds, sort_keys=True), 0o600)
        except OSError as exc:
            log.error("lock: cannot save %s: %s (the hold stays in force until the agent stops; the "
                      "collector sends it again when the agent reconnects)", self._holds_path(), exc)

    def _hold(self, cmd: dict) -> None:
        hold_id = str(cmd["hold_id"])
        if hold_id in self.state.holds:
            return  # the collector re-asserts holds on every reconnect: nothing new
        by = str(cmd.get("by") or "dsl")
        incident = cmd.get("incident") if isinstance(cmd.get("incident"), str) else None
        self.state.holds[hold_id] = {"by": by, "incident": incident, "since": now_ts(self.runtime.clock())}
        self._save_holds()
        log.warning("lock: hold %s placed by %s (incident %s)", hold_id, by, incident)
        self._apply()

    def _release(self, cmd: dict) -> None:
        hold_id = str(cmd["hold_id"])
        if self.state.holds.pop(hold_id, None) is None:
            return  # already released (sent again on reconnect), or never held here
        self._save_holds()
        by = str(cmd.get("by") or "dsl")
        log.warning("lock: hold %s released by %s", hold_id, by)
        self._apply(unlock_reason="hold_lifted", unlock_by=by)

    def _refuse(self, by: str, how: str) -> None:
        log.warning("lock: %s by %s refused: the device is on hold (only the DSL can lift it)", how, by)
        self.runtime.emit_event("unlock_refused", by=by, how=how, reason="hold", holds=sorted(self.state.holds))

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

    def tick(self) -> float:
        """Check the backend and the idle time; apply; return seconds until the next check."""
        if self.policy is None or self.backend is None:
            return MAX_SLEEP
        now = self.runtime.clock()
        unlock_reason = unlock_by = None
        expired_by = self.state.staff_expired(now)
        if expired_by is not None:
            unlock_reason, unlock_by = "expired", expired_by
        back = self.backend.poll()
        if back is not None and self.state.holds:
            # The staff PIN (or anything else) let the lock go; the hold did not: lock again.
            self._refuse(back[1], "staff_pin" if back[0] == "staff_pin" else back[0])
            self._relock()
            back = None
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
            if self.current.until is not None:
                # "Eyes on me" ends on the dot, not up to LOCKED_POLL late.
                delay = min(delay, self._until_expiry())
        elif self.state.override_until is not None:
            # A staff unlock of a timetable lock ends on the dot, not up to a minute late.
            delay = max(0.0, min(delay, (self.state.override_until - self.runtime.clock()).total_seconds()))
        self._schedule(delay)
        return delay

    def _until_expiry(self) -> float:
        until = self.state.staff_until
        return 0.0 if until is None else max(0.0, (until - self.runtime.clock()).total_seconds())

    def _message_key(self, decision: LockDecision) -> str:
        """The ``policy.messages`` key whose words (and pictogram) *decision* shows."""
        messages = getattr(self.policy, "messages", {}) or {}
        return decision.message_key if messages.get(decision.message_key) else "locked"

    def _words(self, decision: LockDecision) -> Words:
        """What the lock screen shows for *decision*: the words, their pictogram, and under a
        hold no staff PIN (the overlay refuses it; ``tick`` still locks again whatever lets go)."""
        messages = getattr(self.policy, "messages", {}) or {}
        key = self._message_key(decision)
        # A teacher's own words ("Eyes on me") go under the lock's picture.
        return Words(decision.message or messages.get(key) or "", key, pin=decision.reason != "hold")

    def _relock(self) -> None:
        if self.current is None:
            return
        self.backend.lock(self.current.mode, self._words(self.current))

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
        self.current = want
        if (have is not None and "hold" not in (have.reason, want.reason)
                and (have.mode, have.by, have.message, have.until) == (want.mode, want.by, want.message, want.until)):
            # Friday evening becomes the weekend becomes half term: one lock, not three (a hold
            # is always its own lock: its event names the hold).
            return
        key = self._message_key(want)
        extra = {"until": now_ts(want.until)} if want.until is not None else {}
        if want.reason == "hold":
            hold_id, hold = min(self.state.holds.items(), key=lambda kv: kv[1].get("since") or "")
            extra = {"hold_id": hold_id, "incident": hold.get("incident")}
        try:
            # The words with their pictogram (the overlays draw it; swaylock and the greeter cannot),
            # and under a hold no staff PIN.
            self.backend.lock(want.mode, self._words(want))
        finally:
            self.runtime.emit_event("lock", reason=want.reason, by=want.by, mode=want.mode, user=self._user(), **extra)
        if want.mode == STAFF_MODE:
            self.runtime.say(key)  # the idle lock is the user's own locker: nothing to say over it

    @property
    def is_locked(self) -> bool:
        return self.current is not None

    @property
    def is_held(self) -> bool:
        """The DSL has a hold on this device (only its release unlocks it)."""
        return bool(self.state.holds)
