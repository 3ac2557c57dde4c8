"""Hold and quarantine on the dashboard (DSL only): an incident's hold page and the list of holds.

Kept apart from the incident page (pages/incidents.py links here): the hold page shows the
incident's holds (in force and lifted, who, when, why) with the form to place one or lift
it; ``/holds`` lists every hold of the school.  Forms post and redirect back (303).  What a
hold does is server/holds.py's.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse

from ...holds import HoldError
from ...http import state
from ...http.api.incidents import incident_or_404
from ...http.auth import User
from .base import page, render

PUBLIC: frozenset = frozenset()


def _incident(request: Request, incident_id: str, user: User) -> dict:
    """The incident if it is the acting school's (and a room the user sees); else 404 (the API's check)."""
    return incident_or_404(request, incident_id, user)


def _hold_page(request: Request, incident: dict, *, error: str | None = None, flash: str | None = None,
               status: int = 200):
    holds = state.store(request).holds_for_incident(incident["site"], incident["id"])
    active = next((h for h in holds if h["lifted_at"] is None), None)
    return render(request, "hold.html", http_status=status, i=incident, holds=holds, active=active,
                  error=error, flash=flash, connected=state.holds(request).publish is not None)


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    dsl = page("dsl")

    @r.get("/holds")
    def hold_list(request: Request, user: User = Depends(dsl), show: str = Query("active", pattern="^(active|all)$")):
        site = state.school_site(request)
        rows = state.store(request).list_holds(site, active=True if show == "active" else None, limit=300)
        return render(request, "holds.html", holds=rows, show=show)

    @r.get("/incidents/{incident_id}/hold")
    def hold_page(incident_id: str, request: Request, user: User = Depends(dsl),
                  sent: str | None = Query(None, pattern="^(yes|no)$")):
        flash = None
        if sent == "yes":
            flash = "Done, and the device has been told."
        elif sent == "no":
            flash = "Recorded. The device could not be told just now: it is told as soon as it connects."
        return _hold_page(request, _incident(request, incident_id, user), flash=flash)

    @r.post("/incidents/{incident_id}/hold")
    def hold_place(incident_id: str, request: Request, reason: str = Form("", max_length=2000),
                   user: User = Depends(dsl)):
        incident = _incident(request, incident_id, user)
        try:
            _, sent = state.holds(request).place(incident, user.username, reason)
        except HoldError as exc:
            return _hold_page(request, incident, error=str(exc), status=400)
        return RedirectResponse(f"/incidents/{quote(incident_id)}/hold?sent={'yes' if sent else 'no'}",
                                status_code=303)

    @r.post("/holds/{hold_id}/lift")
    def hold_lift(hold_id: str, request: Request, reason: str = Form("", max_length=2000),
                  user: User = Depends(dsl)):
        site = state.school_site(request)
        store = state.store(request)
        hold = store.get_hold(site, hold_id[:64])
        if hold is None:
            raise HTTPException(404, "no such hold")
        incident = _incident(request, hold["incident_id"], user)
        try:
            _, sent = state.holds(request).lift(site, hold["id"], user.username, reason)
        except HoldError as exc:
            return _hold_page(request, incident, error=str(exc), status=400)
        return RedirectResponse(f"/incidents/{quote(incident['id'])}/hold?sent={'yes' if sent else 'no'}",
                                status_code=303)

    return r
