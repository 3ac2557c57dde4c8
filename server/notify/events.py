"""Messages that are not about a press: guard events, failed filter checks, concerns about adults.

Three more reasons a message leaves the collector, through the same channels, delivery
records and retries as an escalation (the Notifier's thread sends them):

* ``guard``: a device saw a bypass tool (``bypass_process``) or tampering (``tamper``).  To the
  contacts whose role is dsl, deputy-dsl or technician, and to every webhook.  Coalesced:
  at most one message per device per type per ``COALESCE`` (10 minutes), however many events
  come (a pupil hammering a blocked tool must not flood anyone's inbox); the message counts
  what happened in its window.  A restart does not reset the window (the last delivery's
  time is read back from the store).
* ``filter-check``: a ``filter_check`` event that failed (the nightly check, or one a
  technician ran).  To technician, dsl and deputy-dsl contacts and every webhook;
  coalesced the same way per device.
* ``adult-concern``: an incident whose category is about an adult (server/incidents.py
  ``HEAD_CATEGORIES``).  To the contacts whose role is headteacher, by e-mail only, never
  to a webhook (a shared channel) and never to the DSL's contacts (policy 002 §8.2).  Says
  only that there is a concern and where to read it.

Per school, like an escalation: each message goes to the contacts of the event's (or the
incident's) own school, from its live tree, and to the webhooks that serve that school
(``webhooks[].sites``); a school's DSL never hears of another school's guard events.

``EventNotices.listener`` goes on ingest's listeners (it only queues, on ingest's thread);
``take(now, trees)`` runs on the Notifier's thread (it is one of server/notify/notifier.py's
``sources``) and writes the deliveries; ``adult_concern`` is called by the routes.  What a
message says is ``EventNotice`` (``notice``; same interface as message.Notice: ``email``,
``payload``).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Callable

from agent.protocol import parse_ts

from ..localtime import local_long
from ..reports.data import check_row
from ..sites import tree_of_site
from ..store import iso
from .message import compose_email
from .settings import NotifySettings

log = logging.getLogger(__name__)

COALESCE = timedelta(minutes=10)
GUARD_TYPES = ("bypass_process", "tamper")
REASONS = ("guard", "filter-check", "adult-concern")
ROLES = {"guard": ("dsl", "deputy-dsl", "technician"), "filter-check": ("technician", "dsl", "deputy-dsl"),
         "adult-concern": ("headteacher",)}
WHAT = {"bypass_process": "A bypass tool was started", "tamper": "Someone tampered with the safety software",
        "filter_check": "A filtering check failed"}


def recipients(settings: NotifySettings, tree, reason: str, site: str | None = None) -> list[tuple[str, str]]:
    """``[(channel, recipient)]`` for a message of *reason* about *site* (default: *tree*'s
    site; *tree* must be that site's own), see the module docstring."""
    site = site or (tree.site.site if tree is not None else None)
    if tree is not None and site is not None and tree.site.site != site:
        tree = None  # another school's tree: never its contacts
    out: list[tuple[str, str]] = []
    if settings.smtp is not None and tree is not None:
        out += [("email", c.email.strip().lower()) for c in tree.site.escalation.contacts
                if c.email and c.role in ROLES[reason]]
    if reason != "adult-concern":
        out += [("webhook", hook.name) for hook in settings.webhooks if hook.serves(site)]
    return list(dict.fromkeys(out))


def window_key(kind: str, device: str, start: datetime) -> str:
    """The delivery's ``alert_id`` for a coalesced message: kind, device, window start."""
    return f"{kind}:{device}:{iso(start)}"


class EventNotices:
    """Queue guard, filter-check and adult-concern messages; see the module docstring.
    A ``NoticeSource`` of the Notifier (server/notify/notifier.py)."""

    reasons = REASONS
    poll_seconds = None  # woken by its listener (``wake``), never polled

    def __init__(self, store, settings: NotifySettings, tree_source: Callable[[], object], *,
                 wake: Callable[[], None] | None = None, coalesce: timedelta = COALESCE) -> None:
        self.store = store
        self.settings = settings
        self.tree_source = tree_source
        self.wake = wake or (lambda: None)
        self.coalesce = coalesce
        self._pending: deque = deque()
        self._last: dict[tuple[str, str, str], datetime] = {}
        self.suppressed = 0

    # ------------------------------------------------------------------ ingest's thread

    def listener(self, kind: str, where, data: dict) -> None:
        if kind != "event":
            return
        etype = data.get("type")
        if etype in GUARD_TYPES or (etype == "filter_check" and data.get("ok") is False):
            self._pending.append(dict(data))
            self.wake()

    # ------------------------------------------------------------------ the notifier's thread

    def take(self, now: datetime, trees=None) -> int:
        """Queue deliveries for what arrived; returns how many messages were queued.  *trees*:
        one live tree or every school's (default ``tree_source()``); each event is told with
        its own school's."""
        queued = 0
        trees = trees if trees is not None else self.tree_source()
        while self._pending:
            event = self._pending.popleft()
            try:
                queued += self.event(event, now, tree_of_site(trees, event.get("site")))
            except Exception:  # noqa: BLE001 - one bad event must not stop the others
                log.exception("notify: could not queue a message for event %s", event.get("id"))
        return queued

    def event(self, event: dict, now: datetime, tree) -> int:
        """One guard or failed-check event: queue a message unless one went for this device and
        type in the last ``coalesce``."""
        etype = event["type"]
        reason = "guard" if etype in GUARD_TYPES else "filter-check"
        key = (event.get("site") or "", event.get("device") or "", etype)
        last = self._last.get(key)
        if last is None:
            # After a restart: the newest message about this device and type, from the store.
            since = iso(now - self.coalesce)
            prev = self.store.recent_deliveries(reason, f"{etype}:{key[1]}:", since)
            if prev:
                last = parse_ts(prev[0]["created_at"])
        if last is not None and now - last < self.coalesce:
            self.suppressed += 1
            return 0
        self._last[key] = now
        if len(self._last) > 10000:
            self._last = {k: v for k, v in self._last.items() if now - v < self.coalesce}
        targets = recipients(self.settings, tree, reason, key[0])
        if not targets:
            log.warning("notify: %s on %s: no contact or webhook to tell", etype, key[1])
            return 0
        # The window the message counts starts at the event's own time when that is believable
        # (a device clock can be wrong: never more than one window back, never in the future).
        try:
            seen = parse_ts(event.get("ts"))
        except (ValueError, TypeError):
            seen = now
        start = seen if now - self.coalesce <= seen <= now else now
        alert = {"id": window_key(etype, key[1], start), "state": etype, "site": key[0],
                 "room": event.get("room") or "", "device": key[1]}
        new = self.store.add_deliveries(alert, reason, targets, iso(now))
        if new:
            log.warning("notify: %s on %s in room %s: telling %s", etype, key[1], alert["room"],
                        ", ".join(f"{r['channel']}:{r['recipient']}" for r in new))
        return 1 if new else 0

    def notice(self, delivery: dict, tree, dashboard_url: str | None) -> "EventNotice":
        """What a delivery of one of ``REASONS`` says (the Notifier asks at each attempt)."""
        return build_notice(self.store, delivery, tree, dashboard_url)

    # ------------------------------------------------------------------ from the routes

    def adult_concern(self, incident: dict, now: datetime | None = None) -> list[dict]:
        """Tell the headteacher contacts that a concern about an adult was recorded (once per incident)."""
        now = now or datetime.now(timezone.utc)
        targets = recipients(self.settings, tree_of_site(self.tree_source(), incident["site"]), "adult-concern",
                             incident["site"])
        if not targets:
            return []
        alert = {"id": incident["id"], "state": "adult-concern", "site": incident["site"],
                 "room": incident["room"], "device": incident.get("device") or ""}
        new = self.store.add_deliveries(alert, "adult-concern", targets, iso(now))
        if new:
            self.wake()
        return new


# --------------------------------------------------------------------------- the message


@dataclass(frozen=True)
class EventNotice:
    """What a guard, filter-check or adult-concern message says.  Like message.Notice: no
    pupil names, no domains; the dashboard holds the rest."""

    reason: str
    key: str
    kind: str           # bypass_process | tamper | filter_check | adult-concern
    school: str
    room: str
    device: str
    since: str          # RFC 3339 UTC: the window's start (or the concern's time)
    count: int
    details: tuple[str, ...]
    tz: str
    dashboard_url: str | None

    @property
    def headline(self) -> str:
        if self.reason == "adult-concern":
            return "A concern about an adult has been recorded"
        place = f"{self.device} in {self.room}" if self.device else self.room
        return f"{WHAT.get(self.kind, self.kind)}: {place}"

    @property
    def link(self) -> tuple[str, str] | None:
        if not self.dashboard_url:
            return None
        base = self.dashboard_url.rstrip("/")
        if self.reason == "adult-concern":
            return "The record", f"{base}/incidents/{self.key}"
        if self.reason == "filter-check":
            return "Check log", f"{base}/checks"
        return "Guard log", f"{base}/guard?device={self.device}"

    def lines(self) -> list[str]:
        if self.reason == "adult-concern":
            out = [self.headline, "", f"School: {self.school}", f"Recorded: {local_long(self.since, self.tz)}", "",
                   "It is for the headteacher (or the chair of governors if it is about the headteacher), not the",
                   "DSL: please read it on the dashboard and speak to the LADO (policy 002 section 8.2).",
                   "This message says nothing of who or what it is about."]
        else:
            out = [self.headline, "", f"School: {self.school}", f"Room: {self.room}", f"Device: {self.device}",
                   f"First seen: {local_long(self.since, self.tz)}",
                   f"Events so far: {self.count} (one message per device per 10 minutes, however many come)"]
            out += [f"  {d}" for d in self.details[:10]]
        if self.link:
            out += ["", f"{self.link[0]}: {self.link[1]}"]
        out += ["", "This message holds no pupil names; see the dashboard.", f"({self.reason} {self.key})"]
        return out

    def email(self, sender: str, recipient: str) -> EmailMessage:
        return compose_email(self.headline, self.lines(), sender, recipient)

    def fields(self) -> dict:
        return {"event": f"classroom-safety.{self.reason}", "reason": self.reason, "headline": self.headline,
                "kind": self.kind, "school": self.school, "room": self.room, "device": self.device,
                "since": self.since, "since_local": local_long(self.since, self.tz), "count": self.count,
                "details": list(self.details[:10]), "links": dict([self.link]) if self.link else {}}

    def payload(self, fmt: str) -> dict:
        if fmt == "slack":
            text = [f"*{self.headline}*", f"{self.school}, first seen {local_long(self.since, self.tz)}, "
                    f"{self.count} event(s)."]
            if self.link:
                text.append(f"<{self.link[1]}|{self.link[0]}>")
            return {"text": "\n".join(text)}
        if fmt == "teams":
            card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                    "version": "1.4", "body": [
                        {"type": "TextBlock", "text": self.headline, "weight": "Bolder", "size": "Medium",
                         "wrap": True, "color": "Attention"},
                        {"type": "FactSet", "facts": [
                            {"title": "School", "value": self.school}, {"title": "Room", "value": self.room},
                            {"title": "Device", "value": self.device},
                            {"title": "First seen", "value": local_long(self.since, self.tz)},
                            {"title": "Events", "value": str(self.count)}]}],
                    "actions": [{"type": "Action.OpenUrl", "title": self.link[0], "url": self.link[1]}]
                    if self.link else []}
            return {"type": "message", "attachments": [
                {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}
        return self.fields()


def build_notice(store, delivery: dict, tree, dashboard_url: str | None) -> EventNotice:
    """The message for a delivery of one of ``REASONS``, from what is stored now."""
    reason, key = delivery["reason"], delivery["alert_id"]
    school = tree.site.school if tree is not None else delivery["site"]
    tz = tree.site.timezone if tree is not None else "Europe/London"
    if reason == "adult-concern":
        return EventNotice(reason, key, "adult-concern", school, delivery["room"], "", delivery["created_at"], 1,
                           (), tz, dashboard_url)
    kind, device, start = key.split(":", 2)
    start_at = parse_ts(start)
    until = iso(start_at + COALESCE)
    if kind == "filter_check":
        rows = store.filter_checks(delivery["site"], since=start, until=until, limit=50)
        rows = [r for r in rows if r["device"] == device]
        details = []
        for row in rows:
            check = check_row(row)
            details.append(f"{check['result']}: {check['details']}")
    else:
        rows = store.guard_events(delivery["site"], types=(kind,), device=device, since=start, until=until,
                                  limit=200)
        details = [_guard_detail(kind, r.get("data") or {}) for r in reversed(rows)]
    return EventNotice(reason, key, kind, school, delivery["room"], device, start, max(1, len(rows)),
                       tuple(d for d in details if d), tz, dashboard_url)


def _guard_detail(kind: str, data: dict) -> str:
    """One line about a guard event: the tool's or file's name, never who."""
    action = data.get("action") if isinstance(data.get("action"), str) else None
    for field in ("name", "process", "path", "what", "reason"):
        value = data.get(field)
        if isinstance(value, str) and value:
            return f"{field}: {value[:120]}" + (f" ({action[:40]})" if action else "")
    return ""
