"""A teacher's commands to their room: "Eyes on me", lock and unlock, allow a site for the
lesson, and a one-line message to every screen.

Each route sends the device command (agent/protocol.py) to every device of the room, or to
the ones named, on its ``cmd`` topic over the collector's own broker connection, with a new
``id`` and ``by`` = the logged-in member of staff (never a field of the request: the body
refuses unknown fields, ``by`` among them).  The command is recorded first (one
``room_commands`` row per device, server/store/commands.py) and announced to the room's
open pages (``command`` on the live stream), then published, then written to the audit log
(``room.lock``, ``room.unlock``, ``room.allow``, ``room.message``).  Each device answers
with a ``cmd_result`` event, which ingest stores against its row and the room page shows;
no answer within ``ANSWER_SECONDS`` is "not reachable".

Who: the room's teachers (its ``alert_staff``, and the staff the timetable or cover has
teaching there now: server/timetable/now.py), the DSL and admins; another room answers 404.

"Allow this site for this lesson" lasts until the lesson ends: the timetable's end of the
lesson running in the room when there is one (a longer ``minutes`` is refused, so the
teacher learns the limit), else the device's own default (agent/filter/overrides.py: the
end of the lesson or school day, at most ``override_default_minutes``); never longer than
the school's ``override_max_minutes``.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import Field, field_validator

from agent.config.schema import is_domain
from agent.protocol import LOCK_MINUTES_MAX, MESSAGE_SECONDS, TEXT_MAX, encode, new_id, topic as make_topic, validate

from ...store.commands import ANSWER_SECONDS
from ...timetable.now import lesson_end
from .. import state
from ..auth import User, require
from . import API, RequestBody

log = logging.getLogger(__name__)

PUBLIC: frozenset = frozenset()
EYES_ON_ME = "Eyes on me, please"


def _one_line(value: str | None) -> str | None:
    if value is None:
        return None
    text = " ".join(value.split())
    if not text:
        raise ValueError("must not be empty")
    if not text.isprintable():
        raise ValueError("must be one line of text")
    return text


class Devices(RequestBody):
    devices: list[str] | None = Field(default=None, max_length=200,
                                      description="Devices of the room to send to; all of them if left out.")


class LockBody(Devices):
    minutes: int | None = Field(default=None, ge=1, le=LOCK_MINUTES_MAX,
                                description="Unlock by itself after this long ('Eyes on me'); else until unlocked.")
    message: str | None = Field(default=None, max_length=TEXT_MAX, description="Words on the lock screen.")

    _line = field_validator("message")(_one_line)


class AllowBody(Devices):
    domain: str = Field(min_length=1, max_length=253)
    minutes: int | None = Field(default=None, ge=1, le=1440,
                                description="At most until the lesson ends; left out: until it ends.")
    reason: str = Field(min_length=1, max_length=200)

    _line = field_validator("reason")(_one_line)


class MessageBody(Devices):
    text: str = Field(min_length=1, max_length=TEXT_MAX)
    seconds: int | None = Field(default=None, ge=MESSAGE_SECONDS[0], le=MESSAGE_SECONDS[1])

    _line = field_validator("text")(_one_line)


def room_or_404(request: Request, room: str, user: User):
    tree = state.tree(request)
    if tree is None or room not in tree.rooms or not user.can_see_room(room):
        raise HTTPException(404, f"room {room[:64]!r} not found")
    return tree.rooms[room]


def send_command(request: Request, user: User, room: str, devices: list[str] | None, cmd: str,
                 fields: dict) -> dict:
    """Record, publish to each device, audit and announce *cmd* with *fields*; the answer body."""
    room_obj = room_or_404(request, room, user)
    known = [d.id for d in room_obj.devices]
    if devices:
        unknown = [d for d in devices if d not in known]
        if unknown:
            raise HTTPException(422, f"devices: {unknown[0][:64]!r} is not a device of room {room}")
        targets = [d for d in known if d in devices]
    else:
        targets = known
    if not targets:
        raise HTTPException(422, f"room {room} has no devices")
    publisher = request.app.state.publisher
    if publisher is None:
        raise HTTPException(503, "not connected to the broker; nothing was sent")
    store = state.store(request)
    site = state.tree(request).site.site
    prefix = state.topic_prefix(request.app)
    cmd_id = new_id()
    payload = validate("cmd", {"cmd": cmd, "id": cmd_id, "by": user.username, **fields})
    raw = encode(payload)
    # Recorded and announced to the room's pages before it is sent, so a device's answer
    # always finds its row, and its page, waiting for it.
    sent_at = store.add_room_command(cmd_id, site, room, targets, cmd, user.username, fields)
    online = {d["id"]: d.get("status") == "online" for d in store.list_devices([room])}
    answer = {"id": cmd_id, "cmd": cmd, "by": user.username, "sent_at": sent_at, "details": fields,
              "answer_seconds": ANSWER_SECONDS,
              "devices": [{"device": d, "online": online.get(d, False), "sent": True} for d in targets]}
    live = state.live(request.app)
    if live is not None:
        live.publish("command", {"site": site, "room": room, **answer})
    unsent = []
    for device in targets:
        try:
            publisher(make_topic(prefix, site, room, device, "cmd"), raw, 1)
        except Exception as exc:  # noqa: BLE001 - the rest still go; the teacher is told
            log.error("cmd %s to %s not published: %s", cmd, device, exc)
            unsent.append(device)
    store.audit(user.username, f"room.{cmd}", room, {"site": site, "command": cmd_id, "devices": targets,
                                                    **fields, **({"unsent": unsent} if unsent else {})})
    if len(unsent) == len(targets):
        raise HTTPException(503, "the command could not be sent to the broker")
    for item in answer["devices"]:
        item["sent"] = item["device"] not in unsent
    return answer


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["room commands"])
    teachers = require("teacher", "dsl", "admin")

    @r.post("/rooms/{room}/lock")
    def lock(room: str, body: LockBody, request: Request, user: User = Depends(teachers)) -> dict:
        """Lock the room's devices: with ``minutes``, "Eyes on me" (unlocks by itself)."""
        fields = {k: v for k, v in (("minutes", body.minutes), ("message", body.message)) if v is not None}
        if body.minutes is not None and body.message is None:
            fields["message"] = EYES_ON_ME
        return send_command(request, user, room, body.devices, "lock", fields)

    @r.post("/rooms/{room}/unlock")
    def unlock(room: str, request: Request, body: Devices | None = None, user: User = Depends(teachers)) -> dict:
        return send_command(request, user, room, body.devices if body else None, "unlock", {})

    @r.post("/rooms/{room}/allow")
    def allow(room: str, body: AllowBody, request: Request, user: User = Depends(teachers)) -> dict:
        """Open one site on the room's devices until the lesson ends (audited on each device too)."""
        room_or_404(request, room, user)
        domain = body.domain.strip().rstrip(".").lower()
        if not is_domain(domain):
            raise HTTPException(422, f"domain: {body.domain[:100]!r} is not a site's name (like www.example.org)")
        tree = state.tree(request)
        limit = tree.site.filtering.override_max_minutes
        now = datetime.now(timezone.utc)
        ends = lesson_end(state.store(request), tree, room, now)
        minutes = body.minutes
        if ends is not None:
            left = max(1, math.ceil((ends - now).total_seconds() / 60))
            if minutes is None:
                minutes = left
            elif minutes > left:
                raise HTTPException(422, f"minutes: the lesson ends in {left} minute(s); allow it for at most that")
        if minutes is not None and minutes > limit:
            raise HTTPException(422, f"minutes: the school allows a site for at most {limit} minutes")
        fields = {"domain": domain, "reason": body.reason, **({"minutes": minutes} if minutes is not None else {})}
        return send_command(request, user, room, body.devices, "allow", fields)

    @r.post("/rooms/{room}/message")
    def message(room: str, body: MessageBody, request: Request, user: User = Depends(teachers)) -> dict:
        """One line on every screen of the room (or the devices named) for ``seconds``."""
        fields = {"text": body.text, **({"seconds": body.seconds} if body.seconds is not None else {})}
        return send_command(request, user, room, body.devices, "message", fields)

    @r.get("/rooms/{room}/commands")
    def commands(room: str, request: Request, user: User = Depends(teachers)) -> dict:
        """The room's latest commands, each device's answer, and each device's lock."""
        room_or_404(request, room, user)
        store = state.store(request)
        site = state.tree(request).site.site
        return {"answer_seconds": ANSWER_SECONDS, "commands": store.room_commands(site, room),
                "locks": store.device_locks(site, room)}

    return r
