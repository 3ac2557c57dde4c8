"""The audit log over the API: read by the DSL and admins, written by everything else."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from .. import state
from ..auth import User, require
from . import API

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["admin"])

    @r.get("/audit")
    def audit(request: Request, user: User = Depends(require("dsl", "admin")),
              since: str | None = Query(None, max_length=40), action: str | None = Query(None, max_length=64),
              limit: int = Query(500, ge=1, le=5000)) -> list[dict]:
        return state.store(request).list_audit(since=since, action=action, limit=limit)

    return r
