"""Dashboard pages, live alerts (server-sent events), and the rollout / report HTTP API.

Pages are server-rendered Jinja2 with one small script per live page; every page is
role-checked like the JSON API (``page(...)`` below carries ``.roles`` for the route x
role test).  A page asked for without a session redirects a browser to /login and
answers 401 to anything else.

Live alerts: ingest calls ``app.state.listeners`` after each commit; ``install`` adds
one that publishes to the in-process broadcaster (server/live.py), and each open
``/rooms/{room}/events`` stream waits on its own queue: no database polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, \
    StreamingResponse
from fastapi.staticfiles import StaticFiles

from agent.protocol import DEFAULT_PREFIX

from .. import incidents as inc
from .. import reports
from ..auth import COOKIE, User, current_device, current_user, login, require, token_hash
from ..live import get_broadcaster
from ..rollout import RolloutError, Rollouts, etag_matches, read_files
from ..store import iso
from .templating import STATIC_DIR, environment

log = logging.getLogger(__name__)

API = "/api/v1"
KEEPALIVE_SECONDS = 10.0
# Each event stream ends after this long and the browser reconnects at once (``retry``),
# getting a fresh snapshot.  Why: uvicorn waits for open responses before it exits, so an
# endless stream would stop `systemctl stop` from finishing; proxies also drop idle streams.
STREAM_SECONDS = 20.0
OPEN_ALERT_HOURS = 24
# Public pages (added to server.app.PUBLIC_ROUTES by install()).
PUBLIC_PAGES = {("GET", "/login"), ("POST", "/login"), ("GET", "/")}


# --------------------------------------------------------------------------- helpers


class _LoginRedirect(Exception):
    def __init__(self, location: str):
        self.location = location


def page(*roles: str):
    """Dependency for HTML pages: like auth.require, but sends browsers to /login."""
    check = require(*roles)

    def dependency(request: Request) -> User:
        try:
            return check(request)
        except HTTPException as exc:
            browser = request.method == "GET" and "text/html" in request.headers.get("accept", "")
            if exc.status_code == 401 and browser:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                raise _LoginRedirect(f"/login?next={quote(target, safe='')}") from None
            raise

    dependency.roles = roles  # type: ignore[attr-defined]
    return dependency


def render(request: Request, name: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("user", getattr(request.state, "user", None))
    html = environment().get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=http_status, headers={"Cache-Control": "no-store"})


def _store(request: Request):
    return request.app.state.store


def _tree(request: Request):
    return request.app.state.tree


def _rollouts(request: Request) -> Rollouts:
    return request.app.state.rollouts


def _home_for(user: User) -> str:
    if user.role == "teacher":
        return f"/rooms/{user.rooms[0]}" if len(user.rooms) == 1 else "/rooms"
    if user.role == "dsl":
        return "/incidents"
    return "/devices"


def _safe_next(value: str | None) -> str | None:
    # Only same-site paths: never let ?next= send staff to another site.
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return None


def _room_or_404(request: Request, room: str, user: User):
    tree = _tree(request)
    if tree is None or room not in tree.rooms or not user.can_see_room(room):
        raise HTTPException(404, f"room {room[:64]!r} not found")
    return tree.rooms[room]


def _site_tz(request: Request) -> tuple[str, str]:
    tree = _tree(request)
    return (tree.site.site, tree.site.timezone) if tree is not None else ("", "Europe/London")


def open_alerts(store, room: str, now: datetime | None = None) -> list[dict]:
    """Alerts of *room* not yet cleared (last OPEN_ALERT_HOURS), newest first."""
    since = iso((now or datetime.now(timezone.utc)) - timedelta(hours=OPEN_ALERT_HOURS))
    rows = store.list_incidents(rooms=[room], since=since, limit=100)
    return [{"id": r["id"], "state": r["alert_state"], "room": r["room"], "device": r["device"],
             "seat": r.get("seat"), "ts": r["raised_at"]} for r in rows if r["alert_state"] != "cleared"]


def _publisher(app: FastAPI):
    """(topic, payload, qos, retain) publisher: ingest's own connection, else app.state.publisher."""

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        ingest = getattr(app.state, "ingest", None)
        if ingest is not None and hasattr(ingest, "publish"):
            ingest.publish(topic, payload, qos, retain)
            return
        publisher = getattr(app.state, "publisher", None)
        if publisher is None:
            raise RuntimeError("not connected to the broker")
        try:
            publisher(topic, payload, qos, retain=retain)
        except TypeError:
            publisher(topic, payload, qos)

    return publish


def _prefix(app: FastAPI) -> str:
    settings = getattr(app.state, "settings", None)
    if settings is not None and getattr(settings, "prefix", None):
        return settings.prefix
    tree = getattr(app.state, "tree", None)
    return tree.site.broker.prefix if tree is not None else DEFAULT_PREFIX


# --------------------------------------------------------------------------- live feed


def live_listener(app: FastAPI):
    """The ingest listener ``(kind, topic, data)`` that feeds the broadcaster."""
    live = get_broadcaster(app)

    def listener(kind: str, where, data: dict) -> None:
        if kind == "alert":
            live.publish("alert", {k: data.get(k) for k in ("id", "state", "room", "device", "seat", "ts", "by")})
        elif kind == "status":
            live.publish("status", {"device": where.device, "room": where.room, "state": data.get("state"),
                                    "ts": data.get("ts")})

    listener.is_live_feed = True  # type: ignore[attr-defined]
    return listener


def _sse(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


# --------------------------------------------------------------------------- pages


def pages_router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    teacher_view = page("teacher", "dsl", "admin")
    incident_view = page("teacher", "dsl", "admin")
    dsl = page("dsl")
    tech = page("technician", "admin")
    report_view = page("dsl", "technician", "admin")

    @r.get("/")
    def home(request: Request):
        user = current_user(request)
        return RedirectResponse(_home_for(user) if user else "/login", status_code=303)

    @r.get("/login")
    def login_form(request: Request, next: str | None = Query(None, max_length=500)):
        return render(request, "login.html", user=None, next=_safe_next(next))

    @r.post("/login")
    def login_submit(request: Request, username: str = Form("", max_length=64),
                     password: str = Form("", max_length=1024), next: str = Form("", max_length=500)):
        settings = request.app.state.settings
        hours = getattr(settings, "session_hours", 12)
        token = login(_store(request), username, password, hours)
        if token is None:
            _store(request).audit(username[:64] or "?", "login.failed", None, {"via": "web"})
            return render(request, "login.html", http_status=401, user=None, next=_safe_next(next), username=username,
                          error="That username and password do not match. Try again.")
        _store(request).audit(username, "login", None, {"via": "web"})
        row = _store(request).get_user(username)
        from ..auth import staff_rooms

        user = User(username, row["role"], row["display_name"], staff_rooms(_tree(request), username))
        response = RedirectResponse(_safe_next(next) or _home_for(user), status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                            secure=bool(getattr(settings, "cookie_secure", False)), max_age=hours * 3600, path="/")
        return response

    @r.post("/logout")
    def logout(request: Request, user: User = Depends(page("teacher", "dsl", "technician", "admin"))):
        token = request.cookies.get(COOKIE)
        if token:
            _store(request).delete_session(token_hash(token))
        _store(request).audit(user.username, "logout", None, {"via": "web"})
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ---------------------------------------------------------------- teachers
    @r.get("/rooms")
    def rooms(request: Request, user: User = Depends(teacher_view)):
        tree = _tree(request)
        visible = [] if tree is None else [
            {"room": k, "name": v.name, "key_stage": v.key_stage}
            for k, v in sorted(tree.rooms.items()) if user.can_see_room(k)]
        return render(request, "rooms.html", rooms=visible)

    @r.get("/rooms/{room}")
    def room_view(room: str, request: Request, user: User = Depends(teacher_view)):
        room_obj = _room_or_404(request, room, user)
        status = {d["id"]: d for d in _store(request).list_devices([room])}
        devices = [{"id": d.id, "seat": d.seat, "status": (status.get(d.id) or {}).get("status") or "unknown"}
                   for d in room_obj.devices]
        return render(request, "room.html", room=room, room_name=room_obj.name or room,
                      alerts=open_alerts(_store(request), room), devices=devices)

    @r.get("/rooms/{room}/events")
    async def room_events(room: str, request: Request, user: User = Depends(teacher_view)):
        _room_or_404(request, room, user)
        live = get_broadcaster(request.app)
        sub = live.subscribe(lambda kind, data: data.get("room") == room)
        store = _store(request)

        async def stream():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STREAM_SECONDS
            try:
                yield "retry: 500\n\n"
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
                        continue
                    yield _sse(*item)
            finally:
                live.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # ---------------------------------------------------------------- incidents
    @r.get("/incidents")
    def incident_list(request: Request, user: User = Depends(incident_view),
                      status: str | None = Query(None, max_length=20)):
        if status is not None and status not in inc.STATUSES:
            status = None
        rooms = None if user.role in ("dsl", "admin") else list(user.rooms)
        rows = _store(request).list_incidents(rooms=rooms, status=status, limit=300)
        return render(request, "incidents.html", incidents=rows, status=status, statuses=inc.STATUSES,
                      categories=inc.CATEGORIES)

    def _incident(request: Request, incident_id: str, user: User) -> dict:
        row = _store(request).get_incident(incident_id) if len(incident_id) <= 64 else None
        if row is None or not user.can_see_room(row["room"]):
            raise HTTPException(404, f"incident {incident_id[:64]!r} not found")
        return row

    def _incident_page(request: Request, incident_id: str, user: User, *, evidence=None, error=None,
                       flash=None, status=200):
        row = inc.for_user(_incident(request, incident_id, user), user)
        return render(request, "incident.html", http_status=status, i=row, categories=inc.CATEGORIES,
                      four_cs=inc.FOUR_CS, statuses=inc.STATUSES, evidence=evidence, error=error, flash=flash)

    @r.get("/incidents/{incident_id}")
    def incident_detail(incident_id: str, request: Request, user: User = Depends(incident_view)):
        return _incident_page(request, incident_id, user)

    @r.post("/incidents/{incident_id}/update")
    def incident_update(incident_id: str, request: Request, category: str = Form("", max_length=64),
                        status: str = Form("", max_length=20), outcome: str = Form("", max_length=4000),
                        tags: list[str] = Form([]), user: User = Depends(dsl)):
        _incident(request, incident_id, user)
        body: dict[str, Any] = {k: v for k, v in (("category", category), ("status", status), ("outcome", outcome))
                                if v != ""}
        body["tags"] = tags
        try:
            changes = inc.validate_changes(body)
        except inc.IncidentError as exc:
            return _incident_page(request, incident_id, user, error=str(exc), status=400)
        _store(request).update_incident(incident_id, user.username, changes)
        _store(request).audit(user.username, "incident.update", incident_id, changes)
        return RedirectResponse(f"/incidents/{quote(incident_id)}", status_code=303)

    @r.post("/incidents/{incident_id}/note")
    def incident_note(incident_id: str, request: Request, text: str = Form("", max_length=8000),
                      user: User = Depends(dsl)):
        _incident(request, incident_id, user)
        if not text.strip():
            return _incident_page(request, incident_id, user, error="note: write something first", status=400)
        _store(request).add_incident_action(incident_id, user.username, "note", text=text.strip())
        _store(request).audit(user.username, "incident.note", incident_id, {"via": "web"})
        return RedirectResponse(f"/incidents/{quote(incident_id)}", status_code=303)

    @r.post("/incidents/{incident_id}/tick")
    def incident_tick(incident_id: str, request: Request, item: str = Form("", max_length=64),
                      done: str = Form("1", max_length=5), note: str = Form("", max_length=2000),
                      user: User = Depends(dsl)):
        row = _incident(request, incident_id, user)
        try:
            item, is_done, note_text = inc.validate_tick(row.get("category"), {
                "item": item, "done": done in ("1", "true", "on"), "note": note or None})
        except inc.IncidentError as exc:
            return _incident_page(request, incident_id, user, error=str(exc), status=400)
        _store(request).add_incident_action(incident_id, user.username, "tick" if is_done else "untick",
                                            item=item, text=note_text)
        _store(request).audit(user.username, "incident.checklist", incident_id, {"item": item, "done": is_done})
        return RedirectResponse(f"/incidents/{quote(incident_id)}", status_code=303)

    @r.post("/incidents/{incident_id}/evidence")
    def incident_evidence(incident_id: str, request: Request, user: User = Depends(dsl)):
        # An explicit POST (never a prefetchable link), and every view is audited.
        _incident(request, incident_id, user)
        items = _store(request).evidence(incident_id)
        _store(request).audit(user.username, "evidence.view", incident_id, {"records": len(items), "via": "web"})
        return _incident_page(request, incident_id, user, evidence=items)

    # ---------------------------------------------------------------- technicians
    @r.get("/devices")
    def devices(request: Request, user: User = Depends(tech)):
        return render(request, "devices.html", devices=device_rows(request))

    @r.get("/rollout")
    def rollout_page(request: Request, user: User = Depends(tech)):
        return _rollout_page(request)

    def _rollout_page(request: Request, *, errors=None, flash=None, flash_kind="ok", status=200):
        ro = _rollouts(request)
        settings = request.app.state.settings
        return render(request, "rollout.html", http_status=status, state=ro.status(), history=ro.history(20),
                      config_dir=getattr(settings, "config_dir", None), errors=errors, flash=flash,
                      flash_kind=flash_kind)

    @r.post("/rollout/publish")
    def rollout_publish(request: Request, why: str = Form("", max_length=2000), user: User = Depends(tech)):
        config_dir = getattr(request.app.state.settings, "config_dir", None)
        if not config_dir:
            return _rollout_page(request, errors=["This server has no config folder set (serve --config DIR); "
                                                  "publish with `classroom-server config publish DIR`."], status=400)
        try:
            files = read_files(config_dir)
            done = _rollouts(request).publish(files, user.username, why, name=Path(config_dir).name or "config")
        except RolloutError as exc:
            return _rollout_page(request, errors=exc.errors, status=exc.status)
        return _rollout_page(request, flash=f"Published version {done.version}; {done.notified} devices told.")

    @r.post("/rollout/rollback")
    def rollout_rollback(request: Request, why: str = Form("", max_length=2000), user: User = Depends(tech)):
        try:
            done = _rollouts(request).rollback(user.username, why)
        except RolloutError as exc:
            return _rollout_page(request, errors=exc.errors, status=exc.status)
        return _rollout_page(request, flash=f"Rolled back to version {done.version}; {done.notified} devices told.")

    @r.get("/rollout/audit")
    def rollout_audit(request: Request, user: User = Depends(tech)):
        ro = _rollouts(request)
        entries = [{**row, "diff": ro.diff(row["previous"], row["version"])} for row in ro.history(50)]
        return render(request, "rollout_audit.html", entries=entries)

    # ---------------------------------------------------------------- reports
    @r.get("/reports/weekly")
    def weekly(request: Request, week: str | None = Query(None, max_length=20), user: User = Depends(report_view)):
        report = _report(request, week)
        html = environment().get_template("report_weekly.html").render(
            r=report, chart=reports.chart(report), links=True)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @r.get("/reports/weekly.csv")
    def weekly_csv(request: Request, week: str | None = Query(None, max_length=20),
                   user: User = Depends(report_view)):
        report = _report(request, week)
        return PlainTextResponse(reports.render_csv(report), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="blocked-{report.week.key}.csv"'})

    return r


def device_rows(request: Request) -> list[dict]:
    """Every device of the live tree plus any the registry knows: online/offline/dark, versions."""
    tree = _tree(request)
    known = {d["id"]: d for d in _store(request).list_devices()}
    dark = {a["device"] for a in _store(request).list_device_alerts(open_only=True) if a.get("kind") == "dark"}
    rows = []
    ids = []
    if tree is not None:
        for room in sorted(tree.rooms.values(), key=lambda r: r.room):
            for d in room.devices:
                ids.append((d.id, room.room, d.seat))
    in_tree = {i for i, _, _ in ids}
    ids += [(i, d.get("room"), None) for i, d in sorted(known.items()) if i not in in_tree]
    live = _rollouts(request).current() if getattr(request.app.state, "rollouts", None) else None
    for device_id, room, seat in ids:
        d = known.get(device_id, {})
        state = "dark" if device_id in dark else (d.get("status") or "unknown")
        rows.append({"id": device_id, "room": room, "seat": seat, "state": state,
                     "agent_version": d.get("agent_version"), "config_version": d.get("config_version"),
                     "config_current": bool(live and d.get("config_version") == live["version"]),
                     "last_seen": d.get("last_seen"), "enrolled": bool(d.get("enrolled_at")),
                     "in_config": device_id in in_tree})
    return rows


def _report(request: Request, week: str | None) -> reports.Report:
    site, tz = _site_tz(request)
    try:
        wk = reports.Week.parse(week, tz) if week else reports.Week.containing(datetime.now(timezone.utc), tz)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return reports.collect(_store(request), wk, site)


# --------------------------------------------------------------------------- JSON API


def api_router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["rollout", "reports"])
    tech = require("technician", "admin")
    report_view = require("dsl", "technician", "admin")

    @r.get("/devices/{device_id}/config")
    def device_config(device_id: str, request: Request, device: str = Depends(current_device)):
        """The device's compiled config; ETag is the version, so If-None-Match gives 304."""
        if device != device_id:
            raise HTTPException(403, "a device may fetch only its own config")
        ro = _rollouts(request)
        try:
            compiled = ro.compiled(device_id)
            if compiled is None:
                tree = _tree(request)
                if tree is None:
                    raise HTTPException(404, "no config has been published yet")
                body = json.dumps(tree.for_device(device_id), separators=(",", ":"), sort_keys=True).encode()
                compiled = (tree.version, body)
        except KeyError:
            raise HTTPException(404, f"device {device_id!r} is not in the live config") from None
        version, body = compiled
        etag = f'"{version}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    @r.post("/config/rollouts", status_code=201)
    def publish(request: Request, body: Any = Body(None), user: User = Depends(tech)):
        if not isinstance(body, dict):
            raise HTTPException(422, {"errors": ["body: expected a JSON object with files and why"]})
        unknown = set(body) - {"files", "why", "name"}
        if unknown:
            raise HTTPException(422, {"errors": [f"{k}: unknown field (use files, why, name)"
                                                 for k in sorted(unknown)]})
        name = body.get("name") if isinstance(body.get("name"), str) else "config"
        try:
            done = _rollouts(request).publish(body.get("files"), user.username, body.get("why"), name=name)
        except RolloutError as exc:
            raise HTTPException(exc.status, {"errors": exc.errors}) from None
        return done.to_dict()

    @r.post("/config/rollback", status_code=201)
    def rollback(request: Request, body: Any = Body(None), user: User = Depends(tech)):
        why = body.get("why") if isinstance(body, dict) else None
        try:
            done = _rollouts(request).rollback(user.username, why)
        except RolloutError as exc:
            raise HTTPException(exc.status, {"errors": exc.errors}) from None
        return done.to_dict()

    @r.get("/config/rollouts")
    def history(request: Request, user: User = Depends(tech), limit: int = Query(200, ge=1, le=1000)):
        return _rollouts(request).history(limit)

    @r.get("/config/status")
    def status(request: Request, user: User = Depends(tech)):
        return _rollouts(request).status()

    @r.get("/config/diff", response_class=PlainTextResponse)
    def diff(request: Request, user: User = Depends(tech), to: str = Query(..., max_length=64),
             from_: str | None = Query(None, alias="from", max_length=64)):
        try:
            return _rollouts(request).diff(from_, to)
        except RolloutError as exc:
            raise HTTPException(exc.status, {"errors": exc.errors}) from None

    @r.get("/reports/weekly")
    def weekly(request: Request, user: User = Depends(report_view), week: str | None = Query(None, max_length=20),
               format: str = Query("json", pattern="^(json|csv|html)$")):
        report = _report(request, week)
        if format == "csv":
            return PlainTextResponse(reports.render_csv(report), media_type="text/csv; charset=utf-8")
        if format == "html":
            return HTMLResponse(reports.render_html(report))
        return {"week": report.week.key, "site": report.site, "total_attempts": report.total_attempts,
                "by_room": report.by_room, "blocked": report.blocked, "overblocking": report.overblocking,
                "incidents": report.incidents, "checks": report.checks}

    return r


# --------------------------------------------------------------------------- install


def install(app: FastAPI) -> None:
    """Wire the dashboard, rollout and reports into server-core's app."""
    from .. import app as app_module

    store = app.state.store
    rollouts = Rollouts(store, prefix=_prefix(app), publish_cmd=_publisher(app),
                        on_live=lambda tree: setattr(app.state, "tree", tree))
    app.state.rollouts = rollouts
    # The last published version is the live tree (it outranks --config at start).
    try:
        tree = rollouts.live_tree()
    except Exception:  # noqa: BLE001 - a damaged row must not stop the server
        log.exception("could not load the live config version")
        tree = None
    if tree is not None:
        app.state.tree = tree
        rollouts.prefix = _prefix(app)
    get_broadcaster(app)
    listeners = getattr(app.state, "listeners", None)
    if listeners is None:
        listeners = app.state.listeners = []
    if not any(getattr(l, "is_live_feed", False) for l in listeners):
        listeners.append(live_listener(app))

    @app.exception_handler(_LoginRedirect)
    async def _to_login(request: Request, exc: _LoginRedirect):
        return RedirectResponse(exc.location, status_code=303)

    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _html_errors(request: Request, exc: StarletteHTTPException):
        # Browsers on dashboard pages get a readable page; the API keeps FastAPI's JSON.
        wants_html = "text/html" in request.headers.get("accept", "")
        if not wants_html or request.url.path.startswith(API) or exc.status_code < 400:
            return await http_exception_handler(request, exc)
        titles = {403: "Not for your role", 404: "Not found", 401: "Please log in"}
        detail = exc.detail if isinstance(exc.detail, str) else "Something was not right with that request."
        return render(request, "error.html", http_status=exc.status_code, status=exc.status_code,
                      title=titles.get(exc.status_code, "Something went wrong"), detail=detail,
                      user=current_user(request))

    app.include_router(pages_router())
    app.include_router(api_router())
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app_module.PUBLIC_ROUTES.update(PUBLIC_PAGES)
