"""Weekly reports, the numbers: the school week, and the report built from a week's rows.

One report per school week (Monday 00:00 to Monday 00:00, school local time):

* the denied/blocked list per room and key stage (the policies ask for "weekly
  denied/blocked lists");
* over-blocking candidates: the most-requested blocked domains ("avoid over-blocking":
  a domain many pupils keep asking for is probably one a lesson needs);
* attempts by risk list (the ``category`` a device tagged a blocked attempt with,
  agent/filter/risk.py): self-harm, adult content, extremism... counted, never named;
* an incidents summary (counts only: no pupil detail in a digest; the counts by category
  and status are the DSL's, ``for_role`` leaves them out for everyone else);
* guard events (bypass tools, tampering, removable media, shared logins) counted per
  type, room and device (who was involved stays in the guard log, server/store/guard.py);
* the filtering check log (``filter_check`` events: who checked, when, what, result), with
  the actions staff recorded against each.

Building the report (``build``) works on plain rows, so the numbers are tested without a
server; ``collect`` reads those rows through the store (the SQL is in server/store/).
Turning a report into HTML, SVG and CSV is render.py's job.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from agent.protocol import now_ts

TOP_DOMAINS = 20


# --------------------------------------------------------------------------- weeks


@dataclass(frozen=True)
class Week:
    """A school week, Monday to Monday in the school's time zone."""

    monday: date
    tz: str = "Europe/London"

    @classmethod
    def containing(cls, moment: datetime, tz: str = "Europe/London") -> "Week":
        local = moment.astimezone(ZoneInfo(tz)).date()
        return cls(local - timedelta(days=local.weekday()), tz)

    @classmethod
    def parse(cls, key: str, tz: str = "Europe/London") -> "Week":
        """``2026-W47`` (ISO week) or any date inside the week (``2026-11-18``)."""
        try:
            if "-W" in key:
                year, week = key.split("-W")
                return cls(date.fromisocalendar(int(year), int(week), 1), tz)
            day = date.fromisoformat(key)
        except ValueError:
            raise ValueError(f"week: {key!r} is not an ISO week (2026-W47) or a date (2026-11-18)") from None
        return cls(day - timedelta(days=day.weekday()), tz)

    @property
    def key(self) -> str:
        year, week, _ = self.monday.isocalendar()
        return f"{year}-W{week:02d}"

    def _utc(self, day: date) -> datetime:
        return datetime.combine(day, time(0), ZoneInfo(self.tz)).astimezone(timezone.utc)

    @property
    def start(self) -> datetime:
        return self._utc(self.monday)

    @property
    def end(self) -> datetime:
        return self._utc(self.monday + timedelta(days=7))

    @property
    def start_ts(self) -> str:
        # Same text form as every stored ts, so ranges compare as text on both engines.
        return now_ts(self.start)

    @property
    def end_ts(self) -> str:
        return now_ts(self.end)

    def previous(self) -> "Week":
        return Week(self.monday - timedelta(days=7), self.tz)

    @property
    def label(self) -> str:
        last = self.monday + timedelta(days=6)
        return f"{self.key} ({self.monday:%d %b} to {last:%d %b %Y})"


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    week: Week
    site: str
    # (room, key_stage) -> {"attempts", "domains", "devices"}
    by_room: list[dict] = field(default_factory=list)
    # the denied/blocked list: room, key_stage, domain, attempts, devices, first, last
    blocked: list[dict] = field(default_factory=list)
    overblocking: list[dict] = field(default_factory=list)
    # attempts per risk list: category, attempts, devices, rooms
    by_category: list[dict] = field(default_factory=list)
    incidents: dict[str, Any] = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    # guard events: {type, room, device, n}
    guard: list[dict] = field(default_factory=list)
    generated_at: str = ""

    @property
    def total_attempts(self) -> int:
        return sum(r["attempts"] for r in self.by_room)


def _count(row: dict, data: dict | None = None) -> int:
    """A coalesced blocked event carries a count (DESIGN: filtering.coalesce_seconds).
    *data*: the row's data already parsed (``_data``), so a year's rows are parsed once."""
    if data is None:
        data = _data(row)
    value = data.get("count")
    if value is None:
        value = row.get("count")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _data(row: dict) -> dict:
    data = row.get("data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return {}
    return data if isinstance(data, dict) else {}


def build(week: Week, site: str, blocked_rows: Iterable[dict], incident_rows: Iterable[dict],
          check_rows: Iterable[dict], *, top: int = TOP_DOMAINS, generated_at: str | None = None,
          guard_rows: Iterable[dict] = (), check_actions: dict[str, list] | None = None) -> Report:
    """Aggregate plain rows (already limited to *week*) into a Report.

    blocked_rows: events of type blocked (room, profile, domain, device, ts, data/count);
    incident_rows: incidents (room, category, status, alert_state, raised_at);
    check_rows: events of type filter_check (ts, room, device, user_name, domain, data).
    """
    per_room: dict[tuple, dict] = {}
    per_domain: dict[tuple, dict] = {}
    overall: dict[str, dict] = {}
    per_category: dict[str, dict] = {}
    for row in blocked_rows:
        room, ks, domain = row.get("room") or "?", row.get("profile") or "?", row.get("domain") or "?"
        data = _data(row)
        n = _count(row, data)
        ts = row.get("ts") or ""
        # A coalesced event spans first_seen..last_seen; fall back to its ts.
        first = data.get("first_seen") if isinstance(data.get("first_seen"), str) else ts
        last = data.get("last_seen") if isinstance(data.get("last_seen"), str) else ts
        agg = per_room.setdefault((room, ks), {"room": room, "key_stage": ks, "attempts": 0,
                                               "domains": set(), "devices": set()})
        agg["attempts"] += n
        agg["domains"].add(domain)
        agg["devices"].add(row.get("device"))
        item = per_domain.setdefault((room, ks, domain), {"room": room, "key_stage": ks, "domain": domain,
                                                          "attempts": 0, "devices": set(), "first": first,
                                                          "last": last})
        item["attempts"] += n
        item["devices"].add(row.get("device"))
        item["first"] = min(item["first"], first)
        item["last"] = max(item["last"], last)
        o = overall.setdefault(domain, {"domain": domain, "attempts": 0, "devices": set(), "rooms": set(),
                                        "key_stages": set()})
        o["attempts"] += n
        o["devices"].add(row.get("device"))
        o["rooms"].add(room)
        o["key_stages"].add(ks)
        category = row.get("category") or data.get("category")
        if isinstance(category, str) and category:
            c = per_category.setdefault(category, {"category": category, "attempts": 0, "devices": set(),
                                                   "rooms": set()})
            c["attempts"] += n
            c["devices"].add(row.get("device"))
            c["rooms"].add(room)

    by_room = [{**a, "domains": len(a["domains"]), "devices": len(a["devices"])}
               for a in sorted(per_room.values(), key=lambda a: (a["room"], a["key_stage"]))]
    blocked = [{**b, "devices": len(b["devices"])}
               for b in sorted(per_domain.values(), key=lambda b: (b["room"], b["key_stage"], -b["attempts"],
                                                                   b["domain"]))]
    over = sorted(overall.values(), key=lambda o: (-o["attempts"], -len(o["devices"]), o["domain"]))[:top]
    overblocking = [{"domain": o["domain"], "attempts": o["attempts"], "devices": len(o["devices"]),
                     "rooms": ", ".join(sorted(o["rooms"])), "key_stages": ", ".join(sorted(o["key_stages"]))}
                    for o in over]

    by_category = [{"category": c["category"], "attempts": c["attempts"], "devices": len(c["devices"]),
                    "rooms": ", ".join(sorted(c["rooms"]))}
                   for c in sorted(per_category.values(), key=lambda c: (-c["attempts"], c["category"]))]

    incidents = list(incident_rows)
    summary = {
        "total": len(incidents),
        "open": sum(1 for i in incidents if (i.get("status") or "open") != "closed"),
        "by_category": sorted(Counter(i.get("category") or "not yet categorised" for i in incidents).items()),
        "by_room": sorted(Counter(i.get("room") or "?" for i in incidents).items()),
        "by_status": sorted(Counter(i.get("status") or "open" for i in incidents).items()),
    }

    checks = [{**check_row(row), "actions": (check_actions or {}).get(row.get("id"), [])}
              for row in sorted(check_rows, key=lambda r: r.get("ts") or "")]
    guard = [{"type": g["type"], "room": g.get("room") or "?", "device": g.get("device") or "?", "n": int(g["n"])}
             for g in guard_rows]
    return Report(week=week, site=site, by_room=by_room, blocked=blocked, overblocking=overblocking,
                  by_category=by_category, incidents=summary, checks=checks, guard=guard,
                  generated_at=generated_at or now_ts())


# The incident counts only the DSL may see: they are made of the DSL's record (category,
# status), which docs/data-protection.md keeps from everyone else (server/incidents.py).
DSL_ONLY_INCIDENT_COUNTS = ("open", "by_category", "by_status")


def for_role(report: Report, role: str) -> Report:
    """The report as *role* sees it: the DSL all of it; anyone else (technicians, admins,
    the e-mailed and written digest) without DSL_ONLY_INCIDENT_COUNTS."""
    if role == "dsl":
        return report
    incidents = {k: v for k, v in report.incidents.items() if k not in DSL_ONLY_INCIDENT_COUNTS}
    return replace(report, incidents=incidents)


def check_row(row: dict) -> dict:
    """One line of the filtering check log from a ``filter_check`` event.

    The agent's check (agent/filter/check.py) sends one event per run: ``by``, ``profile``,
    ``ok``, ``passed``, ``failed`` and ``results`` (domain, expect, rcode, result); a
    single-domain form (``domain``, ``expected``, ``result``) is read too."""
    data = _data(row)
    who = data.get("by") or row.get("user_name") or data.get("user") or "?"
    results = data.get("results") if isinstance(data.get("results"), list) else None
    if results is not None:
        items = [r for r in results if isinstance(r, dict)]
        failed = [str(r.get("domain")) for r in items if r.get("result") != "pass"]
        what = f"{len(items)} test domains ({data.get('profile') or row.get('profile') or '?'})"
        ok = data.get("ok") if isinstance(data.get("ok"), bool) else not failed
        result = "pass" if ok else "fail"
        details = ("not as expected: " + ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")) \
            if failed else f"all {len(items)} as expected"
    else:
        what = row.get("domain") or data.get("domain") or data.get("url") or "?"
        result = data.get("result")
        if result is None and isinstance(data.get("ok"), bool):
            result = "pass" if data["ok"] else "fail"
        result = str(result or "?")
        details = f"expected {data['expected']}" if data.get("expected") else ""
    return {"ts": row.get("ts") or "", "who": who, "room": row.get("room") or "?", "device": row.get("device") or "?",
            "what": what, "result": result, "details": details}


# --------------------------------------------------------------------------- from the store


def collect(store, week: Week, site: str | None = None, *, top: int = TOP_DOMAINS) -> Report:
    """Read the week's rows of *site* (one school's; None or "": every row) from the store
    and build the report."""
    blocked = store.blocked_between(week.start_ts, week.end_ts, site or None)
    checks = store.filter_checks_between(week.start_ts, week.end_ts, site or None)
    incidents = store.incidents_raised_between(week.start_ts, week.end_ts, site or None)
    guard = store.guard_counts_between(site or None, week.start_ts, week.end_ts)
    actions = store.check_actions_for(site or "", [c["id"] for c in checks if c.get("id")])
    return build(week, site or "", blocked, incidents, checks, top=top, guard_rows=guard, check_actions=actions)
