"""The weekly report over the API (DSL, technician, admin): JSON, CSV or the HTML page.

``weekly_report(request, week, user)`` is also what the dashboard's report pages use: the week
is an ISO week (``2026-W47``) or a date inside it, in the school's time zone; none means
this week.
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from ... import reports
from ...reports import term as term_report
from .. import state
from ..auth import User, require
from ..headers import policy_for
from . import API

PUBLIC: frozenset = frozenset()


def weekly_report(request: Request, week: str | None, user: User) -> reports.Report:
    """The report of *user*'s school for *week* (400 if it is not a week or date) as their
    role may see it (``reports.for_role``: incident counts by category and status are the DSL's)."""
    site, tz = state.site_and_timezone(request)
    try:
        wk = reports.Week.parse(week, tz) if week else reports.Week.containing(datetime.now(timezone.utc), tz)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return reports.for_role(reports.collect(state.store(request), wk, site), user.role)


def term_of(request: Request, term: str | None) -> term_report.TermReport:
    """The governors' term report for *term* (default: this term; 400 if it is not one, 404
    before any terms are known).  Made of the DSL's record: the routes are the DSL's."""
    tree = state.tree(request)
    site, tz = state.site_and_timezone(request)
    from ...localtime import zone

    today = datetime.now(timezone.utc).astimezone(zone(tz)).date()
    try:
        chosen, previous = term_report.pick_term(tree, term, today)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if chosen is None:
        raise HTTPException(404, "no terms: publish a config with site.yaml terms first")
    return term_report.collect_term(state.store(request), site, tree.site.school, chosen, previous)


def term_json(report: term_report.TermReport) -> dict:
    return {"term": report.term.name, "start": report.term.start.isoformat(), "end": report.term.end.isoformat(),
            "school": report.school, "incidents": report.incidents, "presses": report.presses,
            "concerns": report.concerns, "by_category": report.by_category, "by_four_cs": report.by_four_cs,
            "by_status": report.by_status, "acknowledgement": report.ack, "checks": report.checks,
            "overrides": report.overrides, "guard": report.guard, "blocked_records": report.blocked_records,
            "reviews": report.reviews, "trend": report.trend}


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["reports"])
    report_view = require("dsl", "technician", "admin")

    @r.get("/reports/term")
    def term(request: Request, user: User = Depends(require("dsl")), term: str | None = Query(None, max_length=64),
             format: str = Query("json", pattern="^(json|pdf)$")):
        report = term_of(request, term)
        state.store(request).audit(user.username, "report.term", report.term.name, {"format": format, "via": "api"},
                                   site=user.site)
        if format == "pdf":
            return Response(term_report.term_pdf(report), media_type="application/pdf", headers={
                "Content-Disposition": 'attachment; filename="term-report.pdf"'})
        return term_json(report)

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
