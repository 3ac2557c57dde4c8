"""Devices over the API: the registry and technician alerts, enrolment tokens, enrolment
itself (public: the one-time token is the credential), and ``whoami`` for a device.

Device endpoints authenticate with HTTP basic (device id + the password enrolment gave
it); see ``current_device`` in server/http/auth.py.  Technicians and admins see and
enrol the devices of the school they act in only.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import Field

from ...devices import EnrolError, create_enrol_token, device_view, enrol
from .. import state
from ..auth import User, current_device, require
from . import API, RequestBody

PUBLIC = frozenset({("POST", f"{API}/enrol")})


class EnrolTokenBody(RequestBody):
    device: str = Field(max_length=64)
    hours: int = Field(default=72, ge=1, le=720)


class EnrolBody(RequestBody):
    token: str = Field(max_length=200)


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["devices"])
    tech = require("technician", "admin")

    @r.get("/devices")
    def devices(request: Request, user: User = Depends(tech)) -> list[dict]:
        tree = state.tree(request)
        dark = timedelta(minutes=tree.site.dark_after_minutes) if tree is not None else None
        now = datetime.now(timezone.utc)
        return [device_view(row, now, dark) for row in state.store(request).list_devices(site=user.site)]

    @r.get("/device-alerts")
    def device_alerts(request: Request, user: User = Depends(tech),
                      open_only: bool = Query(True, alias="open")) -> list[dict]:
        return state.store(request).list_device_alerts(open_only=open_only, site=user.site)

    @r.post("/enrol-tokens")
    def new_token(body: EnrolTokenBody, request: Request, user: User = Depends(tech)) -> dict:
        tree = state.tree(request)
        if tree is None:
            raise HTTPException(400, "device: no config has been published for this school yet")
        try:
            return create_enrol_token(state.store(request), body.device, user.username, tree, hours=body.hours)
        except EnrolError as exc:
            raise HTTPException(400, str(exc)) from None

    @r.get("/enrol-tokens")
    def tokens(request: Request, user: User = Depends(tech)) -> list[dict]:
        return state.store(request).list_enrol_tokens(site=user.site)

    @r.post("/enrol")
    def do_enrol(body: EnrolBody, request: Request) -> dict:
        try:
            return enrol(state.store(request), body.token, state.sites(request))
        except EnrolError as exc:
            raise HTTPException(403, str(exc)) from None

    @r.get("/device/whoami")
    def whoami(device: str = Depends(current_device)) -> dict:
        """Device endpoints authenticate with HTTP basic (device id + enrolment password)."""
        return {"device": device}

    return r
