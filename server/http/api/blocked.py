"""The blocked-attempt log over the API (DSL; technicians without the user column): JSON or CSV.

``GET /api/v1/blocked?user=&device=&room=&category=&domain=&since=&until=&limit=&format=``;
``since``/``until`` are dates in the school's time zone (whole days) or RFC 3339 times.
The rules (who sees which column, what is audited) are server/blocked.py's.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from ... import blocked
from .. import state
from ..auth import User, require
from . import API

PUBLIC: frozenset = frozenset()


def filters_from(request: Request, user: User) -> blocked.Filters:
    """The query's filters, checked (400 naming the bad one; 403 for a technician's user search)."""
    tz = state.site_and_timezone(request)[1]
    raw = {k: request.query_params.get(k) for k in ("user", "device", "room", "category", "domain", "since",
                                                    "until", "limit")}
    try:
        return blocked.parse_filters(raw, user.role, tz)
    except blocked.SearchError as exc:
        raise HTTPException(403 if isinstance(exc, blocked.NotForRole) else 400, str(exc)) from None


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["blocked"])
    viewers = require(*blocked.ROLES)

    @r.get("/blocked")
    def search(request: Request, user: User = Depends(viewers),
               format: str = Query("json", pattern="^(json|csv)$")):
        filters = filters_from(request, user)
        site = state.school_site(request)
        rows = blocked.search(state.store(request), site, user.role, filters, user.username, via="api", fmt=format)
        truncated = len(rows) > filters.limit
        rows = rows[:filters.limit]
        if format == "csv":
            return PlainTextResponse(blocked.render_csv(rows, user.role), media_type="text/csv; charset=utf-8",
                                     headers={"Content-Disposition": 'attachment; filename="blocked-attempts.csv"'})
        return {"fields": list(blocked.fields_for(user.role)), "rows": rows, "truncated": truncated,
                "categories": blocked.category_names(state.tree(request))}

    return r
