"""The board: the open alerts and device status for the watched rooms, thread-safe, no I/O.

A later state never goes back to an earlier one (a QoS 1 redelivery of "raised" after
"acknowledged" must not start the pager again); the newest alerts come first, and the
numbers teachers type are positions in that list.

Alerts arrive live and, because each device's latest transition is retained, also
when the client (re)connects: an open alert it learns that way goes on the board like
any other (its ``raised_ts`` says when the pupil pressed).  A cleared alert leaves the
list, and its id is remembered (the last ``REMEMBER_CLOSED``) so that a late copy of an
earlier state never brings it back; a retained ``cleared`` of an alert this client
never saw is not shown at all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

# A later state never goes back to an earlier one (a QoS 1 redelivery of "raised" after
# "acknowledged" must not start the pager again).
STATE_RANK = {"raised": 0, "escalated": 1, "acknowledged": 2, "cleared": 3}
UNANSWERED = ("raised", "escalated")
REMEMBER_CLOSED = 1000


@dataclass
class Alert:
    id: str
    state: str
    site: str
    room: str
    device: str
    seat: str
    ts: str
    by: str | None = None
    escalated_to: str | None = None
    history: list[str] = field(default_factory=list)

    @property
    def is_unanswered(self) -> bool:
        return self.state in UNANSWERED

    @property
    def is_open(self) -> bool:
        return self.state != "cleared"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def _escalated_to(data: dict) -> str | None:
    """Who an escalation went to, as staff know them.  The agent sends ``contacts``
    (name, role, phone) and ``escalated_to`` (usernames); a string or list in ``to`` also works."""
    contacts = data.get("contacts")
    if isinstance(contacts, list):
        names = [f"{c['name']} ({c['phone']})" if c.get("phone") else c["name"]
                 for c in contacts if isinstance(c, dict) and isinstance(c.get("name"), str)]
        if names:
            return ", ".join(names)
    value = data.get("to", data.get("escalated_to"))
    if value is None:
        return data.get("by")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        names = [v.get("name") or v.get("staff") if isinstance(v, dict) else str(v) for v in value]
        return ", ".join(n for n in names if n)
    return str(value)


class AlertBoard:
    """Alerts and device status for the watched rooms; thread-safe, no I/O."""

    def __init__(self) -> None:
        self.alerts: dict[str, Alert] = {}
        self.devices: dict[str, str] = {}
        self.closed: OrderedDict[str, None] = OrderedDict()  # ids of cleared alerts, oldest first
        self.lock = threading.RLock()

    def apply_alert(self, data: dict) -> tuple[Alert, bool]:
        """Apply a validated alert payload; return (alert, changed)."""
        with self.lock:
            alert = self.alerts.get(data["id"])
            state = data["state"]
            if alert is None:
                alert = Alert(id=data["id"], state=state, site=data["site"], room=data["room"],
                              device=data["device"], seat=data.get("seat") or "",
                              ts=data.get("raised_ts") or data["ts"], by=data.get("by"))
                if data["id"] in self.closed or state == "cleared":
                    self._close(alert.id)
                    return alert, False  # over already: nothing to show
                self.alerts[alert.id] = alert
            elif STATE_RANK[state] < STATE_RANK[alert.state] or (
                    state == alert.state and state != "escalated"):
                return alert, False
            alert.state = state
            if state == "raised":
                alert.ts = data["ts"]
            else:
                alert.by = data.get("by") or alert.by
            if state == "escalated":
                alert.escalated_to = _escalated_to(data)
            alert.history.append(f"{state} {data['ts']}")
            if state == "cleared":
                del self.alerts[alert.id]
                self._close(alert.id)
            return alert, True

    def apply_status(self, device: str, data: dict) -> bool:
        with self.lock:
            changed = self.devices.get(device) != data["state"]
            self.devices[device] = data["state"]
            return changed

    def _close(self, alert_id: str) -> None:
        self.closed[alert_id] = None
        self.closed.move_to_end(alert_id)
        while len(self.closed) > REMEMBER_CLOSED:
            self.closed.popitem(last=False)

    def listing(self) -> list[Alert]:
        """Newest first: the numbers teachers type are positions in this list."""
        with self.lock:
            return list(reversed(self.alerts.values()))

    def newest(self, *, unanswered: bool = False) -> Alert | None:
        for alert in self.listing():
            if (alert.is_unanswered if unanswered else alert.is_open):
                return alert
        return None

    def pick(self, ref: str | None, *, unanswered: bool = False) -> Alert | None:
        """An alert by list number ('2'), id prefix ('3f2a'), or the newest when ref is empty."""
        if not ref:
            return self.newest(unanswered=unanswered)
        listing = self.listing()
        if ref.isdigit() and 1 <= int(ref) <= len(listing):
            return listing[int(ref) - 1]
        matches = [a for a in listing if a.id.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    @property
    def is_alarming(self) -> bool:
        """True while any alert is raised/escalated and nobody has said "I'm coming"."""
        with self.lock:
            return any(a.is_unanswered for a in self.alerts.values())
