"""High-risk blocked attempts, at once: the DSL hears of them through the escalation channels.

A device tags a blocked lookup with the risk list it matched (agent/filter/risk.py); the
lists with ``notify`` (site.yaml ``filtering.risk_lists``) are high-risk.  ``RiskNotices``
polls the store for such events as they are stored, by whichever ingest worker in
whichever process (a listener would only hear its own process's), twice a second (a
keyset cursor on ``received_at``, id; every ``CATCHUP_SECONDS`` it also looks again at the
last ``OVERLAP``, for a batch another worker committed late), and
queues a ``high-risk`` delivery for each (device, list) whose window is free: **at most one
message per device per risk list per ``COALESCE`` (10 minutes)**, however many attempts
come; the window is taken in the store (``take_risk_window``: one conditional upsert), so
two collectors or a restart never send a second one.  It is one of the Notifier's
``sources`` (server/notify/notifier.py ``NoticeSource``): its ``take`` runs on the
Notifier's thread every ``poll_seconds``, and the message goes like any escalation: same
channels, delivery records, retries.

Who: the escalation contacts whose role is dsl or deputy-dsl (e-mail), and every webhook.
Per school (server/sites.py): an attempt is told only if a risk list of its own school
notifies, to that school's contacts and the webhooks serving that school
(``webhooks[].sites``); a DSL never hears of another school's pupils' attempts.
What (``RiskNotice``): the school, room, seat, device, the list's name, when the first
attempt was and how many there have been since.  Never the domain, never who was logged
in: the message leaves the school's systems; the DSL reads the rest on the dashboard's
blocked-attempt page (the link goes straight to that device and list).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Callable
from urllib.parse import urlencode

from agent.protocol import parse_ts

from ..localtime import local_long
from ..sites import trees_of
from ..store import iso
from .message import compose_email
from .settings import NotifySettings

log = logging.getLogger(__name__)

REASON = "high-risk"
STATE = "high-risk"
COALESCE = timedelta(minutes=10)
POLL_SECONDS = 0.5
# Two ingest workers can commit out of order: every CATCHUP_SECONDS, look again this far
# behind the cursor (rows already handled are remembered and skipped).
OVERLAP = timedelta(seconds=30)
CATCHUP_SECONDS = 10.0
PAGE = 1000
ROLES = ("dsl", "deputy-dsl")


def notifying(tree) -> dict[str, str]:
    """``{list id: name}`` of the risk lists that tell the DSL at once."""
    if tree is None:
        return {}
    return {r.id: r.name for r in tree.site.filtering.risk_lists if r.notify}


def recipients(settings: NotifySettings, tree, site: str | None = None) -> list[tuple[str, str]]:
    """``[(channel, recipient)]`` for an attempt at *site* (default: *tree*'s; *tree* must be
    that site's own): its dsl and deputy-dsl contacts with an e-mail, then every webhook
    serving that school."""
    site = site or (tree.site.site if tree is not None else None)
    if tree is not None and site is not None and tree.site.site != site:
        tree = None  # another school's tree: never its contacts
    out: list[tuple[str, str]] = []
    if settings.smtp is not None and tree is not None:
        out += [("email", c.email.strip().lower()) for c in tree.site.escalation.contacts
                if c.email and c.role in ROLES]
    out += [("webhook", hook.name) for hook in settings.webhooks if hook.serves(site)]
    return list(dict.fromkeys(out))


def delivery_key(device: str, category: str, event_id: str) -> str:
    """A high-risk delivery's ``alert_id``: the device, the list and the first event of its window."""
    return f"{REASON}:{device}:{category}:{event_id}"


class RiskNotices:
    """Queue ``high-risk`` deliveries for new high-risk blocked events (see the module docstring).

    *clock*: the collector's time (the coalescing window is the collector's, not a device's
    clock, which may be wrong) when ``take`` is not told the time."""

    reasons = (REASON,)

    def __init__(self, store, settings: NotifySettings, tree_source: Callable[[], object], *,
                 clock: Callable[[], datetime] | None = None, coalesce: timedelta = COALESCE,
                 poll_seconds: float = POLL_SECONDS, lookback: timedelta = timedelta(minutes=10)) -> None:
        self.store = store
        self.settings = settings
        self.tree_source = tree_source
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.coalesce = coalesce
        self.poll_seconds = poll_seconds
        # received_at is the server's real time whatever *clock* says (tests move *clock*).
        self._cursor: tuple[str, str] = (iso(datetime.now(timezone.utc) - lookback), "")
        self._last_catchup = 0.0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.suppressed = 0   # attempts inside an open window (no message: the window's message covers them)
        self.queued = 0

    # ------------------------------------------------------------------ one round

    def take(self, now: datetime | None = None, trees=None) -> int:
        """Read what was stored since the last round and queue messages; returns how many were
        queued.  *trees*: one live tree or every school's (default ``tree_source()``): each
        attempt is judged by its own school's risk lists and told to its own school."""
        schools = {t.site.site: t for t in trees_of(trees if trees is not None else self.tree_source())}
        lists = {site: notifying(t) for site, t in schools.items()}
        categories = sorted({c for school in lists.values() for c in school})
        if not categories or not self.settings.send_high_risk:
            return 0
        now = now or self.clock()
        queued = self._scan(self._cursor, categories, lists, now, schools, advance=True)
        if time.monotonic() - self._last_catchup >= CATCHUP_SECONDS:
            self._last_catchup = time.monotonic()
            behind = iso(parse_ts(self._cursor[0], "received_at") - OVERLAP)
            queued += self._scan((behind, ""), categories, lists, now, schools, advance=False)
        return queued

    def _scan(self, start: tuple[str, str], categories: list[str], lists: dict[str, dict[str, str]], now: datetime,
              schools: dict, *, advance: bool) -> int:
        queued = 0
        cursor = start
        while True:
            rows = self.store.high_risk_received(categories, cursor, PAGE)
            for row in rows:
                if row["id"] in self._seen:
                    continue
                self._remember(row["id"])
                school = lists.get(row["site"], {})
                if row["category"] not in school:
                    continue  # a list that notifies at another school, not at this attempt's own
                try:
                    queued += self.event(row, now, schools.get(row["site"]), school)
                except Exception:  # noqa: BLE001 - one bad row must not stop the others
                    log.exception("notify: could not queue a high-risk message for event %s", row.get("id"))
            if rows:
                cursor = (rows[-1]["received_at"], rows[-1]["id"])
                if advance:
                    self._cursor = cursor
            if len(rows) < PAGE:
                return queued

    def event(self, row: dict, now: datetime, tree, lists: dict[str, str]) -> int:
        """One high-risk event of *tree*'s school (*lists*: its notifying lists): a message
        unless this device's window for the list is open."""
        if not self.store.take_risk_window(row["site"], row["device"], row["category"], iso(now),
                                           iso(now - self.coalesce)):
            self.suppressed += 1
            return 0
        targets = recipients(self.settings, tree, row["site"])
        if not targets:
            log.warning("notify: high-risk attempt (%s) on %s: no DSL e-mail or webhook to tell", row["category"],
                        row["device"])
            return 0
        alert = {"id": delivery_key(row["device"], row["category"], row["id"]), "state": STATE,
                 "site": row["site"], "room": row["room"], "device": row["device"]}
        new = self.store.add_deliveries(alert, REASON, targets, iso(now))
        if new:
            log.warning("notify: high-risk attempt (%s) on %s in room %s: telling %s", lists.get(row["category"]),
                        row["device"], row["room"], ", ".join(f"{r['channel']}:{r['recipient']}" for r in new))
            self.queued += 1
        return 1 if new else 0

    def _remember(self, event_id: str) -> None:
        self._seen[event_id] = None
        while len(self._seen) > 20000:
            self._seen.popitem(last=False)

    # ------------------------------------------------------------------ the message

    def notice(self, delivery: dict, tree, dashboard_url: str | None) -> "RiskNotice":
        """What a ``high-risk`` delivery says, from what is stored now (the Notifier asks at each attempt)."""
        _, device, category, event_id = delivery["alert_id"].split(":", 3)
        event = self.store.get_event(event_id) or {}
        first = event.get("ts") or delivery["created_at"]
        count = self.store.count_blocked(delivery["site"], device, category, first) or 1
        lists = {r.id: r.name for r in tree.site.filtering.risk_lists} if tree is not None else {}
        room = tree.rooms.get(delivery["room"]) if tree is not None else None
        try:
            seat = tree.find_device(device)[1].seat if tree is not None else None
        except KeyError:
            seat = None  # no longer in the config: the device id still says which it was
        return RiskNotice(school=tree.site.school if tree is not None else delivery["site"], site=delivery["site"],
                          room=delivery["room"], room_name=room.name if room is not None else delivery["room"],
                          device=device, seat=seat or None, category=category,
                          category_name=lists.get(category, category), first_at=first, attempts=count,
                          tz=tree.site.timezone if tree is not None else "Europe/London",
                          dashboard_url=dashboard_url, key=delivery["alert_id"])


@dataclass(frozen=True)
class RiskNotice:
    """A high-risk message: the same interface as message.Notice (``email``, ``payload``)."""

    school: str
    site: str
    room: str
    room_name: str
    device: str
    seat: str | None
    category: str
    category_name: str
    first_at: str          # RFC 3339 UTC: the first attempt of the window
    attempts: int
    tz: str
    dashboard_url: str | None
    key: str

    @property
    def where(self) -> str:
        room = self.room if self.room_name in ("", self.room) else f"{self.room_name} ({self.room})"
        return f"{room}, {self.seat}" if self.seat else room

    @property
    def headline(self) -> str:
        return f"High-risk blocked attempt ({self.category_name}): {self.where}"

    @property
    def links(self) -> list[tuple[str, str]]:
        if not self.dashboard_url:
            return []
        query = urlencode({"device": self.device, "category": self.category})
        return [("Blocked attempts (DSL)", f"{self.dashboard_url.rstrip('/')}/blocked?{query}")]

    def lines(self) -> list[str]:
        out = [self.headline, "", f"School: {self.school}", f"Room: {self.where}", f"Device: {self.device}",
               f"Risk list: {self.category_name}", f"First attempt: {local_long(self.first_at, self.tz)}",
               f"Attempts so far: {self.attempts}", "",
               "The device blocked it. At most one message per device and list every 10 minutes;",
               "every attempt is on the dashboard."]
        if self.links:
            out.append("")
            out.extend(f"{label}: {url}" for label, url in self.links)
        out += ["", "This message holds no pupil names and no web addresses; see the dashboard.", f"({self.key})"]
        return out

    def email(self, sender: str, recipient: str) -> EmailMessage:
        return compose_email(self.headline, self.lines(), sender, recipient,
                             {"X-Classroom-High-Risk": f"{self.device} {self.category}"})

    def fields(self) -> dict:
        return {"event": "classroom-safety.high-risk", "reason": REASON, "headline": self.headline,
                "school": self.school, "site": self.site, "room": self.room, "room_name": self.room_name,
                "device": self.device, "seat": self.seat, "category": self.category,
                "category_name": self.category_name, "first_at": self.first_at,
                "first_local": local_long(self.first_at, self.tz), "attempts": self.attempts, "timezone": self.tz,
                "links": {label: url for label, url in self.links}}

    def payload(self, fmt: str) -> dict:
        if fmt == "slack":
            text = [f"*{self.headline}*", f"First attempt {local_long(self.first_at, self.tz)} at {self.school}; "
                    f"{self.attempts} so far."]
            text += [f"<{url}|{label}>" for label, url in self.links]
            return {"text": "\n".join(text)}
        if fmt == "teams":
            card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                    "version": "1.4", "body": [
                        {"type": "TextBlock", "text": self.headline, "weight": "Bolder", "size": "Medium",
                         "wrap": True, "color": "Attention"},
                        {"type": "FactSet", "facts": [
                            {"title": "School", "value": self.school}, {"title": "Room", "value": self.where},
                            {"title": "Device", "value": self.device},
                            {"title": "Risk list", "value": self.category_name},
                            {"title": "First attempt", "value": local_long(self.first_at, self.tz)},
                            {"title": "Attempts", "value": str(self.attempts)}]}],
                    "actions": [{"type": "Action.OpenUrl", "title": label, "url": url} for label, url in self.links]}
            return {"type": "message", "attachments": [
                {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}
        return self.fields()
