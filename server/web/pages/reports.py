"""The weekly report on the dashboard (DSL, technician, admin): the HTML page with links to
the previous week and the CSV download.  The page is the report renderer's own
(server/reports/render.py), the same one written to the reports folder and e-mailed."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from ... import reports
from ...http import state
from ...http.csrf import csrf_token_for
from ...http.api.reports import term_of, weekly_report
from ...reports import term as term_report
from ...http.auth import User
from ...http.headers import policy_for
from .base import page, render

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    report_view = page("dsl", "technician", "admin")

    @r.get("/reports/weekly")
    def weekly(request: Request, week: str | None = Query(None, max_length=20), user: User = Depends(report_view)):
        report = weekly_report(request, week, user)
        # A technician gets a "propose allowing" button by each over-blocking candidate.
        html = reports.render_html(report, links=True,
                                   propose_token=csrf_token_for(request) if user.role == "technician" else None)
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy": policy_for(html)})

    @r.get("/reports/weekly.csv")
    def weekly_csv(request: Request, week: str | None = Query(None, max_length=20),
                   user: User = Depends(report_view)):
        report = weekly_report(request, week, user)
        return PlainTextResponse(reports.render_csv(report), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="blocked-{report.week.key}.csv"'})

    @r.get("/reports/term")
    def term(request: Request, term: str | None = Query(None, max_length=64), user: User = Depends(page("dsl"))):
        report = term_of(request, term)
        return render(request, "term_report.html", r=report, terms=term_report.terms_of(state.tree(request)))

    @r.get("/reports/term.pdf")
    def term_pdf(request: Request, term: str | None = Query(None, max_length=64), user: User = Depends(page("dsl"))):
        report = term_of(request, term)
        state.store(request).audit(user.username, "report.term", report.term.name, {"format": "pdf", "via": "web"},
                                   site=user.site)
        name = "".join(c if c.isalnum() else "-" for c in report.term.name)
        return Response(term_report.term_pdf(report), media_type="application/pdf", headers={
            "Content-Disposition": f'attachment; filename="term-report-{name}.pdf"', "Cache-Control": "no-store"})

    return r
