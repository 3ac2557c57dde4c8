"""The incident pages: the list (teachers see their rooms, admins every room, both as the
timeline only: server/incidents.py ``for_user``), one incident's record, and the DSL's
forms (category/status/outcome/tags, notes, checklist ticks, evidence).

Forms post and redirect back (303), so a reload never posts twice.  Evidence is shown
only after an explicit POST (never a link a browser might prefetch), and every view of
it is written to the audit log.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse

from ... import incidents as inc
from ...http import state
from ...http.api.concerns import tell_head
from ...http.auth import User
from .base import page, render

PUBLIC: frozenset = frozenset()


def _incident(request: Request, incident_id: str, user: User) -> dict:
    # Another room's incident, or another school's, is the same 404 as none.
    row = state.store(request).get_incident(incident_id) if len(incident_id) <= 64 else None
    if row is None or not user.can_see_room(row["room"], row["site"]):
        raise HTTPException(404, f"incident {incident_id[:64]!r} not found")
    return row


def _incident_page(request: Request, incident_id: str, user: User, *, evidence=None, error=None,
                   flash=None, status=200):
    row = inc.for_user(_incident(request, incident_id, user), user)
    return render(request, "incident.html", http_status=status, i=row, categories=inc.CATEGORIES,
                  four_cs=inc.FOUR_CS, four_cs_help=inc.FOUR_CS_HELP, head_categories=inc.HEAD_CATEGORIES,
                  statuses=inc.STATUSES, evidence=evidence, error=error, flash=flash)


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    incident_view = page("teacher", "dsl", "admin")
    dsl = page("dsl")

    @r.get("/incidents")
    def incident_list(request: Request, user: User = Depends(incident_view),
                      status: str | None = Query(None, max_length=20)):
        if status is not None and (status not in inc.STATUSES or not inc.sees_record(user)):
            status = None  # filtering by status is the DSL's (it would tell others the status)
        rooms = None if user.role in ("dsl", "admin") else list(user.rooms)
        rows = [inc.for_user(row, user)
                for row in state.store(request).list_incidents(site=user.site, rooms=rooms, status=status,
                                                               limit=300)]
        return render(request, "incidents.html", incidents=rows, status=status, statuses=inc.STATUSES,
                      categories=inc.CATEGORIES)

    @r.get("/incidents/{incident_id}")
    def incident_detail(incident_id: str, request: Request, user: User = Depends(incident_view)):
        return _incident_page(request, incident_id, user)

    @r.post("/incidents/{incident_id}/update")
    def incident_update(incident_id: str, request: Request, category: str = Form("", max_length=64),
                        status: str = Form("", max_length=20), outcome: str = Form("", max_length=4000),
                        tags: list[str] = Form([]), user: User = Depends(dsl)):
        _incident(request, incident_id, user)
        body: dict[str, Any] = {k: v for k, v in (("category", category), ("status", status), ("outcome", outcome))
                                if v != ""}
        body["tags"] = tags
        try:
            changes = inc.validate_changes(body)
        except inc.IncidentError as exc:
            return _incident_page(request, incident_id, user, error=str(exc), status=400)
        store = state.store(request)
        updated = store.update_incident(incident_id, user.username, changes)
        # Admins read the audit log: which fields changed, never their values.
        store.audit(user.username, "incident.update", incident_id, {"via": "web", "fields": sorted(changes)},
                    site=user.site)
        if "category" in changes and updated is not None:
            tell_head(request, user, updated)  # a concern about an adult goes to the headteacher
        return RedirectResponse(f"/incidents/{quote(incident_id)}", status_code=303)

    @r.post("/incidents/{incident_id}/note")
    def incident_note(incident_id: str, request: Request, text: str = Form("", max_length=8000),
                      user: User = Depends(dsl)):
        _incident(request, incident_id, user)
        if not text.strip():
            return _incident_page(request, incident_id, user, error="note: write something first", status=400)
        store = state.store(request)
        store.add_incident_action(incident_id, user.username, "note", text=text.strip())
        store.audit(user.username, "incident.note", incident_id, {"via": "web"}, site=user.site)
        return RedirectResponse(f"/incidents/{quote(incident_id)}", status_code=303)

    @r.post("/incidents/{incident_id}/tick")
    def incident_tick(incident_id: str, request: Request, item: str = Form("", max_length=64),
                      done: str = Form("1", max_length=5), note: str = Form("", max_length=2000),
                      user: User = Depends(dsl)):
        row = _incident(request, incident_id, user)
        try:
            item, is_done, note_text = inc.validate_tick(row.get("category"), {
                "item": item, "done": done in ("1", "true", "on"), "note": note or None})
        except inc.IncidentError as exc:
            return _incident_page(request, incident_id, user, error=str(exc), status=400)
        store = state.store(request)
        store.add_incident_action(incident_id, user.username, "tick" if is_done else "untick",
                                  item=item, text=note_text)
        store.audit(user.username, "incident.checklist", incident_id, {"via": "web"}, site=user.site)
        return RedirectResponse(f"/incidents/{quote(incident_id)}", status_code=303)

    @r.post("/incidents/{incident_id}/evidence")
    def incident_evidence(incident_id: str, request: Request, user: User = Depends(dsl)):
        # An explicit POST (never a prefetchable link), and every view is audited.
        _incident(request, incident_id, user)
        store = state.store(request)
        items = store.evidence(incident_id)
        store.audit(user.username, "evidence.view", incident_id, {"records": len(items), "via": "web"},
                    site=user.site)
        return _incident_page(request, incident_id, user, evidence=items)

    return r
