"""The blocked-attempt log on the dashboard: search by pupil (DSL only), device, room, risk
list, domain and dates, every DfE log field in the table, and the same rows as CSV.

The rules are server/blocked.py's (technicians get no user column and cannot search by
user; every search is audited); the page only shows them.  High-risk rows (a risk list that
notifies the DSL) are marked so they stand out.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from ... import blocked
from ...http import state
from ...http.auth import User
from .base import page, render

PUBLIC: frozenset = frozenset()

QUERY_KEYS = ("user", "device", "room", "category", "domain", "since", "until", "limit")


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    viewers = page(*blocked.ROLES)

    def run(request: Request, user: User, fmt: str):
        site, tz = state.site_and_timezone(request)
        raw = {k: request.query_params.get(k) for k in QUERY_KEYS}
        try:
            filters = blocked.parse_filters(raw, user.role, tz)
        except blocked.SearchError as exc:
            return None, raw, str(exc)
        rows = blocked.search(state.store(request), site, user.role, filters, user.username, via="web", fmt=fmt)
        return (rows, filters), raw, None

    @r.get("/blocked")
    def blocked_page(request: Request, user: User = Depends(viewers)):
        found, raw, error = run(request, user, "html")
        tree = state.tree(request)
        names = blocked.category_names(tree)
        notify = {r.id for r in tree.site.filtering.risk_lists if r.notify} if tree is not None else set()
        rows, filters = found if found else ([], None)
        limit = filters.limit if filters else 500
        query = urlencode({k: v for k, v in raw.items() if v})
        return render(request, "blocked.html", http_status=400 if error else 200, rows=rows[:limit],
                      truncated=len(rows) > limit, q={k: v or "" for k, v in raw.items()}, error=error,
                      fields=blocked.fields_for(user.role), categories=names, notify=notify,
                      csv_url="/blocked.csv" + (f"?{query}" if query else ""))

    @r.get("/blocked.csv")
    def blocked_csv(request: Request, user: User = Depends(viewers)):
        found, _, error = run(request, user, "csv")
        if error:
            return PlainTextResponse(error + "\n", status_code=400)
        rows, filters = found
        return PlainTextResponse(blocked.render_csv(rows[:filters.limit], user.role),
                                 media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="blocked-attempts.csv"'})

    return r
