"""The alert lifecycle of the "I saw something" report: raised -> acknowledged -> cleared,
plus escalated when nobody acknowledges in time.

The agent is the source of truth for an alert (DESIGN.md): every state change is
published on the device's ``alert`` topic with the same ``id``.  Order on a press:

1. blank the screen (on the pressing thread, before anything else: DESIGN rule 1);
2. on the runtime's queue thread: light the LED; commit the alert and its ``raised``
   message to the outbox together, publish, then fsync; send ``report_evidence``
   (domains only, server-only topic); start the escalation timer (runtime clock, so
   tests can use a fake one).

Repeated presses while an alert is open do not make new alerts: they are counted
(``presses`` on every later transition and a ``press_repeated`` event).  The open
alert is kept in the outbox database, committed in the same transaction as the message
that announces each transition (agent/outbox.py), so a restarted agent blanks the
screen again and still accepts ack/clear for it.  Evidence is domain names and times only.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from . import protocol
from .config.schema import DEFAULT_MESSAGES

log = logging.getLogger(__name__)

OPEN_STATES = ("raised", "escalated", "acknowledged")


class Report:
    """Runtime component (name 'report').  ``press(source)`` may be called from any thread."""

    name = "report"

    def __init__(self, screen, led=None):
        self.screen = screen
        self.led = led
        self.runtime = None
        self._alert: dict[str, Any] | None = None
        self._timer = None
        self._pending_press: str | None = None
        screen.when_cleared = self._screen_cleared

    # ------------------------------------------------------------------ component interface
    def start(self, runtime) -> None:
        self.runtime = runtime
        saved = runtime.outbox.kept("alert") or self._legacy_state(Path(runtime.state_dir) / "alert.json")
        if saved and saved.get("state") in OPEN_STATES and saved.get("id"):
            self._alert = saved
        if self._alert is not None:
            log.info("alert %s is still open (%s): blanking the screen again", self._alert["id"],
                     self._alert["state"])
            key = "report_acknowledged" if self._alert["state"] == "acknowledged" else "report_raised"
            self.screen.blank(self._message(key))
            self._show_led()

    def _legacy_state(self, path: Path) -> dict | None:
        """An open alert left in ``alert.json`` by an earlier agent (now kept in the outbox)."""
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); ignoring", path, exc)
            return None
        self.runtime.outbox.keep("alert", saved)
        path.unlink(missing_ok=True)
        return saved

    def stop(self) -> None:
        self._cancel_timer()

    def on_policy(self, policy) -> None:
        if self._pending_press is not None:
            source, self._pending_press = self._pending_press, None
            self._pressed(source)
        elif self._alert is not None and self._alert["state"] == "raised" and self._timer is None:
            self._schedule_escalation()

    def on_command(self, cmd: dict) -> bool:
        if cmd.get("cmd") == "ack":
            self._ack(cmd["alert_id"], cmd["by"])
            return True
        if cmd.get("cmd") == "clear":
            self._clear(cmd["alert_id"], cmd["by"])
            return True
        return False

    # ------------------------------------------------------------------ state
    @property
    def alert(self) -> dict | None:
        return dict(self._alert) if self._alert else None

    @property
    def is_open(self) -> bool:
        return self._alert is not None

    def set_led(self, led) -> None:
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
            self.runtime.outbox.keep("alert", self._alert)

    def _publish(self, state: str, by: str | None, **extra) -> dict:
        a = self._alert
        payload = {"id": a["id"], "state": state, "site": a["site"], "room": a["room"], "device": a["device"],
                   "seat": a["seat"], "ts": protocol.now_ts(self.runtime.clock()), "by": by,
                   "presses": a["presses"], **extra}
        protocol.validate("alert", payload)
        # The alert's own state goes into the same commit as the message about it.
        self.runtime.send("alert", payload, keep=("alert", None if state == "cleared" else dict(a)))
        return payload

    # ------------------------------------------------------------------ press
    def press(self, source: str = "button") -> None:
        """Blank now, on this thread; do the rest on the runtime's queue thread."""
        if not self.screen.is_blank:
            self.screen.blank(self._message("report_raised"))
        if self.runtime is not None:
            self.runtime.post(self._pressed, source)

    def _pressed(self, source: str) -> None:
        rt = self.runtime
        if self._alert is not None:
            self._alert["presses"] += 1
            self._save()
            rt.emit_event("press_repeated", alert_id=self._alert["id"], presses=self._alert["presses"],
                          source=source)
            return
        policy = rt.policy
        if policy is None:
            # No config yet, so no room to report to: the screen is blank; raise as soon as config arrives.
            log.error("report pressed before any config was loaded; it will be sent when config arrives")
            self._pending_press = source
            return
        now = rt.clock()
        self._alert = {"id": protocol.new_id(), "state": "raised", "site": policy.site, "room": policy.room,
                       "device": policy.device, "seat": policy.seat, "presses": 1, "source": source,
                       "raised_at": now.isoformat()}
        self._show_led()  # local feedback first, network second (as on clear)
        # One commit holds the alert and its "raised" message; the fsync follows the
        # publish (agent/outbox.py): the alert must not wait for an SD card.
        self._publish("raised", "pupil", source=source)
        log.info("report raised: alert %s (%s)", self._alert["id"], source)
        self._schedule_escalation()
        try:
            domains = rt.evidence_source(rt.evidence_minutes)
        except Exception:  # noqa: BLE001 - evidence is a bonus; the alert is what matters
            log.exception("evidence source failed; sending an empty list")
            domains = []
        rt.emit_event("report_evidence", alert_id=self._alert["id"], domains=list(domains))

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
        if self._alert is None:
            log.info("screen cleared on the device (%s); no alert was open", by)
            return
        self._close(by)

    def status(self) -> dict:
        return {"alert": self.alert, "screen": {"blank": self.screen.is_blank, "message": self.screen.message,
                                                  "backend": self.screen.backend_name},
                "led": getattr(self.led, "state", None)}
