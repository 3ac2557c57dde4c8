"""Pupils' "Ask my teacher" from the block page: the room's open requests, and the teacher's answer.

A pupil on a blocked page presses "Ask my teacher"; the device sends an
``unblock_request`` event (domain, seat, user; agent/filter/blockpage.py), stored like any
event, and the room page lists it (server/web/templates/unblock_requests.html, kept up to
date by static/unblock.js).  The teacher answers with one tap:

* **Allow for this lesson**: the device gets the ``allow`` command for that domain, by
  the teacher (the collector sets ``by``), until the lesson ends (the device caps it at
  ``override_max_minutes`` and the next timetable change: agent/filter/overrides.py), and
  the device audits the override it opens (``override_opened``);
* **Not now**: the request is closed.

Both are recorded (``unblock_answers``) and written to the audit log.  Only staff who can
see the room (its ``alert_staff``, the DSL, admins) see or answer its requests, and only in
the school they act in (``user.site``): room ids repeat across schools, so a request is
looked up by (site, id), and another school's answers 404 like one that does not exist.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import Field

from agent.protocol import encode, topic as make_topic

from .. import state
from ..auth import User, require
from . import API, RequestBody

log = logging.getLogger(__name__)

PUBLIC: frozenset = frozenset()
REASON = "asked for from the block page"


class AllowBody(RequestBody):
    minutes: int | None = Field(default=None, ge=1, le=1440)


def _room_or_404(request: Request, room: str, user: User) -> None:
    tree = state.tree(request)
    if tree is None or room not in tree.rooms or not user.can_see_room(room):
        raise HTTPException(404, f"room {room[:64]!r} not found")


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["unblock requests"])
    staff = require("teacher", "dsl", "admin")

    @r.get("/rooms/{room}/unblock-requests")
    def open_requests(room: str, request: Request, user: User = Depends(staff)) -> list[dict]:
        _room_or_404(request, room, user)
        return state.store(request).open_unblock_requests(user.site, room)

    def answer(request_id: str, request: Request, user: User, what: str) -> dict:
        store = state.store(request)
        row = store.unblock_request(request_id[:64], user.site)
        if row is None or not user.can_see_room(row["room"], row["site"]):
            raise HTTPException(404, "no such request")
        if row.get("answer"):
            raise HTTPException(409, f"already answered: {row['answer']} by {row['by_whom']}")
        return row

    @r.post("/unblock-requests/{request_id}/allow")
    def allow(request_id: str, request: Request, body: AllowBody | None = None, user: User = Depends(staff)) -> dict:
        row = answer(request_id, request, user, "allowed")
        publisher = request.app.state.publisher
        if publisher is None:
            raise HTTPException(503, "not connected to the broker; the site cannot be opened from here")
        cmd = {"cmd": "allow", "domain": row["domain"], "by": user.username, "reason": REASON}
        if body is not None and body.minutes is not None:
            cmd["minutes"] = body.minutes
        where = make_topic(state.topic_prefix(request.app), row["site"], row["room"], row["device"], "cmd")
        try:
            publisher(where, encode(cmd), 1)
        except Exception as exc:  # noqa: BLE001 - tell the teacher, keep serving
            log.error("allow for %s not published: %s", row["domain"], exc)
            raise HTTPException(503, "the command could not be sent to the broker") from None
        store = state.store(request)
        store.answer_unblock_request(request_id, row["site"], row["room"], "allowed", user.username)
        store.audit(user.username, "unblock.allow", request_id,
                    {"domain": row["domain"], "device": row["device"], "room": row["room"],
                     "minutes": cmd.get("minutes")}, site=user.site)
        return {"sent": cmd, "topic": where}

    @r.post("/unblock-requests/{request_id}/dismiss")
    def dismiss(request_id: str, request: Request, user: User = Depends(staff)) -> dict:
        row = answer(request_id, request, user, "dismissed")
        store = state.store(request)
        store.answer_unblock_request(request_id, row["site"], row["room"], "dismissed", user.username)
        store.audit(user.username, "unblock.dismiss", request_id,
                    {"domain": row["domain"], "device": row["device"], "room": row["room"]}, site=user.site)
        return {"dismissed": request_id}

    return r
