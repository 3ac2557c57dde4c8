"""Exports of the DSL's record for CPOMS, MyConcern or Arbor (server/exports.py): an incident,
or every incident a pupil was logged in for, as a PDF or CSV chronology.  The DSL's alone.

An export is a POST (never a link a browser might prefetch): ``{"format": "pdf"|"csv",
"evidence": false}``; evidence domains go in only when ``evidence`` is true.  Every export is
written to the export log and the audit log before the file is sent (and an export with
evidence counts as a view of that evidence: ``evidence.view``).
"""

from __future__ import annotations

import re
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import Field

from ... import exports, incidents as inc
from ...store import utcnow
from .. import state
from ..auth import User, require
from . import API, RequestBody
from .incidents import incident_or_404

PUBLIC: frozenset = frozenset()


class ExportBody(RequestBody):
    format: Literal["pdf", "csv"] = "pdf"
    evidence: bool = False


class PupilExportBody(ExportBody):
    user: str = Field(min_length=1, max_length=64)


def export_file(request: Request, user: User, incidents: list[dict], *, kind: str, target: str, fmt: str,
                with_evidence: bool, via: str) -> Response:
    """Record the export, then build and send the file."""
    store = state.store(request)
    site, tz = state.site_and_timezone(request)
    ids = [i["id"] for i in incidents]
    store.record_export(site=site, actor=user.username, kind=kind, target=target, format=fmt,
                        with_evidence=with_evidence, incidents=ids)
    store.audit(user.username, "export", target, {"via": via, "kind": kind, "format": fmt,
                                                  "evidence": with_evidence, "incidents": len(ids)}, site=user.site)
    evidence = None
    if with_evidence:
        evidence = {i: store.evidence(i) for i in ids}
        for i in ids:
            store.audit(user.username, "evidence.view", i, {"records": len(evidence[i]), "via": f"export-{via}"},
                        site=user.site)
    # Re-read: the export just recorded is part of the chronology it exports.
    records = [inc.for_user(store.get_incident(i), user) for i in ids]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", target)[:64]
    name = f"{'incident' if kind == 'incident' else 'pupil'}-{safe}.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
    if fmt == "csv":
        return Response(exports.to_csv(records, evidence, tz), media_type="text/csv; charset=utf-8", headers=headers)
    tree = state.tree(request)
    school = tree.site.school if tree is not None else site
    title = (f"Safeguarding record: incident {target[:8]}" if kind == "incident"
             else f"Safeguarding record: incidents while {target} was logged in")
    pdf = exports.to_pdf(records, evidence, school=school, tz=tz, title=title, exported_by=user.username,
                         exported_at=utcnow())
    return Response(pdf, media_type="application/pdf", headers=headers)


def pupil_incidents(request: Request, user_name: str) -> list[dict]:
    ids = state.store(request).incidents_of_user(state.school_site(request), user_name)
    if not ids:
        raise HTTPException(404, f"no incidents with {user_name[:64]!r} logged in")
    return [state.store(request).get_incident(i) for i in ids]


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["exports"])
    dsl = require("dsl")

    @r.post("/incidents/{incident_id}/export")
    def export_incident(incident_id: str, body: ExportBody, request: Request, user: User = Depends(dsl)):
        incident = incident_or_404(request, incident_id, user)
        return export_file(request, user, [incident], kind="incident", target=incident["id"], fmt=body.format,
                           with_evidence=body.evidence, via="api")

    @r.post("/exports/pupil")
    def export_pupil(body: PupilExportBody, request: Request, user: User = Depends(dsl)):
        return export_file(request, user, pupil_incidents(request, body.user), kind="pupil", target=body.user,
                           fmt=body.format, with_evidence=body.evidence, via="api")

    @r.get("/exports")
    def export_log(request: Request, user: User = Depends(dsl)) -> list[dict]:
        return state.store(request).list_exports(state.school_site(request))

    return r
