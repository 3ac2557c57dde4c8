"""Concerns staff log by hand, and the technicians' queue ("tell IT").

``POST /concerns`` (teachers, for their own rooms; the DSL, for any room): room, device
(optional), what happened, URL/domain (optional), when, "tell IT", "about an adult" ->
an incident with the normal record and checklist (server/incidents.py
``validate_concern``, server/store/concerns.py).  A concern about an adult is set to that
category at once and the headteacher contacts are told (server/notify/events.py), not the
DSL's.  What the member of staff wrote is the DSL's record (``VISIBLE_FIELDS``: the
teacher who logged it sees the incident's timeline, like any other in their room).

``/it-queue`` (technicians, admins): the domains staff asked IT to look at; an item is
closed with what was done.

All of it is the acting school's (``user.site``): its rooms and devices, its queue; another
school's item answers 404; the headteacher told is the incident's own school's.
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


class DoneBody(RequestBody):
    note: str = Field(default="", max_length=2000)


def concern_rooms(request: Request, user: User) -> list[str]:
    """The rooms *user* may log a concern for: a teacher's own, the DSL's every room."""
    tree = state.tree(request)
    rooms = sorted(tree.rooms) if tree is not None else []
    return rooms if user.role == "dsl" else [r for r in rooms if r in user.rooms]


def devices_in(request: Request):
    tree = state.tree(request)

    def devices(room: str) -> list[str]:
        found = tree.rooms.get(room) if tree is not None else None
        return [d.id for d in found.devices] if found is not None else []

    return devices


def log_concern(request: Request, user: User, body: Any, via: str) -> dict:
    """Check and store a concern; audit it; tell the head if it is about an adult.  The new
    incident as the user may see it.  Raises IncidentError."""
    fields = inc.validate_concern(body, concern_rooms(request, user), devices_in(request))
    site = state.school_site(request)
    store = state.store(request)
    incident_id = store.log_concern(site=site, logged_by=user.username, **fields)
    # The audit log (admins read it) says that a concern was logged, never what it says.
    store.audit(user.username, "concern.log", incident_id,
                {"via": via, "room": fields["room"], "tell_it": fields["tell_it"]}, site=site)
    incident = store.get_incident(incident_id)
    tell_head(request, user, incident)
    return incident


def tell_head(request: Request, user: User, incident: dict) -> int:
    """If *incident* is now in a category for the headteacher (a concern about an adult),
    queue the message to the headteacher contacts (once per incident: the delivery rows are
    unique) and audit it; how many messages were new."""
    if incident.get("category") not in inc.HEAD_CATEGORIES:
        return 0
    notices = state.event_notices(request)
    sent = notices.adult_concern(incident) if notices is not None else []
    if sent or notices is None:
        state.store(request).audit(user.username, "concern.head_told", incident["id"], {"messages": len(sent)},
                                   site=incident["site"])
    return len(sent)


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["concerns"])
    loggers = require("teacher", "dsl")
    tech = require("technician", "admin")

    @r.post("/concerns", status_code=201)
    def new_concern(request: Request, body: Any = Body(None), user: User = Depends(loggers)) -> dict:
        try:
            incident = log_concern(request, user, body, "api")
        except inc.IncidentError as exc:
            raise HTTPException(400, str(exc)) from None
        return inc.for_user(incident, user)

    @r.get("/it-queue")
    def it_queue(request: Request, user: User = Depends(tech),
                 status: str | None = Query(None, pattern="^(open|done)$")) -> list[dict]:
        return state.store(request).list_it_queue(state.school_site(request), status=status)

    @r.post("/it-queue/{item_id}/done")
    def it_done(item_id: str, body: DoneBody, request: Request, user: User = Depends(tech)) -> dict:
        store = state.store(request)
        if not store.close_it_request(item_id[:64], state.school_site(request), user.username, body.note or None):
            raise HTTPException(404, f"open IT queue item {item_id[:64]!r} not found")
        store.audit(user.username, "it_queue.done", item_id[:64], {"via": "api"}, site=user.site)
        return {"id": item_id, "status": "done"}

    return r
