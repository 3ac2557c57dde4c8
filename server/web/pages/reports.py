"""The weekly report on the dashboard (DSL, technician, admin): the HTML page with links to
the previous week and the CSV download.  The page is the report renderer's own
(server/reports/render.py), the same one written to the reports folder and e-mailed."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from ... import reports
from ...http.api.reports import weekly_report
from ...http.auth import User
from ...http.headers import policy_for
from .base import page

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    report_view = page("dsl", "technician", "admin")

    @r.get("/reports/weekly")
    def weekly(request: Request, week: str | None = Query(None, max_length=20), user: User = Depends(report_view)):
        report = weekly_report(request, week, user)
        html = reports.render_html(report, links=True)
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy": policy_for(html)})

    @r.get("/reports/weekly.csv")
    def weekly_csv(request: Request, week: str | None = Query(None, max_length=20),
                   user: User = Depends(report_view)):
        report = weekly_report(request, week, user)
        return PlainTextResponse(reports.render_csv(report), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="blocked-{report.week.key}.csv"'})

    return r
