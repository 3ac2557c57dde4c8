"""Config rollout over the API: publish, roll back, history, per-room status, diffs
(technicians, of the school they act in), and devices fetching their own compiled
config (from their own school's live tree).

What a publish does (validate, store, audit, tell devices) is server/rollout.py; this
module maps it to HTTP: a refused publish is ``{"errors": [file:line: ...]}`` with the
status RolloutError carries, and a device's config is served with its version as the
ETag, so an unchanged config costs a 304.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, Response

from ...rollout import RolloutError, etag_matches
from .. import state
from ..auth import User, current_device, require
from . import API

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["rollout"])
    tech = require("technician", "admin")

    @r.get("/devices/{device_id}/config")
    def device_config(device_id: str, request: Request, device: str = Depends(current_device)):
        """The device's compiled config; ETag is the version, so If-None-Match gives 304."""
        if device != device_id:
            raise HTTPException(403, "a device may fetch only its own config")
        ro = state.rollouts(request)
        # The device's school: the live tree that lists it (ids are unique across schools).
        tree = state.sites(request).tree_for_device(device_id)
        if tree is None:
            raise HTTPException(404, f"device {device_id!r} is not in the live config")
        try:
            compiled = ro.compiled(device_id, tree.site.site)
            if compiled is None:
                body = json.dumps(tree.for_device(device_id), separators=(",", ":"), sort_keys=True).encode()
                compiled = (tree.version, body)
        except KeyError:
            raise HTTPException(404, f"device {device_id!r} is not in the live config") from None
        version, body = compiled
        etag = f'"{version}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    @r.post("/config/rollouts", status_code=201)
    def publish(request: Request, body: Any = Body(None), user: User = Depends(tech)):
        if not isinstance(body, dict):
            raise HTTPException(422, {"errors": ["body: expected a JSON object with files and why"]})
        unknown = set(body) - {"files", "why", "name"}
        if unknown:
            raise HTTPException(422, {"errors": [f"{k}: unknown field (use files, why, name)"
                                                 for k in sorted(unknown)]})
        name = body.get("name") if isinstance(body.get("name"), str) else "config"
        try:
            done = state.rollouts(request).publish(body.get("files"), user.username, body.get("why"), name=name,
                                                   site=user.site)
        except RolloutError as exc:
            raise HTTPException(exc.status, {"errors": exc.errors}) from None
        return done.to_dict()

    @r.post("/config/rollback", status_code=201)
    def rollback(request: Request, body: Any = Body(None), user: User = Depends(tech)):
        why = body.get("why") if isinstance(body, dict) else None
        try:
            done = state.rollouts(request).rollback(user.username, why, site=user.site)
        except RolloutError as exc:
            raise HTTPException(exc.status, {"errors": exc.errors}) from None
        return done.to_dict()

    @r.get("/config/rollouts")
    def history(request: Request, user: User = Depends(tech), limit: int = Query(200, ge=1, le=1000)):
        return state.rollouts(request).history(limit, site=user.site)

    @r.get("/config/status")
    def status(request: Request, user: User = Depends(tech)):
        return state.rollouts(request).status(user.site)

    @r.get("/config/diff", response_class=PlainTextResponse)
    def diff(request: Request, user: User = Depends(tech), to: str = Query(..., max_length=64),
             from_: str | None = Query(None, alias="from", max_length=64)):
        try:
            return state.rollouts(request).diff(from_, to, user.site)
        except RolloutError as exc:
            raise HTTPException(exc.status, {"errors": exc.errors}) from None

    return r
