"""The DSL's incident records over the API: categories, list, detail, changes, notes,
checklist ticks and evidence.

Teachers see their own rooms' incidents as a timeline only (server/incidents.py
``for_user``: category, tags, status and the rest of the record are the DSL's, and so is
the ``status`` filter); a teacher asking about another room's incident gets the same 404
as for none, and so does anyone asking about another school's incident (every incident
belongs to the site its device is in).  Every view of evidence is written to the audit log; what the audit log
(which admins read) says of a change is which fields changed, never their values.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from pydantic import Field

from ... import incidents as inc
from .. import state
from ..auth import User, require
from . import API, RequestBody

PUBLIC: frozenset = frozenset()


class NoteBody(RequestBody):
    text: str = Field(min_length=1, max_length=8000)


def incident_or_404(request: Request, incident_id: str, user: User) -> dict:
    """The incident, if *user* may see its room in the school they act in; else 404 (never
    403: no hint that it exists)."""
    incident = state.store(request).get_incident(incident_id) if len(incident_id) <= 64 else None
    # A teacher asking about another room's incident, or anyone about another school's,
    # gets the same answer as for none.
    if incident is None or not user.can_see_room(incident["room"], incident["site"]):
        raise HTTPException(404, f"incident {incident_id[:64]!r} not found")
    return incident


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["incidents"])
    viewers = require("teacher", "dsl")
    dsl = require("dsl")

    @r.get("/incident-categories")
    def categories(user: User = Depends(viewers)) -> dict:
        return {"categories": inc.CATEGORIES, "four_cs": inc.FOUR_CS, "statuses": list(inc.STATUSES),
                "checklists": {k: [{"item": i, "text": t, "source": f"shared/policies {s}"} for i, t, s in v]
                               for k, v in inc.CHECKLISTS.items()}}

    @r.get("/incidents")
    def list_incidents(request: Request, user: User = Depends(viewers),
                       status: str | None = Query(None, max_length=20),
                       since: str | None = Query(None, max_length=40),
                       limit: int = Query(200, ge=1, le=1000)) -> list[dict]:
        if status is not None and not inc.sees_record(user):
            # A filter is a way to read the field: status is the DSL's.
            raise HTTPException(403, "status: only the DSL may filter incidents by status")
        rooms = None if user.role == "dsl" else list(user.rooms)
        rows = state.store(request).list_incidents(site=user.site, rooms=rooms, status=status, since=since,
                                                   limit=limit)
        return [inc.for_user(row, user) for row in rows]

    @r.get("/incidents/{incident_id}")
    def get_incident(incident_id: str, request: Request, user: User = Depends(viewers)) -> dict:
        return inc.for_user(incident_or_404(request, incident_id, user), user)

    @r.patch("/incidents/{incident_id}")
    def patch_incident(incident_id: str, request: Request, body: Any = Body(None),
                       user: User = Depends(dsl)) -> dict:
        incident_or_404(request, incident_id, user)
        try:
            changes = inc.validate_changes(body)
        except inc.IncidentError as exc:
            raise HTTPException(400, str(exc)) from None
        store = state.store(request)
        updated = store.update_incident(incident_id, user.username, changes)
        # The audit log is also read by admins: record which fields changed, never their
        # values (the DSL's record: incident_actions keeps them).
        store.audit(user.username, "incident.update", incident_id, {"via": "api", "fields": sorted(changes)},
                    site=user.site)
        if "category" in changes:
            from .concerns import tell_head  # a concern about an adult goes to the headteacher

            tell_head(request, user, updated)
        return inc.for_user(updated, user)

    @r.post("/incidents/{incident_id}/notes")
    def add_note(incident_id: str, body: NoteBody, request: Request, user: User = Depends(dsl)) -> dict:
        incident_or_404(request, incident_id, user)
        store = state.store(request)
        action = store.add_incident_action(incident_id, user.username, "note", text=body.text)
        store.audit(user.username, "incident.note", incident_id, {"via": "api"}, site=user.site)
        return action

    @r.post("/incidents/{incident_id}/checklist")
    def tick(incident_id: str, request: Request, body: Any = Body(None), user: User = Depends(dsl)) -> dict:
        incident = incident_or_404(request, incident_id, user)
        try:
            item, done, note = inc.validate_tick(incident.get("category"), body)
        except inc.IncidentError as exc:
            raise HTTPException(400, str(exc)) from None
        store = state.store(request)
        store.add_incident_action(incident_id, user.username, "tick" if done else "untick", item=item, text=note)
        store.audit(user.username, "incident.checklist", incident_id, {"via": "api"}, site=user.site)
        return inc.for_user(store.get_incident(incident_id), user)

    @r.get("/incidents/{incident_id}/evidence")
    def evidence(incident_id: str, request: Request, user: User = Depends(dsl)) -> dict:
        incident_or_404(request, incident_id, user)
        store = state.store(request)
        items = store.evidence(incident_id)
        # Every view of evidence is recorded (policy: no unlogged access to records).
        store.audit(user.username, "evidence.view", incident_id, {"records": len(items)}, site=user.site)
        return {"incident": incident_id, "evidence": items}

    return r
