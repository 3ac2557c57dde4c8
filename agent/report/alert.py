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
(``presses`` on every later transition and a ``press_repeated`` event).  Evidence is
domain names and times only, trimmed to fit the contract's payload limit.

The alert survives the loss of any one state file: it is kept in two places, the outbox
database (committed in the same transaction as the message that announces each
transition, agent/uplink/outbox.py) and ``alert.json`` (agent/report/alert_copy.py,
written in the deferred follow-up, off the press path).  At start the newer copy wins
(``seq`` grows with every change); a missing or unreadable copy beside an open alert is
reported loudly (``state_degraded``); the screen is blanked again, ack/clear still work,
and the latest transition is published again by the link once it is connected
(``last_transition``: the retained alert topic then tells the truth even if the broker
lost it).

A press before any config has loaded is raised with what the device knows: its id and
site, and the room and seat it was last configured for (agent/core/place.py).  A device
that has never known its room keeps the alert (both copies) and sends ``raised`` as soon
as a config arrives, even after a restart.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..config.schema import DEFAULT_MESSAGES
from ..desktop.base import Words
from .alert_copy import ALERT_FILE, AlertCopy

if TYPE_CHECKING:
    from ..core.interfaces import RuntimeAPI, ScreenLike

log = logging.getLogger(__name__)

OPEN_STATES = ("raised", "escalated", "acknowledged")
FOLLOW_UP_DELAY = 0.05  # seconds of real time after the raise (step 3 above)
COPY_RETRY_SECONDS = 2.0  # alert.json could not be written (a full disk): try again this often
# Room left in a report_evidence payload for everything but the domains.
EVIDENCE_ENVELOPE = 1024


def fit_domains(domains: list, limit: int = protocol.MAX_PAYLOAD - EVIDENCE_ENVELOPE) -> tuple[list, int]:
    """The most recent evidence entries that fit *limit* encoded bytes, in their original
    order, and how many were left out."""
    sizes = [len(protocol.encode(d)) + 1 if isinstance(d, dict) else 0 for d in domains]
    if sum(sizes) + 2 <= limit:
        return domains, 0
    order = sorted(range(len(domains)), key=lambda i: str(domains[i].get("ts", "")) if isinstance(domains[i], dict)
                   else "", reverse=True)
    keep, used = set(), 2
    for i in order:
        if used + sizes[i] > limit:
            break
        keep.add(i)
        used += sizes[i]
    return [d for i, d in enumerate(domains) if i in keep], len(domains) - len(keep)


class Report:
    """Runtime component (name 'report').  ``press(source)`` may be called from any thread;
    the other entry points run on the runtime's queue thread."""

    name = "report"

    def __init__(self, screen: ScreenLike, led=None):
        self.screen = screen
        self.led = led
        self.runtime: RuntimeAPI | None = None
        self._alert: dict[str, Any] | None = None
        self._last: dict | None = None        # the latest transition sent (open or cleared alert)
        self._seq = 0                          # grows with every change; the newer copy wins at start
        self._timer = None
        self._pending_press: str | None = None
        self._next_id: str | None = None      # the next alert's id, drawn ahead (_prepare)
        self._checked_policy = None           # the policy a raise payload was last checked under
        self._copy: AlertCopy | None = None
        self._copy_value: dict | None = None  # what alert.json should hold
        self._copy_written: int | None = None  # the seq it holds
        self._copy_due = False
        self._copy_failing = False
        # Reentrant: a transition may publish, and publishing may ask for the alert's state.
        self._lock = threading.RLock()
        screen.when_cleared = self._screen_cleared

    # ------------------------------------------------------------------ Component (agent/core/interfaces.py)
    def start(self, runtime: RuntimeAPI) -> None:
        with self._lock:
            self._start(runtime)

    def _start(self, runtime) -> None:
        self.runtime = runtime
        self._copy = AlertCopy(runtime.state_dir)
        chosen = self._restore(runtime)
        if chosen is not None and chosen.get("state") in OPEN_STATES:
            self._alert = {k: v for k, v in chosen.items() if k != "last"}
        if self._alert is not None:
            log.info("alert %s is still open (%s): blanking the screen again", self._alert["id"],
                     self._alert["state"])
            key = "report_acknowledged" if self._alert["state"] == "acknowledged" else "report_raised"
            self.screen.blank(self._message(key))
            self._show_led()

    def _restore(self, runtime) -> dict | None:
        """The newer of the alert's two copies; a missing or unreadable one beside an open
        alert is reported.  Both copies are made to agree again."""
        from_db = runtime.kept("alert")
        from_file, problem = self._copy.load()
        if problem:
            runtime.state_problem(ALERT_FILE, problem)
        copies = [c for c in (from_db, from_file) if c is not None]
        if not copies:
            return None
        chosen = max(copies, key=lambda c: c.get("seq", 0) if isinstance(c.get("seq"), int) else 0)
        is_open = chosen.get("state") in OPEN_STATES and isinstance(chosen.get("id"), str)
        if is_open and from_db is None:
            runtime.state_problem("outbox.db", f"lost the open alert {chosen['id']}; restored it from {ALERT_FILE}")
        elif is_open and from_file is None and not problem:
            runtime.state_problem(ALERT_FILE, f"missing; the open alert {chosen['id']} was restored from outbox.db")
        seq = chosen.get("seq")
        self._seq = seq if isinstance(seq, int) else 0
        last = chosen.get("last")
        self._last = last if isinstance(last, dict) else None
        if is_open and self._last is None and not chosen.get("unsent"):
            # A copy written before transitions were kept with it: rebuild the latest one.
            a = chosen
            self._last = self._payload(a, a["state"], a.get("acknowledged_by") or "pupil",
                                       a.get("raised_ts") or protocol.now_ts())
        if from_db != chosen:
            runtime.keep("alert", chosen)
        if from_file != chosen:
            self._copy_value = chosen
            runtime.defer(FOLLOW_UP_DELAY, self._write_copy)
        else:
            self._copy_written = self._seq
        return chosen

    def stop(self) -> None:
        self._cancel_timer()
        self._write_copy()  # the runtime's timers have stopped: a change not yet copied is copied now

    def on_policy(self, policy) -> None:
        with self._lock:
            self._prepare()
            if self._pending_press is not None:
                source, self._pending_press = self._pending_press, None
                self._pressed(source)
            elif self._alert is not None and self._alert.get("unsent"):
                self._send_unsent(policy)
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

    @property
    def last_transition(self) -> dict | None:
        """The latest transition sent, for the link to publish again (retained) after it
        connects: read without the lock (one reference), from the link's thread."""
        last = self._last
        alert = self._alert
        if alert is not None and last is not None and last.get("id") != alert["id"]:
            return None  # an alert that has not been sent yet (no room known)
        return last

    def set_led(self, led) -> None:
        with self._lock:
            self.led = led
            self._show_led()

    def _show_led(self) -> None:
        if self.led is not None:
            self.led.show(self._alert["state"] if self._alert else None)

    def _message(self, key: str) -> Words:
        """*key*'s words in the screen's language, with its pictogram (before the runtime
        exists: the built-in English words, so a press still blanks with kind words)."""
        policy = self.runtime.policy if self.runtime is not None else None
        return Words((policy.messages.get(key) if policy else None) or DEFAULT_MESSAGES[key], key)

    def _kept_value(self) -> dict:
        """What both copies hold: the open alert with its latest transition, or the
        cleared alert's tombstone."""
        if self._alert is not None:
            last = self._last if self._last is not None and self._last.get("id") == self._alert["id"] else None
            return {**self._alert, "seq": self._seq, "last": last}
        last = self._last or {}
        return {"id": last.get("id", ""), "state": "cleared", "seq": self._seq, "last": self._last}

    def _save(self) -> None:
        """Keep the alert's state when no message carries it (a repeated press)."""
        if self.runtime is not None:
            self._seq += 1
            value = self._kept_value()
            self.runtime.keep("alert", value)
            self._copy_soon(value)

    def _copy_soon(self, value: dict) -> None:
        """Write alert.json after the message has gone (the runtime's deferred jobs)."""
        self._copy_value = value
        if not self._copy_due and self.runtime is not None:
            self._copy_due = True
            self.runtime.defer(FOLLOW_UP_DELAY, self._write_copy)

    def _write_copy(self) -> None:
        with self._lock:
            self._copy_due = False
            value = self._copy_value
            if value is None or self._copy is None or value.get("seq") == self._copy_written:
                return
        try:
            self._copy.save(value)
        except OSError as exc:
            if self.runtime is not None:
                if not self._copy_failing:
                    self.runtime.state_problem(ALERT_FILE, f"cannot write ({exc.strerror or exc}); "
                                               "the alert is kept in outbox.db only")
                self._copy_failing = True
                with self._lock:
                    if not self._copy_due:  # try again (a full disk gets room back)
                        self._copy_due = True
                        self.runtime.defer(COPY_RETRY_SECONDS, self._write_copy)
            return
        with self._lock:
            self._copy_written = value.get("seq")
        if self._copy_failing:
            self._copy_failing = False
            self.runtime.state_problem(ALERT_FILE, "recovered", ongoing=False)

    @staticmethod
    def _payload(a: dict, state: str, by: str | None, ts: str, **extra) -> dict:
        payload = {"id": a["id"], "state": state, "site": a["site"], "room": a["room"], "device": a["device"],
                   "seat": a["seat"], "ts": ts, "by": by, "presses": a["presses"], **extra}
        if a.get("location"):
            # Pressed off the school network: the collector tells the remote-learning contact.
            payload["location"] = a["location"]
        if state != "raised" and a.get("raised_ts"):
            payload["raised_ts"] = a["raised_ts"]  # when the pupil pressed: for receivers that join late
        return payload

    def _publish(self, state: str, by: str | None, *, checked: bool = False, copy_now: bool = True,
                 **extra) -> dict:
        a = self._alert
        ts = protocol.now_ts(self.runtime.clock())
        if state == "raised":
            a["raised_ts"] = ts
        payload = self._payload(a, state, by, ts, **extra)
        if not checked:
            protocol.validate("alert", payload)
        self._seq += 1
        self._last = payload
        if state == "cleared":
            self._alert = None
        value = self._kept_value()
        # The alert's own state goes into the same commit as the message about it.
        self.runtime.send("alert", payload, keep=("alert", value))
        self._copy_value = value
        if copy_now:
            self._copy_soon(value)
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
        sample = self._new_alert(self._next_id, "button", self.runtime.clock(), policy.site, policy.room,
                                 policy.device, policy.seat)
        try:
            protocol.validate("alert", self._payload(sample, "raised", "pupil", protocol.now_ts(), source="button"))
        except protocol.ProtocolError as exc:  # the press checks (and reports) it again itself
            log.error("a report raised under this policy would break the contract: %s", exc)
            return
        self._checked_policy = policy

    @staticmethod
    def _new_alert(alert_id: str, source: str, now: datetime, site: str, room: str | None, device: str,
                   seat: str | None) -> dict:
        return {"id": alert_id, "state": "raised", "site": site, "room": room, "device": device,
                "seat": seat or "", "presses": 1, "source": source, "raised_at": now.isoformat()}

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
        alert_id, self._next_id = self._next_id or protocol.new_id(), None
        if policy is not None:
            self._alert = self._new_alert(alert_id, source, rt.clock(), policy.site, policy.room, policy.device,
                                          policy.seat)
            if rt.network_location != "school":
                self._alert["location"] = rt.network_location  # agent/uplink/location.py
        else:
            # No config yet: what the device knows (agent/core/place.py).
            place = rt.place
            room = place.room if place is not None else None
            self._alert = self._new_alert(alert_id, source, rt.clock(), rt.bootstrap.site, room,
                                          rt.bootstrap.device, place.seat if place is not None else "")
            if room is None:
                log.error("report pressed before this device has ever had a config: alert %s is kept and "
                          "will be sent as soon as a config arrives", alert_id)
                self._alert["unsent"] = True
                self._save()
                rt.defer(FOLLOW_UP_DELAY, self._follow_up, alert_id)
                self._show_led()
                return
            log.warning("report pressed before any config was loaded: sending it to room %s, as last known",
                        room)
        # Follow-ups first: scheduling them may wake the queue thread, which had better
        # be back asleep before the alert leaves, not busy beside the broker and the
        # teacher's client.  (They also write the alert's second copy.)
        rt.defer(FOLLOW_UP_DELAY, self._follow_up, alert_id)
        # One commit holds the alert and its "raised" message; the fsync follows the
        # publish (agent/uplink/outbox.py): the alert must not wait for an SD card.
        self._publish("raised", "pupil", checked=policy is not None and policy is self._checked_policy,
                      copy_now=False, source=source)
        # The pupil's feedback is the blank screen, already up; the button's LED can
        # follow the alert out by a fraction of a millisecond.
        self._show_led()
        log.info("report raised: alert %s (%s)", alert_id, source)

    def _send_unsent(self, policy) -> None:
        """A config has arrived for an alert pressed before the device knew its room."""
        a = self._alert
        a.update(site=policy.site, room=policy.room, device=policy.device, seat=policy.seat or "")
        a.pop("unsent", None)
        self._publish("raised", "pupil", source=a.get("source", "button"))
        log.info("report raised: alert %s, pressed before any config, sent to room %s", a["id"], a["room"])
        self.runtime.defer(FOLLOW_UP_DELAY, self._follow_up, a["id"])

    def _follow_up(self, alert_id: str) -> None:
        """What the teacher is not waiting for: the alert's second copy, the escalation
        timer (counted from the press), the next raise's preparation, and the evidence
        (the filter's recent-domain list belongs to the queue thread)."""
        rt = self.runtime
        self._write_copy()
        with self._lock:
            a = self._alert
            unsent = a is not None and a["id"] == alert_id and a.get("unsent")
            if a is not None and a["id"] == alert_id and a["state"] == "raised" and self._timer is None \
                    and not unsent:
                self._schedule_escalation()
            self._prepare()
        rt.say("report_raised")  # the words, spoken, for a child who cannot read yet
        if unsent:
            return  # the evidence goes with the raise, once there is a room to send it to
        try:
            domains = list(rt.evidence_source(rt.evidence_minutes))
        except Exception:  # noqa: BLE001 - evidence is a bonus; the alert is what matters
            log.exception("evidence source failed; sending an empty list")
            domains = []
        domains, left_out = fit_domains(domains)
        extra = {"truncated": left_out} if left_out else {}
        if left_out:
            log.warning("report evidence for alert %s: %d older domain(s) left out to fit the payload limit",
                        alert_id, left_out)
        # Who was logged in at the press: the DSL's record (issue 15 item 2), on the
        # server-only event topic, never on the alert teachers' clients receive.
        try:
            user = rt.current_user()
        except Exception:  # noqa: BLE001 - an unknown user must not cost the evidence
            user = None
        if user:
            extra["user"] = user
        rt.emit_event("report_evidence", alert_id=alert_id, domains=domains, **extra)

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
        if self._alert is None or self._alert["id"] != alert_id or self._alert["state"] != "raised" \
                or self._alert.get("unsent"):
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
        self.runtime.say("report_acknowledged")
        log.info("alert %s acknowledged by %s", alert_id, by)

    def _clear(self, alert_id: str, by: str) -> None:
        if not self._matches(alert_id, "clear", by):
            return
        self._close(by)

    def _close(self, by: str) -> None:
        self._cancel_timer()
        alert_id = self._alert["id"]
        self._alert["state"] = "cleared"
        if self.screen.is_blank:
            self.screen.unblank()
        self._show_led_off()  # local feedback first, network second
        if self._alert.get("unsent"):
            # Never sent (no room known yet): nothing for anyone to follow; just forget it.
            self._alert = None
            self._save()
        else:
            self._publish("cleared", by)
        log.info("alert %s cleared by %s", alert_id, by)

    def _show_led_off(self) -> None:
        if self.led is not None:
            self.led.show(None)

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
