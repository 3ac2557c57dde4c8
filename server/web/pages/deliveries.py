"""Escalations sent beyond the room, for the DSL and admins: every e-mail and webhook message
about a report of their school, its recipient, and each attempt with its result (server/notify/).

The same records as ``GET /api/v1/deliveries``; a failed or still-pending one is where a
wrong SMTP password or a dead webhook shows (the error is stored with secrets masked).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from ...http import state
from ...http.auth import User
from .base import page, render

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/deliveries")
    def deliveries(request: Request, user: User = Depends(page("dsl", "admin")),
                   status: str | None = Query(None, pattern="^(pending|sent|failed)$")):
        rows = state.store(request).list_deliveries(site=user.site, status=status, limit=300)
        return render(request, "deliveries.html", deliveries=rows, status=status)

    return r
