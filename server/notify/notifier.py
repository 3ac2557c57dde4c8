"""The notifier: which alert transitions leave the building, to whom, and until when to retry.

Two triggers (both ingest listeners, after the transition is committed):

* **escalated**: the device's own timer fired (nobody acknowledged within
  ``escalation.timeout_seconds``).  It goes to every escalation contact with an e-mail and
  to every webhook of its school, at any time of day.
* **unwatched**: a ``raised`` in a room with no live receiver (server/presence.py) during
  school hours (site.yaml hours, terms, closures).  It goes at once to the contacts whose
  role is dsl, deputy-dsl or office, and to every webhook of its school, without waiting for the device's
  timer.  Only a report the collector first heard of within that room's escalation timeout
  and that is still unanswered counts (a retained alert replayed at a restart is old news:
  the device's own escalation covers it).
* **offsite**: a ``raised`` whose alert says ``location: offsite`` (pressed on a device away
  from the school network: at home, on a trip; agent/uplink/location.py).  Nobody in the
  room will see it, so it goes at once, at any time of day and however late it arrived
  (a device at home may have kept it queued), to the contacts whose role is
  remote-learning (site.yaml, required with ``offsite``; without one, as unwatched: dsl,
  deputy-dsl, office), and to every webhook of its school, unless it has been answered.

Each message is a delivery row (server/store/deliveries.py) unique per (alert, state,
channel, recipient), so it is queued once however often the transition is heard (a
broker's redelivery, a restart, a second collector).  One thread sends what is due: it
claims a row for ``LEASE_SECONDS``, makes one attempt, and records it (result, error with
secrets masked).  A failed attempt is tried again after 10 s, 30 s, 1, 2, 5 min and then
every ``max_interval_seconds``, until ``give_up_after_minutes`` after the first try, when
it is marked failed (audit ``notify.failed``).  A collector that restarts picks up the
pending rows where they were: nothing is sent twice that was recorded as sent, and
nothing floods (a row's next attempt time survives the restart).  A sweep every minute
queues any escalation stored without its deliveries (a collector killed between the two).

Per school: a collector may serve several (server/sites.py), so everything about an alert
is decided with the live tree of the alert's own site: its contacts (a DSL of one school
is never e-mailed about another's), its school hours, its rooms' timeouts, its time zone
in the message.  A webhook goes to every school unless the notify file limits it
(``webhooks[].sites``).  An alert of a school the collector has no tree for goes to the
unlimited webhooks only.

Messages that are not about a report come from ``sources`` (``NoticeSource``), run on the
same thread each round: server/notify/events.py (guard events, failed filter checks,
concerns about adults: queued from an ingest listener, which pokes the thread) and
server/notify/risk.py (high-risk blocked attempts: polled from the store every
``poll_seconds``, so every ingest worker's rows count).  Their deliveries are the same rows,
sent, retried and recorded the same way; each source says what its messages say, and each
message is about one school (the delivery's site) and told with that school's tree.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Callable, Protocol

from agent.config import effective_policy
from agent.protocol import parse_ts

from ..sites import tree_of_site
from ..store import iso
from .channels import DeliveryError, EmailChannel, WebhookChannel, mask
from .message import REASONS as REPORT_REASONS
from .message import Notice
from .settings import NotifySettings

log = logging.getLogger(__name__)

BACKOFF = (10.0, 30.0, 60.0, 120.0, 300.0)
LEASE_SECONDS = 180.0
SWEEP_SECONDS = 60.0
SWEEP_WINDOW = timedelta(hours=1)
ESCALATED_ROLES = ("dsl", "deputy-dsl", "headteacher", "office", "technician", "remote-learning")  # every contact
UNWATCHED_ROLES = ("dsl", "deputy-dsl", "office")
OFFSITE_ROLES = ("remote-learning",)


class NoticeSource(Protocol):
    """Another kind of message the Notifier's thread sends (server/notify/events.py: guard,
    filter-check, adult-concern; risk.py: high-risk).  ``take(now, trees)`` queues its
    deliveries (``store.add_deliveries``, the same rows as an escalation; *trees*: the one
    live tree or every school's, as ``tree_source()`` gives them: each message is told with
    its own school's) and returns how many messages it queued; ``notice(delivery, tree,
    dashboard_url)`` says what a delivery of one of its ``reasons`` says, at each attempt,
    with the delivery's own school's tree.  ``poll_seconds``: how often ``take`` must run
    even when nothing woke the thread (the store is polled), or None."""

    reasons: tuple[str, ...]
    poll_seconds: float | None

    def take(self, now: datetime, trees) -> int: ...

    def notice(self, delivery: dict, tree, dashboard_url: str | None): ...


class Notifier:
    """Escalations by e-mail and webhook.  ``listener`` goes on ingest's listeners;
    ``start()`` runs the sender thread; ``run_once()`` is one round (tests)."""

    def __init__(self, store, settings: NotifySettings, tree_source: Callable[[], object], presence, *,
                 clock: Callable[[], datetime] | None = None, backoff: tuple[float, ...] = BACKOFF,
                 lease_seconds: float = LEASE_SECONDS, sweep_seconds: float = SWEEP_SECONDS,
                 email: EmailChannel | None = None, webhooks: WebhookChannel | None = None) -> None:
        self.store = store
        self.settings = settings
        self.tree_source = tree_source
        self.presence = presence
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.backoff = tuple(min(b, settings.max_interval) for b in backoff) or (settings.max_interval,)
        self.lease = timedelta(seconds=lease_seconds)
        self.sweep_seconds = sweep_seconds
        self.channels = {}
        if email is not None or settings.smtp is not None:
            self.channels["email"] = email or EmailChannel(settings.smtp)
        if webhooks is not None or settings.webhooks:
            self.channels["webhook"] = webhooks or WebhookChannel(settings.webhooks)
        self._triggers: deque = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="notify-send")
        self._last_sweep = 0.0
        # The other kinds of message (server/notify/events.py, risk.py): each source queues
        # its deliveries on this thread and says what they say (``NoticeSource`` below).
        self.sources: list[NoticeSource] = []

    def poke(self) -> None:
        """Something was queued (or is waiting to be): run a round now."""
        self._wake.set()

    # ------------------------------------------------------------------ triggers

    def listener(self, kind: str, where, data: dict) -> None:
        """Ingest listener (network/committer thread): hand alerts to the notifier thread."""
        if kind == "alert" and data.get("state") in ("escalated", "raised"):
            self._triggers.append(dict(data))
            self._wake.set()

    def tree_for(self, site: str | None):
        """The live tree of *site* (``tree_source()`` gives one tree or every school's), or None."""
        return tree_of_site(self.tree_source(), site)

    def recipients(self, reason: str, tree, site: str | None = None) -> list[tuple[str, str]]:
        """``[(channel, recipient)]`` for a message of *reason* about *site* (default: *tree*'s)."""
        return [r for r in recipients_for(self.settings, tree, reason, site) if r[0] in self.channels]

    def _queue(self, alert: dict, reason: str, tree, now: datetime) -> list[dict]:
        targets = self.recipients(reason, tree, alert.get("site"))
        if not targets:
            log.warning("notify: %s report %s in %s: no e-mail contact or webhook to send it to", reason,
                        alert.get("id"), alert.get("room"))
            return []
        new = self.store.add_deliveries(alert, reason, targets, iso(now))
        if new:
            log.info("notify: %s report %s in room %s: queued for %s", reason, alert["id"], alert["room"],
                     ", ".join(f"{r['channel']}:{r['recipient']}" for r in new))
        return new

    def _is_unwatched(self, alert: dict, tree, now: datetime) -> bool:
        if not self.settings.send_unwatched or tree is None:
            return False
        incident = self.store.get_incident(alert["id"])
        if incident is None or incident["alert_state"] != "raised":
            return False  # answered (or escalated) already
        room = tree.rooms.get(alert["room"])
        timeout = (room.escalation_timeout_seconds if room is not None else None) \
            or tree.site.escalation.timeout_seconds
        if parse_ts(incident["created_at"]) < now - timedelta(seconds=timeout):
            return False  # old news (a retained alert heard again): the device's escalation covers it
        if not in_school_hours(tree, alert["device"], now):
            return False
        return not self.presence.is_watched(alert["site"], alert["room"])

    def _is_unanswered(self, alert: dict) -> bool:
        incident = self.store.get_incident(alert["id"])
        return incident is None or incident["alert_state"] in ("raised", "escalated")

    def _take_triggers(self, now: datetime) -> None:
        while self._triggers:
            alert = self._triggers.popleft()
            try:
                tree = self.tree_for(alert.get("site"))
                if alert["state"] == "escalated" and self.settings.send_escalated:
                    self._queue(alert, "escalated", tree, now)
                elif alert["state"] == "raised" and alert.get("location") == "offsite":
                    if self._is_unanswered(alert):
                        log.warning("notify: report %s from device %s was made off the school network; telling "
                                    "the remote-learning contact", alert["id"], alert["device"])
                        self._queue(alert, "offsite", tree, now)
                elif alert["state"] == "raised" and self._is_unwatched(alert, tree, now):
                    log.warning("notify: report %s in room %s: nobody is watching the room; telling the office "
                                "and the DSL", alert["id"], alert["room"])
                    self._queue(alert, "unwatched", tree, now)
            except Exception:  # noqa: BLE001 - one bad alert must not stop the others
                log.exception("notify: could not queue messages for report %s", alert.get("id"))

    def sweep(self, now: datetime | None = None) -> int:
        """Queue escalations stored (in the last hour) without their deliveries; returns how many."""
        if not self.settings.send_escalated:
            return 0
        now = now or self.clock()
        count = 0
        for alert in self.store.escalated_without_deliveries(iso(now - SWEEP_WINDOW)):
            tree = self.tree_for(alert["site"])
            if not self.recipients("escalated", tree, alert["site"]):
                continue  # nobody to tell: the listener already said so once per escalation
            if self._queue(alert, "escalated", tree, now):
                count += 1
        return count

    # ------------------------------------------------------------------ sending

    def _notice(self, delivery: dict, tree):
        """What *delivery* says: a source's message for its reasons, else a report's ``Notice``."""
        reason = delivery["reason"]
        if reason not in REPORT_REASONS:
            source = next((s for s in self.sources if reason in s.reasons), None)
            if source is None:
                raise DeliveryError(f"no message for {reason!r} deliveries on this collector")
            dashboard = self.settings.dashboard_url or (str(tree.site.collector.url) if tree is not None else None)
            return source.notice(delivery, tree, dashboard)
        incident = self.store.get_incident(delivery["alert_id"]) or {}
        timeline = incident.get("timeline") or []
        by = next((t["by"] for t in reversed(timeline) if t.get("by")), None)
        room = tree.rooms.get(delivery["room"]) if tree is not None else None
        dashboard = self.settings.dashboard_url or (str(tree.site.collector.url) if tree is not None else None)
        return Notice(reason=delivery["reason"], alert_id=delivery["alert_id"], state=delivery["state"],
                      school=tree.site.school if tree is not None else delivery["site"], site=delivery["site"],
                      room=delivery["room"], room_name=(room.name if room is not None and room.name else delivery["room"]),
                      device=delivery["device"], seat=incident.get("seat"),
                      raised_at=incident.get("raised_at") or "", status_now=incident.get("alert_state") or delivery["state"],
                      by=by, tz=tree.site.timezone if tree is not None else "Europe/London", dashboard_url=dashboard)

    def attempt(self, delivery: dict, now: datetime | None = None) -> dict:
        """One attempt at a claimed delivery; records and returns the attempt row."""
        now = now or self.clock()
        channel = self.channels.get(delivery["channel"])
        error = None
        try:
            if channel is None:
                raise DeliveryError(f"no {delivery['channel']} channel in the notify file any more")
            channel.send(delivery["recipient"], self._notice(delivery, self.tree_for(delivery["site"])))
        except DeliveryError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must not lose the delivery: record and retry
            error = mask(f"{type(exc).__name__}: {exc}", self.settings.secrets)
            log.exception("notify: unexpected error sending %s", delivery["id"])
        attempts = int(delivery.get("attempts") or 0) + 1
        first = parse_ts(delivery["created_at"])
        give_up = error is not None and (channel is None or now - first >= timedelta(seconds=self.settings.give_up_after))
        wait = self.backoff[min(attempts - 1, len(self.backoff) - 1)] if attempts <= len(self.backoff) \
            else self.settings.max_interval
        record = self.store.record_attempt(delivery["id"], sent=error is None, error=error,
                                           next_attempt_at=iso(now + timedelta(seconds=wait)), give_up=give_up)
        label = f"{delivery['reason']} report {delivery['alert_id']} to {delivery['channel']}:{delivery['recipient']}"
        if error is None:
            log.info("notify: sent %s (attempt %d)", label, attempts)
        elif give_up:
            log.error("notify: gave up on %s after %d attempts: %s", label, attempts, error)
            self.store.audit("system", "notify.failed", delivery["alert_id"],
                             {"channel": delivery["channel"], "recipient": delivery["recipient"],
                              "attempts": attempts, "error": error}, site=delivery["site"])
        else:
            log.warning("notify: %s failed (attempt %d, next in %.0fs): %s", label, attempts, wait, error)
        return record

    def _send_due(self, now: datetime) -> int:
        due = self.store.due_deliveries(iso(now))
        claimed = []
        for row in due:
            got = self.store.claim_delivery(row["id"], iso(now), iso(now + self.lease))
            if got is not None:
                claimed.append(got)
        # In parallel: an SMTP server that hangs must not hold up the webhooks (or other mail).
        for future in [self._pool.submit(self.attempt, row, now) for row in claimed]:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - the claim runs out and it is tried again
                log.exception("notify: recording an attempt failed")
        return len(claimed)

    def run_once(self, now: datetime | None = None) -> int:
        """Queue what the triggers (and, once a minute, the sweep) call for, then try what is due.
        Returns how many attempts were made."""
        now = now or self.clock()
        self._take_triggers(now)
        for source in self.sources:
            try:
                source.take(now, self.tree_source())
            except Exception:  # noqa: BLE001 - one source must not stop the escalations
                log.exception("notify: %s failed", type(source).__name__)
        if now.timestamp() - self._last_sweep >= self.sweep_seconds:
            self._last_sweep = now.timestamp()
            try:
                self.sweep(now)
            except Exception:  # noqa: BLE001
                log.exception("notify: sweep failed")
        return self._send_due(now)

    # ------------------------------------------------------------------ the thread

    def _seconds_to_next(self) -> float:
        polls = [s.poll_seconds for s in self.sources if s.poll_seconds]
        longest = min([self.sweep_seconds, *polls])
        due = self.store.next_delivery_due()
        if due is None:
            return longest
        left = (parse_ts(due) - self.clock()).total_seconds()
        return max(0.05, min(left, longest))

    def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before the round: a trigger that arrives during it wakes the next wait.
            self._wake.clear()
            try:
                self.run_once()
                wait = self._seconds_to_next()
            except Exception:  # noqa: BLE001 - the store may be down: try again soon
                log.exception("notify: round failed")
                wait = 5.0
            self._wake.wait(wait)

    def start(self) -> "Notifier":
        channels = ", ".join(self.channels) or "no channel"
        log.info("notify: escalations by %s (%s)", channels, self.settings.path or "settings")
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)


def recipients_for(settings: NotifySettings, tree, reason: str, site: str | None = None) -> list[tuple[str, str]]:
    """``[(channel, recipient)]`` for a message about a report of *site* (default: *tree*'s
    site; *tree* must be that site's own): the escalation contacts in *tree* with an e-mail
    whose role suits *reason* (every contact for ``escalated``; dsl, deputy-dsl and office for
    ``unwatched``; remote-learning for ``offsite``, or the unwatched ones if the school has
    none), then every webhook for that school (``sites`` empty, or naming it)."""
    out: list[tuple[str, str]] = []
    site = site or (tree.site.site if tree is not None else None)
    if tree is not None and site is not None and tree.site.site != site:
        tree = None  # another school's tree: never its contacts
    if settings.smtp is not None and tree is not None:
        roles = ESCALATED_ROLES if reason == "escalated" else UNWATCHED_ROLES
        if reason == "offsite" and any(c.role in OFFSITE_ROLES for c in tree.site.escalation.contacts):
            roles = OFFSITE_ROLES
        out += [("email", c.email.strip().lower()) for c in tree.site.escalation.contacts
                if c.email and c.role in roles]
    out += [("webhook", hook.name) for hook in settings.webhooks if hook.serves(site)]
    return list(dict.fromkeys(out))


def in_school_hours(tree, device: str | None, now: datetime) -> bool:
    """Site school hours, terms and closures at *now* (the same rule devices lock by)."""
    try:
        return effective_policy(tree, device or "", now).in_school_hours
    except KeyError:
        # A device not (or no longer) in the tree: the site's hours are the same for every device.
        known = tree.device_ids()
        return effective_policy(tree, known[0], now).in_school_hours if known else True
