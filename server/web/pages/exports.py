"""Exports on the dashboard (the DSL's): an incident from its page, a pupil's incidents from
/exports, which also lists every export.  The files are the API's (server/http/api/exports.py
``export_file``): the export is recorded before the file is sent."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request

from ...http import state
from ...http.api.exports import export_file, pupil_incidents
from ...http.api.incidents import incident_or_404
from ...http.auth import User
from .base import page, render

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    dsl = page("dsl")

    @r.post("/incidents/{incident_id}/export")
    def export_incident(incident_id: str, request: Request, format: str = Form("pdf", pattern="^(pdf|csv)$"),
                        evidence: str = Form("", max_length=5), user: User = Depends(dsl)):
        incident = incident_or_404(request, incident_id, user)
        return export_file(request, user, [incident], kind="incident", target=incident["id"], fmt=format,
                           with_evidence=bool(evidence), via="web")

    @r.get("/exports")
    def exports_page(request: Request, user: User = Depends(dsl)):
        return render(request, "exports.html", exports=state.store(request).list_exports(state.school_site(request)))

    @r.post("/exports/pupil")
    def export_pupil(request: Request, user_name: str = Form("", alias="user", max_length=64),
                     format: str = Form("pdf", pattern="^(pdf|csv)$"), evidence: str = Form("", max_length=5),
                     user: User = Depends(dsl)):
        if not user_name.strip():
            raise HTTPException(400, "user: give the pupil's login")
        return export_file(request, user, pupil_incidents(request, user_name.strip()), kind="pupil",
                           target=user_name.strip(), fmt=format, with_evidence=bool(evidence), via="web")

    return r
