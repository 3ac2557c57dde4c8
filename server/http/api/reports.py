"""The weekly report over the API (DSL, technician, admin): JSON, CSV or the HTML page.

``weekly_report(request, week, user)`` is also what the dashboard's report pages use: the week
is an ISO week (``2026-W47``) or a date inside it, in the school's time zone; none means
this week.
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from ... import reports
from .. import state
from ..auth import User, require
from ..headers import policy_for
from . import API

PUBLIC: frozenset = frozenset()


def weekly_report(request: Request, week: str | None, user: User) -> reports.Report:
    """The report for *week* (400 if it is not a week or date) as *user*'s role may see it
    (``reports.for_role``: incident counts by category and status are the DSL's)."""
    site, tz = state.site_and_timezone(request)
    try:
        wk = reports.Week.parse(week, tz) if week else reports.Week.containing(datetime.now(timezone.utc), tz)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return reports.for_role(reports.collect(state.store(request), wk, site), user.role)


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["reports"])
    report_view = require("dsl", "technician", "admin")

    @r.get("/reports/weekly")
    def weekly(request: Request, user: User = Depends(report_view), week: str | None = Query(None, max_length=20),
               format: str = Query("json", pattern="^(json|csv|html)$")):
        report = weekly_report(request, week, user)
        if format == "csv":
            return PlainTextResponse(reports.render_csv(report), media_type="text/csv; charset=utf-8")
        if format == "html":
            html = reports.render_html(report)
            return HTMLResponse(html, headers={"Content-Security-Policy": policy_for(html)})
        return {"week": report.week.key, "site": report.site, "total_attempts": report.total_attempts,
                "by_room": report.by_room, "blocked": report.blocked, "overblocking": report.overblocking,
                "by_category": report.by_category,
                "incidents": report.incidents, "checks": report.checks}

    return r
