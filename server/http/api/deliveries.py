"""Escalation deliveries over the API: what left the building about each report, to whom, and
every attempt (server/notify/, server/store/deliveries.py).

The DSL and admins read them, their own school's only (the school the session acts in):
proof that the office and the DSL were told, and the place to see a wrong SMTP password or
a dead webhook.  A record names the recipient (an e-mail
address or a webhook's name, never its URL) and holds each attempt's time, result and
error with secrets masked; never a message body.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from .. import state
from ..auth import User, require
from . import API

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["deliveries"])

    @r.get("/deliveries")
    def deliveries(request: Request, user: User = Depends(require("dsl", "admin")),
                   alert_id: str | None = Query(None, max_length=64),
                   status: str | None = Query(None, pattern="^(pending|sent|failed)$"),
                   since: str | None = Query(None, max_length=40),
                   limit: int = Query(200, ge=1, le=1000)) -> list[dict]:
        """Deliveries, newest first, each with ``attempt_log`` (ts, result, error)."""
        return state.store(request).list_deliveries(site=user.site, alert_id=alert_id, status=status, since=since,
                                                    limit=limit)

    return r
