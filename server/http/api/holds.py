"""The DSL's holds over the API: place a hold on an incident's device, lift it, list them.

DSL only (policy 000 §11.4 is the DSL's decision).  Placing and lifting are written to the
audit log and the incident's record (server/holds.py); the device is sent its command at
once if the collector is connected, and again whenever it comes online.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import Field

from ...holds import HoldError
from .. import state
from ..auth import User, require
from . import API, RequestBody
from .incidents import incident_or_404

PUBLIC: frozenset = frozenset()


class HoldBody(RequestBody):
    reason: str = Field(min_length=1, max_length=2000)


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["holds"])
    dsl = require("dsl")

    @r.get("/holds")
    def list_holds(request: Request, user: User = Depends(dsl),
                   active: bool | None = Query(None), limit: int = Query(200, ge=1, le=1000)) -> list[dict]:
        site = state.school_site(request)
        return state.store(request).list_holds(site, active=active, limit=limit)

    @r.get("/incidents/{incident_id}/holds")
    def incident_holds(incident_id: str, request: Request, user: User = Depends(dsl)) -> list[dict]:
        incident = incident_or_404(request, incident_id, user)
        return state.store(request).holds_for_incident(incident["site"], incident["id"])

    @r.post("/incidents/{incident_id}/hold", status_code=201)
    def place(incident_id: str, body: HoldBody, request: Request, user: User = Depends(dsl)) -> dict:
        incident = incident_or_404(request, incident_id, user)
        try:
            hold, sent = state.holds(request).place(incident, user.username, body.reason)
        except HoldError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"hold": hold, "sent": sent}

    @r.post("/holds/{hold_id}/lift")
    def lift(hold_id: str, body: HoldBody, request: Request, user: User = Depends(dsl)) -> dict:
        site = state.school_site(request)
        try:
            hold, sent = state.holds(request).lift(site, hold_id[:64], user.username, body.reason)
        except HoldError as exc:
            raise HTTPException(404, str(exc)) from None
        return {"hold": hold, "sent": sent}

    return r
