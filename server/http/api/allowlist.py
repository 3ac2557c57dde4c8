"""Allowlist changes over the API (server/allowlist.py): a technician proposes, the DSL decides,
approval publishes through the rollout; the change log and the override history.  All of it
is the acting school's (``user.site``): another school's change answers 404, and an approval
publishes that school's own tree.

``GET /allowlist/changes`` and ``GET /allowlist/overrides``: the DSL, technicians, admins.
``POST /allowlist/changes``: technicians.  ``POST /allowlist/changes/{id}/decision``: the DSL
(``{"approve": true|false, "note"}``; an approval publishes at once).  Every step is audited.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from pydantic import Field

from ... import allowlist as al
from .. import state
from ..auth import User, require
from . import API, RequestBody

PUBLIC: frozenset = frozenset()


class DecisionBody(RequestBody):
    approve: bool
    note: str = Field(default="", max_length=2000)


def propose(request: Request, user: User, body: Any, via: str) -> dict:
    """Check and store a proposal (ChangeError if it cannot be made)."""
    fields = al.check_proposal(body, state.tree(request))
    store = state.store(request)
    change = store.add_allowlist_change(site=state.school_site(request), proposed_by=user.username, **fields)
    store.audit(user.username, "allowlist.propose", change["id"],
                {"via": via, "kind": change["kind"], "add": change["add_domains"],
                 "remove": change["remove_domains"], "key_stages": change["key_stages"]}, site=user.site)
    return change


def decide(request: Request, user: User, change_id: str, approve: bool, note: str, via: str) -> dict:
    """The DSL's decision; an approval is published at once (ChangeError if it cannot be)."""
    store = state.store(request)
    site = state.school_site(request)
    change = store.get_allowlist_change(change_id[:64], site)
    if change is None:
        raise HTTPException(404, f"allowlist change {change_id[:64]!r} not found")
    if change["status"] != "proposed":
        raise al.ChangeError(f"this change is already {change['status']}")
    if approve:
        # Check it can be carried out before recording the approval.
        current = state.rollouts(request).current(site)
        al.files_for(change, state.rollouts(request).files(current["version"]) or {} if current else {},
                     current["version"] if current else None)
    decided = store.decide_allowlist_change(change["id"], site, actor=user.username, approve=approve,
                                            note=note.strip() or None)
    if decided is None:
        raise al.ChangeError("this change was decided by someone else a moment ago")
    store.audit(user.username, "allowlist.approve" if approve else "allowlist.reject", change["id"],
                {"via": via, "note": bool(note.strip())}, site=site)
    if approve:
        try:
            decided["rollout"] = al.publish_change(state.rollouts(request), store, decided, user.username)
        except al.ChangeError:
            store.audit(user.username, "allowlist.publish_failed", change["id"], {"via": via}, site=site)
            raise
        decided = {**store.get_allowlist_change(change["id"], site), "rollout": decided["rollout"]}
    return decided


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["allowlist"])
    viewers = require("dsl", "technician", "admin")
    tech = require("technician")
    dsl = require("dsl")

    @r.get("/allowlist/changes")
    def changes(request: Request, user: User = Depends(viewers),
                status: str | None = Query(None, pattern="^(proposed|approved|rejected|published)$")) -> list[dict]:
        rows = state.store(request).list_allowlist_changes(state.school_site(request), status=status)
        for row in rows:
            row.pop("files", None)  # the whole tree: on the rollout pages, not in the log
        return rows

    @r.post("/allowlist/changes", status_code=201)
    def new_change(request: Request, body: Any = Body(None), user: User = Depends(tech)) -> dict:
        try:
            return propose(request, user, body, "api")
        except al.ChangeError as exc:
            raise HTTPException(400, str(exc)) from None

    @r.post("/allowlist/changes/{change_id}/decision")
    def decision(change_id: str, body: DecisionBody, request: Request, user: User = Depends(dsl)) -> dict:
        try:
            return decide(request, user, change_id, body.approve, body.note, "api")
        except al.ChangeError as exc:
            raise HTTPException(409, str(exc)) from None

    @r.get("/allowlist/overrides")
    def overrides(request: Request, user: User = Depends(viewers),
                  limit: int = Query(500, ge=1, le=5000)) -> list[dict]:
        return override_history(request, limit)

    return r


def override_history(request: Request, limit: int = 500) -> list[dict]:
    """Teachers' "allow this site for this lesson" overrides: opened, closed, refused (newest first)."""
    out = []
    for r in state.store(request).override_events(state.school_site(request), limit):
        data = r["data"]
        out.append({"ts": r["ts"], "type": r["type"].removeprefix("override_"), "room": r["room"],
                    "device": r["device"], "domain": data.get("domain"), "by": data.get("by"),
                    "reason": data.get("reason") or data.get("error"), "minutes": data.get("minutes"),
                    "until": data.get("until") or data.get("expires")})
    return out
