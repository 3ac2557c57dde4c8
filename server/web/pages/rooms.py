"""A teacher's rooms: the list, the live room view with the teacher's controls, and its event stream.

Live alerts: ingest calls ``app.state.listeners`` after each commit; server/web/live.py
publishes alert and status changes to the in-process broadcaster, and each open
``/rooms/{room}/events`` stream (server-sent events) waits on its own queue: no
database polling.  Each stream starts with a snapshot of the room's open alerts and ends
after ``STREAM_SECONDS``; the browser reconnects at once.

An open stream is a live receiver for its room (server/presence.py): it is recorded when it
opens and at each keep-alive, so a press in a room whose page nobody has open is escalated
at once (server/notify/).

The teacher's controls (static/room.js) send room commands through the API
(server/http/api/commands.py): "Eyes on me" for 1, 2 or 5 minutes, lock and unlock one
device, allow a site for the lesson, a message to every screen.  The stream also carries
each command sent (``command``), each device's answer (``cmd_result``) and each lock
change (``lock``), so every device shows whether it obeyed or is not reachable; the page
starts from the room's latest command and each device's lock (server/store/commands.py).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse

from ...http import state
from ...incidents import is_live_alert
from ...http.api.commands import EYES_ON_ME
from ...http.auth import User
from ...store import iso
from ...store.commands import ANSWER_SECONDS
from ...timetable.now import lesson_end, staff_now
from ..live import get_broadcaster
from .base import page, render

PUBLIC: frozenset = frozenset()

KEEPALIVE_SECONDS = 10.0
# Each event stream ends after this long and the browser reconnects at once (``retry``),
# getting a fresh snapshot.  Why: uvicorn waits for open responses before it exits, so an
# endless stream would stop `systemctl stop` from finishing; proxies also drop idle streams.
STREAM_SECONDS = 20.0
OPEN_ALERT_HOURS = 24
LIVE_KINDS = ("alert", "status", "command", "cmd_result", "lock")


def open_alerts(store, room: str, now: datetime | None = None) -> list[dict]:
    """Alerts of *room* not yet cleared, received in the last OPEN_ALERT_HOURS, newest first.
    By the collector's clock, not the device's: a device whose clock is behind (a Pi that
    booted without the network) must not have its press left off the teacher's page."""
    since = iso((now or datetime.now(timezone.utc)) - timedelta(hours=OPEN_ALERT_HOURS))
    rows = store.list_incidents(rooms=[room], received_since=since, limit=100)
    return [{"id": r["id"], "state": r["alert_state"], "room": r["room"], "device": r["device"],
             "seat": r.get("seat"), "ts": r["raised_at"]} for r in rows if is_live_alert(r["alert_state"])]


def _room_or_404(request: Request, room: str, user: User):
    tree = state.tree(request)
    if tree is None or room not in tree.rooms or not user.can_see_room(room):
        raise HTTPException(404, f"room {room[:64]!r} not found")
    return tree.rooms[room]


def _sse(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    teacher_view = page("teacher", "dsl", "admin")

    @r.get("/rooms")
    def rooms(request: Request, user: User = Depends(teacher_view)):
        tree = state.tree(request)
        visible = [] if tree is None else [
            {"room": k, "name": v.name, "key_stage": v.key_stage}
            for k, v in sorted(tree.rooms.items()) if user.can_see_room(k)]
        return render(request, "rooms.html", rooms=visible)

    @r.get("/rooms/{room}")
    def room_view(room: str, request: Request, user: User = Depends(teacher_view)):
        room_obj = _room_or_404(request, room, user)
        store = state.store(request)
        tree = state.tree(request)
        site = tree.site.site
        status = {d["id"]: d for d in store.list_devices([room])}
        locks = store.device_locks(site, room)
        latest = store.room_commands(site, room, limit=1)
        command = latest[0] if latest else None
        answers = {a["device"]: a for a in command["devices"]} if command else {}
        devices = [{"id": d.id, "seat": d.seat, "status": (status.get(d.id) or {}).get("status") or "unknown",
                    "lock": locks.get(d.id), "answer": answers.get(d.id)} for d in room_obj.devices]
        ends = lesson_end(store, tree, room)
        return render(request, "room.html", room=room, room_name=room_obj.name or room,
                      alerts=open_alerts(store, room), devices=devices, command=command,
                      teaching=staff_now(store, tree, room), lesson_end=iso(ends) if ends else None,
                      override_max=tree.site.filtering.override_max_minutes, answer_seconds=ANSWER_SECONDS,
                      eyes_on_me=EYES_ON_ME)

    @r.get("/rooms/{room}/events")
    async def room_events(room: str, request: Request, user: User = Depends(teacher_view)):
        _room_or_404(request, room, user)
        live = get_broadcaster(request.app)
        sub = live.subscribe(lambda kind, data: kind in LIVE_KINDS and data.get("room") == room)
        store = state.store(request)
        presence = state.presence(request)
        site = state.tree(request).site.site

        async def seen() -> None:
            try:
                await asyncio.to_thread(presence.viewer_seen, site, room, user.username)
            except Exception:  # noqa: BLE001 - the live view works without it; the store may be busy
                pass

        async def stream():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STREAM_SECONDS
            try:
                yield "retry: 500\n\n"
                await seen()
                live.publish("presence", {"room": room, "who": user.username, "state": "watching",
                                          "kind": "dashboard"})
                # Subscribed first, then the snapshot: an alert raised in between is
                # sent twice (harmless, same id) rather than lost.  The snapshot also
                # lists what is open, so a page that reconnects drops alerts cleared
                # while it was away.
                snapshot = await asyncio.to_thread(open_alerts, store, room)
                for alert in reversed(snapshot):
                    yield _sse("alert", alert)
                yield _sse("snapshot", {"open": [a["id"] for a in snapshot]})
                while (left := deadline - loop.time()) > 0:
                    item = await sub.get(min(KEEPALIVE_SECONDS, left))
                    if item is None:
                        if await request.is_disconnected():
                            break
                        yield ": keep-alive\n\n"
                        await seen()
                        continue
                    yield _sse(*item)
            finally:
                live.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return r
