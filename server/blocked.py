"""The blocked-attempt log as staff search it: filters, who sees which column, CSV.

The DfE filtering standard asks that blocked attempts can be traced to a device and a
user: every row has the device, its IP, the logged-in user, the time, the domain and how
many attempts it stands for (``count``: the device coalesces repeats), plus the key-stage
profile and the risk list it matched (``category``, agent/filter/risk.py).

Who sees what (docs/data-protection.md): the DSL sees every column and may search by
pupil; a technician (over-blocking, device trouble) gets the same log without the user
column and may not search by user.  Every search is written to the audit log with which
filters were used, never their values (admins read the audit log).

``search(store, site, tz, role, filters)`` is what the API (server/http/api/blocked.py)
and the dashboard page (server/web/pages/blocked.py) both call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from agent.config.schema import is_domain
from agent.protocol import ID_RE, ProtocolError, now_ts, parse_ts

from .localtime import zone
from .safecsv import to_csv

# Every DfE log field first, then what helps a reader.
FIELDS = ("ts", "device", "device_name", "device_ip", "user", "domain", "count", "first_seen", "last_seen",
          "room", "profile", "category")
USER_FIELDS = ("user",)
ROLES = ("dsl", "technician")
MAX_ROWS = 5000
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@\\-]{0,127}$")


class SearchError(ValueError):
    """A filter that is not valid; str() names it."""


class NotForRole(SearchError):
    """A filter this role may not use (a technician searching by pupil)."""


@dataclass
class Filters:
    user: str | None = None
    device: str | None = None
    room: str | None = None
    category: str | None = None
    domain: str | None = None
    since: str | None = None     # as given (date or RFC 3339)
    until: str | None = None
    limit: int = 500
    # derived: [since_ts, until_ts) in stored form
    since_ts: str | None = field(default=None, repr=False)
    until_ts: str | None = field(default=None, repr=False)

    @property
    def used(self) -> list[str]:
        """The names of the filters given (what the audit log records)."""
        return [name for name in ("user", "device", "room", "category", "domain", "since", "until")
                if getattr(self, name)]


def _when(value: str, tz: str, *, end: bool, key: str) -> str:
    """A date (a whole school day in *tz*; *end*: the day after it) or an RFC 3339 time -> stored ts."""
    value = value.strip()
    try:
        day = date.fromisoformat(value)
    except ValueError:
        try:
            return now_ts(parse_ts(value, key))
        except ProtocolError:
            raise SearchError(f"{key}: {value!r:.40} is not a date (2026-11-24) or an RFC 3339 time") from None
    if end:
        day += timedelta(days=1)
    return now_ts(datetime.combine(day, time(0), zone(tz)))


def parse_filters(raw: dict[str, Any], role: str, tz: str) -> Filters:
    """Check and normalise the query; SearchError names a bad one.  A technician may not search by user."""
    f = Filters()
    text = {k: (v.strip() if isinstance(v, str) else v) for k, v in raw.items() if v not in (None, "")}
    if "user" in text:
        if role != "dsl":
            raise NotForRole("user: only the DSL may search blocked attempts by pupil")
        if not _USER_RE.match(text["user"]):
            raise SearchError(f"user: {text['user']!r:.40} is not a login name")
        f.user = text["user"]
    for key in ("device", "room", "category"):
        if key in text:
            if not ID_RE.match(text[key]):
                raise SearchError(f"{key}: {text[key]!r:.40} is not an id (lowercase letters, digits, '-')")
            setattr(f, key, text[key])
    if "domain" in text:
        domain = text["domain"].lower().rstrip(".")
        if not is_domain(domain):
            raise SearchError(f"domain: {text['domain']!r:.60} is not a domain")
        f.domain = domain
    if "since" in text:
        f.since, f.since_ts = text["since"], _when(text["since"], tz, end=False, key="since")
    if "until" in text:
        f.until, f.until_ts = text["until"], _when(text["until"], tz, end=True, key="until")
    if f.since_ts and f.until_ts and f.since_ts >= f.until_ts:
        raise SearchError("until: is before since")
    limit = text.get("limit", 500)
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        raise SearchError(f"limit: {limit!r:.20} is not a number") from None
    if not 1 <= limit <= MAX_ROWS:
        raise SearchError(f"limit: between 1 and {MAX_ROWS}")
    f.limit = limit
    return f


def fields_for(role: str) -> tuple[str, ...]:
    return FIELDS if role == "dsl" else tuple(k for k in FIELDS if k not in USER_FIELDS)


def search(store, site: str, role: str, filters: Filters, actor: str, *, via: str, fmt: str = "json") -> list[dict]:
    """The rows *role* may see (limit + 1 fetched, so the caller can say it was cut short), audited."""
    rows = store.search_blocked(site, user=filters.user, device=filters.device, room=filters.room,
                                category=filters.category, domain=filters.domain, since=filters.since_ts,
                                until=filters.until_ts, limit=filters.limit + 1)
    keep = fields_for(role)
    rows = [{k: row.get(k) for k in keep} for row in rows]
    store.audit(actor, "blocked.search", site or None, {"via": via, "format": fmt, "filters": filters.used,
                                                        "rows": min(len(rows), filters.limit)},
                site=site or None)
    return rows


def category_names(tree) -> dict[str, str]:
    """Risk list id -> the name the DSL reads (site.yaml filtering.risk_lists)."""
    if tree is None:
        return {}
    return {r.id: r.name for r in tree.site.filtering.risk_lists}


def render_csv(rows: list[dict], role: str) -> str:
    keep = fields_for(role)
    return to_csv(keep, ([row.get(k) for k in keep] for row in rows))
