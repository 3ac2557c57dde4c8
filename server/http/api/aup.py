"""Acceptable use per pupil: who has not accepted this term's rules (the DSL, admins), and
this term's acceptances for a device to cache (the device itself).

The term is named as devices name it (``agent.config.term_key``: site.yaml ``terms``, in
the school's time zone).  "Who has not accepted" is every user who logged in at the
school this term (``login`` events) without an ``aup_accepted`` for it.  Per school: staff
see the school they act in (``user.site``), a device its own school's list (the live tree
whose rooms list it).
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from agent.config import term_key

from ...localtime import zone
from ..auth import User, current_device, require
from .. import state
from . import API

PUBLIC: frozenset = frozenset()


def this_term(tree, now: datetime | None = None) -> tuple[str, str]:
    """(this term's name, its first moment as a stored ts) at *tree*'s school (None: the
    month rule in Europe/London)."""
    from agent.protocol import now_ts
    from datetime import time

    tz = zone(tree.site.timezone if tree is not None else "Europe/London")
    today = (now or datetime.now(timezone.utc)).astimezone(tz).date()
    terms = tree.site.terms if tree is not None else ()
    name = term_key(terms, today)
    start = next((t.start for t in terms if t.name == name), None)
    if start is None:  # outside term: the month rule's season began on its first month
        month = 9 if today.month >= 9 else 1 if today.month <= 3 else 4
        start = today.replace(month=month, day=1)
    return name, now_ts(datetime.combine(start, time(0), tz).astimezone(timezone.utc))


def aup_status(request: Request, term: str | None = None) -> dict:
    name, since = this_term(state.tree(request))
    if term and term != name:
        raise HTTPException(400, f"term: only this term ({name}) can be listed")
    store = state.store(request)
    site = state.school_site(request)
    return {"term": name, "since": since, "accepted": store.aup_accepted(site, name),
            "not_accepted": store.aup_not_accepted(site, name, since)}


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["acceptable use"])
    viewers = require("dsl", "admin")

    @r.get("/aup")
    def aup(request: Request, user: User = Depends(viewers), term: str | None = Query(None, max_length=64)) -> dict:
        return aup_status(request, term)

    @r.get("/devices/{device_id}/aup")
    def device_aup(device_id: str, request: Request, device: str = Depends(current_device)) -> dict:
        """This term's acceptances at the device's own school, for it to keep (agent/policy/aup.py)."""
        if device != device_id:
            raise HTTPException(403, "a device may fetch only its own list")
        tree = state.sites(request).tree_for_device(device_id)
        if tree is None:
            raise HTTPException(404, f"device {device_id!r} is not in the live config")
        name, _ = this_term(tree)
        rows = state.store(request).aup_accepted(tree.site.site, name)
        return {"term": name, "accepted": {r["user_name"]: r["accepted_at"] for r in rows}}

    return r
