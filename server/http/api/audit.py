"""The audit log over the API: read by the DSL and admins, written by everything else.

Each school's DSL and admin read their own school's entries (a sign-in or a failed one is
its account's first school's, a logout the session's school's, an escalation given up the
report's school's); entries that concern the collector as a whole (sign-ins of names that
are no school's account, the trust level's own, purges without a school) are read by the
trust level, and by the DSL and admin of a collector that serves one school only."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from .. import state
from ..auth import User, require
from . import API

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["admin"])

    @r.get("/audit")
    def audit(request: Request, user: User = Depends(require("dsl", "admin", "trust")),
              since: str | None = Query(None, max_length=40), action: str | None = Query(None, max_length=64),
              limit: int = Query(500, ge=1, le=5000)) -> list[dict]:
        return state.store(request).list_audit(since=since, action=action, limit=limit,
                                               sites=audit_scope(request, user))

    return r


def audit_scope(request: Request, user: User) -> list[str | None]:
    """Whose audit entries *user* reads: their school's (and, on a one-school collector,
    the collector-wide ones), or at the trust level the collector-wide ones."""
    if user.role == "trust":
        return [None]
    if state.sites(request).single() == user.site:
        return [user.site, None]
    return [user.site]

