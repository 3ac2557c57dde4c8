"""The staff concern form (teachers for their rooms, the DSL for any) and the technicians'
IT queue.  The concern goes through the same code as the API (server/http/api/concerns.py
``log_concern``); the form posts and redirects back (303) with a thank-you, so a reload never
logs it twice.  A time typed in the form is school time (site.yaml ``timezone``).
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse

from ... import incidents as inc
from ...http import state
from ...http.api.concerns import concern_rooms, devices_in, log_concern
from ...http.auth import User
from ...localtime import zone
from .base import page, render

PUBLIC: frozenset = frozenset()


def _form_page(request: Request, user: User, *, form: dict | None = None, error: str | None = None,
               logged: str | None = None, logged_head: bool = False, status: int = 200):
    rooms = concern_rooms(request, user)
    tree = state.tree(request)
    names = {r: (tree.rooms[r].name or r) for r in rooms} if tree is not None else {}
    devices = devices_in(request)
    tz = zone(state.site_and_timezone(request)[1])
    now_local = datetime.now(timezone.utc).astimezone(tz).strftime("%Y-%m-%dT%H:%M")
    form = {"room": rooms[0] if len(rooms) == 1 else "", "device": "", "happened_at": now_local, "what": "",
            "url": "", "tell_it": False, "about_adult": False, **(form or {})}
    return render(request, "concern_new.html", http_status=status, rooms=rooms, room_names=names,
                  devices={r: devices(r) for r in rooms}, form=form, error=error, logged=logged,
                  logged_head=logged_head)


def _utc(local: str, tz_name: str) -> str | None:
    """A datetime-local value (school time) as RFC 3339 UTC; the text itself if it has a zone."""
    if not local:
        return None
    try:
        moment = datetime.fromisoformat(local)
    except ValueError:
        return local  # validate_concern names the problem
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone(tz_name))
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    loggers = page("teacher", "dsl")
    tech = page("technician", "admin")

    @r.get("/concerns/new")
    def concern_form(request: Request, user: User = Depends(loggers),
                     logged: str | None = Query(None, max_length=64), head: int = Query(0, ge=0, le=1)):
        return _form_page(request, user, logged=logged, logged_head=bool(head))

    @r.post("/concerns/new")
    def concern_post(request: Request, room: str = Form("", max_length=64), device: str = Form("", max_length=64),
                     happened_at: str = Form("", max_length=40), what: str = Form("", max_length=8000),
                     url: str = Form("", max_length=2000), tell_it: str = Form("", max_length=5),
                     about_adult: str = Form("", max_length=5), user: User = Depends(loggers)):
        form = {"room": room, "device": device, "happened_at": happened_at, "what": what, "url": url,
                "tell_it": bool(tell_it), "about_adult": bool(about_adult)}
        body = {"room": room, "device": device or None, "what": what, "url": url or None,
                "happened_at": _utc(happened_at, state.site_and_timezone(request)[1]),
                "tell_it": bool(tell_it), "about_adult": bool(about_adult)}
        try:
            incident = log_concern(request, user, body, "web")
        except inc.IncidentError as exc:
            return _form_page(request, user, form=form, error=str(exc), status=400)
        head = int(incident.get("category") in inc.HEAD_CATEGORIES)
        return RedirectResponse(f"/concerns/new?logged={incident['id']}&head={head}", status_code=303)

    @r.get("/it-queue")
    def it_queue(request: Request, user: User = Depends(tech)):
        items = state.store(request).list_it_queue(state.school_site(request))
        return render(request, "it_queue.html", items=items)

    @r.post("/it-queue/{item_id}/done")
    def it_done(item_id: str, request: Request, note: str = Form("", max_length=2000), user: User = Depends(tech)):
        store = state.store(request)
        if not store.close_it_request(item_id[:64], state.school_site(request), user.username, note.strip() or None):
            raise HTTPException(404, f"open IT queue item {item_id[:64]!r} not found")
        store.audit(user.username, "it_queue.done", item_id[:64], {"via": "web"}, site=user.site)
        return RedirectResponse("/it-queue", status_code=303)

    return r
