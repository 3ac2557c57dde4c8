"""The guard log page (DSL, technicians): search by type, user, device, room and dates, and
the same search as CSV.  The search is the API's (server/http/api/guard.py)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse

from ...http.api.guard import rows_csv, search
from ...http.auth import User
from ...store.guard import GUARD_TYPES
from .base import page, render

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    viewers = page("dsl", "technician")

    def query(type: str | None = Query(None, max_length=32), user: str | None = Query(None, max_length=64),
              device: str | None = Query(None, max_length=64), room: str | None = Query(None, max_length=64),
              since: str | None = Query(None, max_length=40), until: str | None = Query(None, max_length=40)) -> dict:
        return {"type": type or None, "user": user or None, "device": device or None, "room": room or None,
                "since": since or None, "until": until or None}

    @r.get("/guard")
    def guard_page(request: Request, q: dict = Depends(query), user: User = Depends(viewers)):
        rows = search(request, user, type=q["type"], user_name=q["user"], device=q["device"], room=q["room"],
                      since=q["since"], until=q["until"], limit=1000)
        return render(request, "guard.html", rows=rows, q=q, types=GUARD_TYPES,
                      query=urlencode({k: v for k, v in q.items() if v}))

    @r.get("/guard.csv")
    def guard_csv(request: Request, q: dict = Depends(query), user: User = Depends(viewers)):
        rows = search(request, user, type=q["type"], user_name=q["user"], device=q["device"], room=q["room"],
                      since=q["since"], until=q["until"], limit=50000)
        return PlainTextResponse(rows_csv(rows), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="guard-log.csv"'})

    return r
