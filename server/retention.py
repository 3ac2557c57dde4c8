"""Retention: delete stored data when its time is up (site.yaml ``retention``), and say so.

Each table has a time to live from ``site.retention``: short for heartbeats and blocked
attempts, longer for other device events, DSL-controlled for incidents (kept until the
DSL deletes them unless ``incidents_days`` is set; only CLOSED incidents are ever
purged, together with their timeline, notes and evidence), years for the audit log.
A device the DSL holds (server/holds.py) keeps everything from 24 h before the press
until the hold is lifted (policy 000 §11.4; the SQL: server/store/holds.py).
Every purge that deletes something is written to the audit log (actor ``system``), so
a DPIA reviewer can see data really goes.  ``Retention.run(now)`` is one pass; the
server calls it daily.  The DELETE statements are in server/store/retention.py.

Each school sets its own periods: a collector serving several schools (server/sites.py)
purges each school's rows by that school's ``site.yaml`` and audits each purge under
that site; what belongs to no school (sessions, sign-on flows, collector-wide audit
entries) goes by the longest period any school sets.  A collector serving one school
purges every row by its one policy.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

from .sites import trees_of
from .store import Store, iso

log = logging.getLogger(__name__)

# Events kept with their incident, not by events_days: the DSL's evidence.
INCIDENT_EVENT_TYPES = ("report_evidence",)
SHORT_EVENT_TYPES = ("blocked",)
# Messages that are not about an incident (server/notify/risk.py), kept like the attempts
# they were about.
BLOCKED_DELIVERY_REASONS = ("high-risk",)
# The DfE filtering check log and every change to the filtering policy (teacher overrides)
# are records of the school's own diligence: kept as long as the audit log.
AUDIT_EVENT_TYPES = ("filter_check", "override_opened", "override_closed", "override_rejected")


class Retention:
    def __init__(self, store: Store, tree_source: Callable[[], object], interval: float = 86400.0) -> None:
        self.store = store
        self.tree_source = tree_source
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, now: datetime | None = None) -> dict[str, int]:
        """One purge pass; returns rows deleted per rule (summed over schools)."""
        trees = trees_of(self.tree_source())
        if not trees:
            return {}
        now = now or datetime.now(timezone.utc)

        def cutoff(days: int) -> str:
            return iso(now - timedelta(days=days))

        total: dict[str, int] = {}
        one_school = len(trees) == 1
        for tree in trees:
            site = None if one_school else tree.site.site
            r = tree.site.retention
            done: dict[str, int] = {}
            done["heartbeats"] = self.store.purge("heartbeats", cutoff(r.heartbeats_days), site)
            done["blocked_events"] = self.store.purge_events(cutoff(r.blocked_days), types=SHORT_EVENT_TYPES,
                                                             site=site)
            done["audit_events"] = self.store.purge_events(cutoff(r.audit_days), types=AUDIT_EVENT_TYPES, site=site)
            done["events"] = self.store.purge_events(
                cutoff(r.events_days), except_types=SHORT_EVENT_TYPES + INCIDENT_EVENT_TYPES + AUDIT_EVENT_TYPES,
                site=site)
            done["device_alerts"] = self.store.purge_cleared_device_alerts(cutoff(r.events_days), site)
            # A teacher's room commands and the office's cover go with the device events (each
            # command is also in the audit log, kept for audit_days).
            done["room_commands"] = self.store.purge("room_commands", cutoff(r.events_days), site)
            done["cover"] = self.store.purge("cover", cutoff(r.events_days), site)
            done["enrol_tokens"] = self.store.purge("enrol_tokens", cutoff(30), site)
            done["audit"] = self.store.purge("audit", cutoff(r.audit_days), site)
            # The school's own diligence (DfE standard): the export log, allowlist change log,
            # reviews, check actions and test runs are kept as long as the audit log.
            for table in ("exports", "allowlist_changes", "reviews", "check_actions", "filter_tests"):
                done[table] = self.store.purge(table, cutoff(r.audit_days), site)
            # IT queue items once done, and acceptable-use acceptances, as long as other events.
            done["it_queue"] = self.store.purge("it_queue", cutoff(r.events_days), site)
            done["aup_acceptances"] = self.store.purge("aup_acceptances", cutoff(r.events_days), site)
            # Messages about guard events and failed checks belong to no incident: as long as the events.
            done["notice_deliveries"] = self.store.purge_notice_deliveries(cutoff(r.events_days),
                                                                           ("guard", "filter-check"), site)
            # High-risk messages: as long as the blocked attempts they were about.
            done["high_risk_messages"] = self.store.purge_notice_deliveries(cutoff(r.blocked_days),
                                                                            BLOCKED_DELIVERY_REASONS, site)
            # Lifted holds are a record of the school's own action: as long as the audit log.
            done["holds"] = self.store.purge("holds", cutoff(r.audit_days), site)
            done["risk_windows"] = self.store.purge("risk_windows", cutoff(1), site)
            if r.incidents_days:
                done["incidents"] = self.store.purge_closed_incidents(cutoff(r.incidents_days), INCIDENT_EVENT_TYPES,
                                                                      site)
            self._audit(done, tree.site.site, total)
        # What belongs to no school.
        done = {"sessions": self.store.purge("sessions", iso(now)),
                "oidc_flows": self.store.purge("oidc_flows", iso(now))}
        if not one_school:
            longest = max(t.site.retention.audit_days for t in trees)
            done["audit"] = self.store.purge_collector_audit(cutoff(longest))
        self._audit(done, None, total)
        if total:
            log.info("retention: purged %s", ", ".join(f"{k}={v}" for k, v in total.items()))
        return total

    def _audit(self, done: dict[str, int], site: str | None, total: dict[str, int]) -> None:
        for rule, count in done.items():
            if count:
                self.store.audit("system", "retention.purge", rule, {"rows": count}, site=site)
                total[rule] = total.get(rule, 0) + count

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self.run()
            except Exception:  # noqa: BLE001 - try again tomorrow
                log.exception("retention pass failed")
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
