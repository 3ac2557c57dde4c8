"""Hold and quarantine: the DSL keeps an incident's device locked and its records kept.

Policy 000 §11.4: "quarantine any devices until police advice has been sought".  The DSL
puts a hold on an incident (the dashboard's hold page, or the API): the collector records
it (server/store/holds.py, with who, when and why), writes it to the audit log and to the
incident's own record, and sends the device a ``hold`` command; the device locks with a
lock only a ``release`` lifts, and keeps the hold on disk (agent/policy/lock.py).  The
device's records from 24 hours before the press are kept out of the retention purge
while the hold is in force (server/store/retention.py).  Only the DSL lifts it; a
teacher's unlock and the staff PIN are refused on the device itself.

Commands to a device are not stored by the broker (only ``reload-config`` is retained),
so one sent while the device is off would be lost: ``listener`` (on ingest's listeners)
sends every hold in force again, and every release of the last ``RESEND_LIFTED``, each
time a device comes online.  Both are idempotent on the device.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Callable

from agent.protocol import encode, topic as make_topic

from .store import iso

log = logging.getLogger(__name__)

# A release is sent again on reconnect for this long (a device off for a whole holiday
# still hears that its hold was lifted).
RESEND_LIFTED = timedelta(days=60)
REASON_MAX = 2000


class HoldError(ValueError):
    """A hold request that cannot be done; str() says why, for the DSL."""


class Holds:
    """Place and lift holds, and tell devices.  *publish*: ``(topic, payload, qos)`` to the
    broker (raises when not connected); *prefix*: the live topic prefix."""

    def __init__(self, store, publish: Callable[[str, bytes, int], None] | None,
                 prefix: Callable[[], str]) -> None:
        self.store = store
        self.publish = publish
        self.prefix = prefix

    # ------------------------------------------------------------------ the DSL's actions

    def place(self, incident: dict, by: str, reason: str) -> tuple[dict, bool]:
        """A hold on *incident*'s device; (the hold, whether the device was sent its command now)."""
        reason = _reason(reason)
        for hold in self.store.holds_for_incident(incident["site"], incident["id"]):
            if hold["lifted_at"] is None:
                raise HoldError("this incident's device is already on hold; lift that hold first to place a new one")
        hold = self.store.place_hold(incident, by, reason)
        sent = self._send(hold, "hold", by)
        self.store.add_incident_action(incident["id"], by, "hold", text=reason)
        # Admins read the audit log: what and where, never the DSL's reason.
        self.store.audit(by, "hold.place", incident["id"], {"hold": hold["id"], "device": hold["device"],
                                                            "room": hold["room"], "sent": sent},
                         site=incident["site"])
        log.warning("hold %s placed on %s (incident %s) by %s", hold["id"], hold["device"], incident["id"], by)
        return hold, sent

    def lift(self, site: str, hold_id: str, by: str, reason: str) -> tuple[dict, bool]:
        """Lift a hold in force; (the lifted hold, whether the device was sent its release now)."""
        reason = _reason(reason)
        hold = self.store.lift_hold(site, hold_id, by, reason)
        if hold is None:
            raise HoldError("no hold in force by that id")
        sent = self._send(hold, "release", by)
        self.store.add_incident_action(hold["incident_id"], by, "hold_lifted", text=reason)
        self.store.audit(by, "hold.lift", hold["incident_id"], {"hold": hold["id"], "device": hold["device"],
                                                                "room": hold["room"], "sent": sent}, site=site)
        log.warning("hold %s on %s lifted by %s", hold["id"], hold["device"], by)
        return hold, sent

    # ------------------------------------------------------------------ devices

    def command(self, hold: dict, cmd: str, by: str) -> tuple[str, dict]:
        """The (topic, payload) of a ``hold`` or ``release`` for *hold*'s device."""
        payload = {"cmd": cmd, "by": by, "hold_id": hold["id"]}
        if cmd == "hold":
            payload["incident"] = hold["incident_id"]
        return make_topic(self.prefix(), hold["site"], hold["room"], hold["device"], "cmd"), payload

    def _send(self, hold: dict, cmd: str, by: str) -> bool:
        if self.publish is None:
            return False
        where, payload = self.command(hold, cmd, by)
        try:
            self.publish(where, encode(payload), 1)
            return True
        except Exception as exc:  # noqa: BLE001 - recorded; sent again when the device reconnects
            log.error("hold %s: %s not sent to %s now (%s); it goes when the device reconnects",
                      hold["id"], cmd, hold["device"], exc)
            return False

    def listener(self, kind: str, where, data: dict) -> None:
        """Ingest listener: a device that comes online is told its holds again."""
        if kind != "status" or data.get("state") != "online" or where is None:
            return
        since = iso(datetime.now(timezone.utc) - RESEND_LIFTED)
        try:
            holds = self.store.device_holds(where.site, where.device, since)
        except Exception:  # noqa: BLE001 - the store may be busy: the next online tries again
            log.exception("holds: could not read %s's holds", where.device)
            return
        for hold in holds:
            # The room may have changed since the hold: send where the device is now.
            hold = {**hold, "room": where.room}
            if hold["lifted_at"] is None:
                self._send(hold, "hold", hold["placed_by"])
            else:
                self._send(hold, "release", hold["lifted_by"] or "dsl")


def _reason(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise HoldError("reason: say why (e.g. 'police advice sought, ref 123'); it goes in the record")
    if len(text) > REASON_MAX:
        raise HoldError(f"reason: at most {REASON_MAX} characters")
    return text
