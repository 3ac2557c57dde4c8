"""The alert lifecycle of the "I saw something" report: raised -> acknowledged -> cleared,
plus escalated when nobody acknowledges in time.

The agent is the source of truth for an alert (DESIGN.md): every state change is
published on the device's ``alert`` topic with the same ``id``.  Order on a press:

1. blank the screen (on the pressing thread, before anything else: DESIGN rule 1);
2. still on the pressing thread: commit the alert and its ``raised`` message to the
   outbox together and publish it (agent/uplink/link.py: the fsync follows only if the
   broker has not acknowledged it within moments); light the button's LED;
3. on the runtime's queue thread, ``FOLLOW_UP_DELAY`` later: start the escalation
   timer (runtime clock, so tests can use a fake one; counted from the press), and
   send ``report_evidence`` (domains only, and who was logged in; server-only topic).  Later, not at once:
   while the alert crosses the broker to the teacher, the agent keeps out of the way.

Step 2 does not hop to the queue thread like every other component's work: the hop
costs a thread wake-up on the one path where the teacher is waiting, so the alert's
state has its own lock instead.  Every transition (press, ack, clear, escalation, the
PIN on the device) holds that lock from the state change to the publish, so the
transitions of one alert are committed and sent in the order they happened.

Repeated presses while an alert is open do not make new alerts: they are counted
(``presses`` on every later transition and a ``press_repeated`` event).  The open
alert is kept in the outbox database, committed in the same transaction as the message
that announces each transition (agent/uplink/outbox.py), so a restarted agent blanks
the screen again and still accepts ack/clear for it.  Evidence is domain names and times only.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..config.schema import DEFAULT_MESSAGES

if TYPE_CHECKING:
    from ..core.interfaces import RuntimeAPI, ScreenLike

log = logging.getLogger(__name__)

OPEN_STATES = ("raised", "escalated", "acknowledged")
FOLLOW_UP_DELAY = 0.05  # seconds of real time after the raise (step 3 above)


class Report:
    """Runtime component (name 'report').  ``press(source)`` may be called from any thread;
    the other entry points run on the runtime's queue thread."""

    name = "report"

    def __init__(self, screen: ScreenLike, led=None):
        self.screen = screen
        self.led = led
        self.runtime: RuntimeAPI | None = None
        self._alert: dict[str, Any] | None = None
        self._timer = None
        self._pending_press: str | None = None
        self._next_id: str | None = None      # the next alert's id, drawn ahead (_prepare)
        self._checked_policy = None           # the policy a raise payload was last checked under
        # Reentrant: a transition may publish, and publishing may ask for the alert's state.
        self._lock = threading.RLock()
        screen.when_cleared = self._screen_cleared

    # ------------------------------------------------------------------ Component (agent/core/interfaces.py)
    def start(self, runtime: RuntimeAPI) -> None:
        with self._lock:
            self._start(runtime)

    def _start(self, runtime) -> None:
        self.runtime = runtime
        saved = runtime.kept("alert")
        if saved and saved.get("state") in OPEN_STATES and saved.get("id"):
            self._alert = saved
        if self._alert is not None:
            log.info("alert %s is still open (%s): blanking the screen again", self._alert["id"],
                     self._alert["state"])
            key = "report_acknowledged" if self._alert["state"] == "acknowledged" else "report_raised"
            self.screen.blank(self._message(key))
            self._show_led()

    def stop(self) -> None:
        self._cancel_timer()

    def on_policy(self, policy) -> None:
        with self._lock:
            self._prepare()
            if self._pending_press is not None:
                source, self._pending_press = self._pending_press, None
                self._pressed(source)
            elif self._alert is not None and self._alert["state"] == "raised" and self._timer is None:
                self._schedule_escalation()

    def on_command(self, cmd: dict) -> bool:
        if cmd.get("cmd") not in ("ack", "clear"):
            return False
        with self._lock:
            if cmd["cmd"] == "ack":
                self._ack(cmd["alert_id"], cmd["by"])
            else:
                self._clear(cmd["alert_id"], cmd["by"])
        return True

    # ------------------------------------------------------------------ state
    @property
    def alert(self) -> dict | None:
        return dict(self._alert) if self._alert else None

    @property
    def is_open(self) -> bool:
        return self._alert is not None

    def set_led(self, led) -> None:
        with self._lock:
            self.led = led
            self._show_led()

    def _show_led(self) -> None:
        if self.led is not None:
            self.led.show(self._alert["state"] if self._alert else None)

    def _message(self, key: str) -> str:
        policy = self.runtime.policy if self.runtime is not None else None
        return (policy.messages.get(key) if policy else None) or DEFAULT_MESSAGES[key]

    def _save(self) -> None:
        """Keep the alert's state when no message carries it (a repeated press)."""
        if self.runtime is not None:
            self.runtime.keep("alert", self._alert)

    @staticmethod
    def _payload(a: dict, state: str, by: str | None, ts: str, **extra) -> dict:
        return {"id": a["id"], "state": state, "site": a["site"], "room": a["room"], "device": a["device"],
                "seat": a["seat"], "ts": ts, "by": by, "presses": a["presses"], **extra}

    def _publish(self, state: str, by: str | None, *, checked: bool = False, **extra) -> dict:
        a = self._alert
        payload = self._payload(a, state, by, protocol.now_ts(self.runtime.clock()), **extra)
        if not checked:
            protocol.validate("alert", payload)
        # The alert's own state goes into the same commit as the message about it.
        self.runtime.send("alert", payload, keep=("alert", None if state == "cleared" else dict(a)))
        return payload

    def _prepare(self) -> None:
        """Get the next raise ready, so that the press does neither of these: draw its id
        (uuid4 reads the kernel's random pool, a system call), and check its payload
        against the contract under the current policy (everything in it but the id and
        the time comes from the policy).  At start, on every policy change, and after
        each raise (with the evidence, off the alert's path)."""
        self._next_id = protocol.new_id()
        policy = self.runtime.policy if self.runtime is not None else None
        if policy is None:
            return
        sample = self._new_alert(policy, self._next_id, "button", self.runtime.clock())
        try:
            protocol.validate("alert", self._payload(sample, "raised", "pupil", protocol.now_ts(), source="button"))
        except protocol.ProtocolError as exc:  # the press checks (and reports) it again itself
            log.error("a report raised under this policy would break the contract: %s", exc)
            return
        self._checked_policy = policy

    @staticmethod
    def _new_alert(policy, alert_id: str, source: str, now: datetime) -> dict:
        return {"id": alert_id, "state": "raised", "site": policy.site, "room": policy.room,
                "device": policy.device, "seat": policy.seat, "presses": 1, "source": source,
                "raised_at": now.isoformat()}

    # ------------------------------------------------------------------ press
    def press(self, source: str = "button") -> None:
        """Blank now, then raise the alert: both on this thread (the module docstring says why)."""
        if not self.screen.is_blank:
            self.screen.blank(self._message("report_raised"))
        with self._lock:
            if self.runtime is not None:
                self._pressed(source)
            else:
                # Not started yet: start() raises it once the runtime (and its outbox) exists.
                self._pending_press = source

    def _pressed(self, source: str) -> None:
        rt = self.runtime
        if self._alert is not None:
            self._alert["presses"] += 1
            self._save()
            alert_id, presses = self._alert["id"], self._alert["presses"]
            rt.post(lambda: rt.emit_event("press_repeated", alert_id=alert_id, presses=presses, source=source))
            return
        policy = rt.policy
        if policy is None:
            # No config yet, so no room to report to: the screen is blank; raise as soon as config arrives.
            log.error("report pressed before any config was loaded; it will be sent when config arrives")
            self._pending_press = source
            return
        alert_id, self._next_id = self._next_id or protocol.new_id(), None
        self._alert = self._new_alert(policy, alert_id, source, rt.clock())
        # Follow-ups first: scheduling them may wake the queue thread, which had better
        # be back asleep before the alert leaves, not busy beside the broker and the
        # teacher's client.
        rt.defer(FOLLOW_UP_DELAY, self._follow_up, alert_id)
        # One commit holds the alert and its "raised" message; the fsync follows the
        # publish (agent/uplink/outbox.py): the alert must not wait for an SD card.
        self._publish("raised", "pupil", checked=policy is self._checked_policy, source=source)
        # The pupil's feedback is the blank screen, already up; the button's LED can
        # follow the alert out by a fraction of a millisecond.
        self._show_led()
        log.info("report raised: alert %s (%s)", alert_id, source)

    def _follow_up(self, alert_id: str) -> None:
        """What the teacher is not waiting for: the escalation timer (counted from the
        press), the next raise's preparation, and the evidence (the filter's recent-domain
        list belongs to the queue thread)."""
        rt = self.runtime
        with self._lock:
            a = self._alert
            if a is not None and a["id"] == alert_id and a["state"] == "raised" and self._timer is None:
                self._schedule_escalation()
            self._prepare()
        try:
            domains = rt.evidence_source(rt.evidence_minutes)
        except Exception:  # noqa: BLE001 - evidence is a bonus; the alert is what matters
            log.exception("evidence source failed; sending an empty list")
            domains = []
        # Who was logged in at the press: the DSL's record (issue 15 item 2), on the
        # server-only event topic, never on the alert teachers' clients receive.
        try:
            user = rt.current_user()
        except Exception:  # noqa: BLE001 - an unknown user must not cost the evidence
            user = None
        rt.emit_event("report_evidence", alert_id=alert_id, domains=list(domains),
                      **({"user": user} if user else {}))

    # ------------------------------------------------------------------ escalation
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule_escalation(self) -> None:
        self._cancel_timer()
        policy = self.runtime.policy
        timeout = policy.escalation_timeout_seconds if policy else 60
        raised_at = datetime.fromisoformat(self._alert["raised_at"])
        waited = (self.runtime.clock() - raised_at).total_seconds()
        self._timer = self.runtime.call_later(max(0.0, timeout - waited), self._escalate, self._alert["id"])

    def _escalate(self, alert_id: str) -> None:
        with self._lock:
            self._escalate_locked(alert_id)

    def _escalate_locked(self, alert_id: str) -> None:
        self._timer = None
        if self._alert is None or self._alert["id"] != alert_id or self._alert["state"] != "raised":
            return
        policy = self.runtime.policy
        contacts = policy.escalation_contacts if policy else ()
        self._alert["state"] = "escalated"
        self._publish("escalated", "system",
                      escalated_to=[c.staff for c in contacts if c.staff],
                      contacts=[{"name": c.name, "role": c.role, "phone": c.phone} for c in contacts],
                      after_seconds=policy.escalation_timeout_seconds if policy else 60)
        log.warning("alert %s not acknowledged in time: escalated to %s", alert_id,
                    ", ".join(c.name for c in contacts) or "nobody configured")

    # ------------------------------------------------------------------ ack / clear
    def _matches(self, alert_id: str, what: str, by: str) -> bool:
        if self._alert is None:
            log.warning("ignored %s of alert %s by %s: no alert is open", what, alert_id, by)
            return False
        if self._alert["id"] != alert_id:
            log.warning("ignored %s of alert %s by %s: the open alert is %s", what, alert_id, by,
                        self._alert["id"])
            return False
        return True

    def _ack(self, alert_id: str, by: str) -> None:
        if not self._matches(alert_id, "ack", by):
            return
        if self._alert["state"] == "acknowledged":
            log.info("alert %s already acknowledged; ack by %s ignored", alert_id, by)
            return
        self._cancel_timer()
        self._alert["state"] = "acknowledged"
        self._alert["acknowledged_by"] = by
        self.screen.set_message(self._message("report_acknowledged"))
        self._show_led()
        self._publish("acknowledged", by)
        log.info("alert %s acknowledged by %s", alert_id, by)

    def _clear(self, alert_id: str, by: str) -> None:
        if not self._matches(alert_id, "clear", by):
            return
        self._close(by)

    def _close(self, by: str) -> None:
        self._cancel_timer()
        self._alert["state"] = "cleared"
        if self.screen.is_blank:
            self.screen.unblank()
        self._show_led()  # local feedback first (state is "cleared": off), network second
        self._publish("cleared", by)
        log.info("alert %s cleared by %s", self._alert["id"], by)
        self._alert = None

    def _screen_cleared(self, by: str) -> None:
        """Staff typed the PIN on the device (overlay reader thread)."""
        if self.runtime is not None:
            self.runtime.post(self._cleared_on_device, by)

    def _cleared_on_device(self, by: str) -> None:
        with self._lock:
            if self._alert is None:
                log.info("screen cleared on the device (%s); no alert was open", by)
                return
            self._close(by)

    def status(self) -> dict:
        with self._lock:
            return self._status()

    def _status(self) -> dict:
        return {"alert": self.alert, "screen": {"blank": self.screen.is_blank, "message": self.screen.message,
                                                  "backend": self.screen.backend_name},
                "led": getattr(self.led, "state", None)}
