"""The collector's HTTP API: ``create_app(settings)`` builds the FastAPI application.

Every route states its roles with ``Depends(require(...))`` (server/auth.py); a
table-driven test walks all routes and checks each refuses every other role and the
unauthenticated.  Public routes are listed in ``PUBLIC_ROUTES``.  OpenAPI is served at
``/api/v1/openapi.json``.

``app.state`` holds what routes and extensions share: ``store`` (server/store.py),
``settings``, ``tree`` (the live ConfigTree or None; rollout may replace it),
``publisher`` (``(topic, payload_bytes, qos) -> None`` that reaches the broker, or None),
``metrics`` (server/ingest.Metrics), ``ingest`` (the Ingest worker or None) and
``listeners`` (callables ``(kind, topic, data)`` for live updates; serve.py attaches
them to ingest).

Background work (ingest, retention, dark-device checks) is started by server/serve.py,
so tests can build an app around a store alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from agent.protocol import DEFAULT_PREFIX, encode, topic as make_topic

from . import __version__
from . import incidents as inc
from .auth import (COOKIE, ROLES, LoginThrottle, User, any_staff, current_device, hash_password, login, require,
                   token_hash)
from .devices import EnrolError, create_enrol_token, device_view, enrol
from .ingest import Metrics
from .store import Store, StoreError

log = logging.getLogger(__name__)

API = "/api/v1"
# Routes anyone may call (the route x role test checks everything else is role-checked).
PUBLIC_ROUTES = {
    ("POST", f"{API}/login"), ("POST", f"{API}/enrol"), ("GET", "/healthz"), ("GET", "/metrics"),
    ("GET", f"{API}/openapi.json"), ("GET", f"{API}/docs"), ("GET", "/docs/oauth2-redirect"),
    # the dashboard's login page and its landing redirect (server/web)
    ("GET", "/"), ("GET", "/login"), ("POST", "/login"),
}


@dataclass
class Settings:
    """What create_app needs.  serve.py fills it from the command line."""

    db_url: str = "sqlite:///classroom-server.db"
    config_dir: str | None = None
    broker_url: str | None = None
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    prefix: str | None = None
    cookie_secure: bool = False
    session_hours: int = 12
    dark_check_seconds: float = 60.0


# --------------------------------------------------------------------------- bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginBody(_Body):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class NewUserBody(_Body):
    username: str = Field(max_length=64)
    role: str
    password: str = Field(min_length=10, max_length=1024)
    display_name: str | None = Field(default=None, max_length=120)


class UserChangeBody(_Body):
    role: str | None = None
    password: str | None = Field(default=None, min_length=10, max_length=1024)
    display_name: str | None = Field(default=None, max_length=120)
    disabled: bool | None = None


class EnrolTokenBody(_Body):
    device: str = Field(max_length=64)
    hours: int = Field(default=72, ge=1, le=720)


class EnrolBody(_Body):
    token: str = Field(max_length=200)


class NoteBody(_Body):
    text: str = Field(min_length=1, max_length=8000)


# --------------------------------------------------------------------------- helpers


def _store(request: Request) -> Store:
    return request.app.state.store


def _incident_or_404(request: Request, incident_id: str, user: User) -> dict:
    incident = _store(request).get_incident(incident_id) if len(incident_id) <= 64 else None
    # A teacher asking about another room's incident gets the same answer as for none.
    if incident is None or not user.can_see_room(incident["room"]):
        raise HTTPException(404, f"incident {incident_id[:64]!r} not found")
    return incident


def _prefix(request: Request) -> str:
    settings: Settings = request.app.state.settings
    tree = request.app.state.tree
    if settings.prefix:
        return settings.prefix
    return tree.site.broker.prefix if tree is not None else DEFAULT_PREFIX


def _bad(exc: Exception) -> HTTPException:
    return HTTPException(400, str(exc))


# --------------------------------------------------------------------------- routers


def auth_router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["auth"])

    @r.post("/login")
    def do_login(body: LoginBody, request: Request, response: Response) -> dict:
        settings: Settings = request.app.state.settings
        throttle: LoginThrottle = request.app.state.login_throttle
        if throttle.is_blocked(body.username):
            _store(request).audit(body.username[:64], "login.throttled", None, None)
            raise HTTPException(429, "too many wrong passwords for this username; wait 15 minutes or ask an admin")
        token = login(_store(request), body.username, body.password, settings.session_hours)
        if token is None:
            throttle.failed(body.username)
            _store(request).audit(body.username[:64], "login.failed", None, None)
            raise HTTPException(401, "username or password is not right")
        throttle.succeeded(body.username)
        _store(request).audit(body.username, "login", None, None)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=settings.cookie_secure,
                            max_age=settings.session_hours * 3600, path="/")
        user = _store(request).get_user(body.username)
        return {"token": token, "user": {"username": user["username"], "role": user["role"],
                                         "display_name": user["display_name"]}}

    @r.post("/logout")
    def do_logout(request: Request, response: Response, user: User = Depends(any_staff)) -> dict:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get(COOKIE, "")
        _store(request).delete_session(token_hash(token))
        _store(request).audit(user.username, "logout", None, None)
        response.delete_cookie(COOKIE, path="/")
        return {"ok": True}

    @r.get("/me")
    def me(user: User = Depends(any_staff)) -> dict:
        return user.to_dict()

    return r


def incidents_router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["incidents"])
    viewers = require("teacher", "dsl")
    dsl = require("dsl")

    @r.get("/incident-categories")
    def categories(user: User = Depends(viewers)) -> dict:
        return {"categories": inc.CATEGORIES, "four_cs": inc.FOUR_CS, "statuses": list(inc.STATUSES),
                "checklists": {k: [{"item": i, "text": t, "source": f"shared/policies {s}"} for i, t, s in v]
                               for k, v in inc.CHECKLISTS.items()}}

    @r.get("/incidents")
    def list_incidents(request: Request, user: User = Depends(viewers),
                       status: str | None = Query(None, max_length=20),
                       since: str | None = Query(None, max_length=40),
                       limit: int = Query(200, ge=1, le=1000)) -> list[dict]:
        rooms = None if user.role == "dsl" else list(user.rooms)
        rows = _store(request).list_incidents(rooms=rooms, status=status, since=since, limit=limit)
        return [inc.for_user(row, user) for row in rows]

    @r.get("/incidents/{incident_id}")
    def get_incident(incident_id: str, request: Request, user: User = Depends(viewers)) -> dict:
        return inc.for_user(_incident_or_404(request, incident_id, user), user)

    @r.patch("/incidents/{incident_id}")
    def patch_incident(incident_id: str, request: Request, body: Any = Body(None),
                       user: User = Depends(dsl)) -> dict:
        _incident_or_404(request, incident_id, user)
        try:
            changes = inc.validate_changes(body)
        except inc.IncidentError as exc:
            raise _bad(exc) from None
        updated = _store(request).update_incident(incident_id, user.username, changes)
        # The audit log is also read by admins: record what changed, not the DSL's outcome text.
        _store(request).audit(user.username, "incident.update", incident_id,
                              {k: ("(text)" if k == "outcome" else v) for k, v in changes.items()})
        return inc.for_user(updated, user)

    @r.post("/incidents/{incident_id}/notes")
    def add_note(incident_id: str, body: NoteBody, request: Request, user: User = Depends(dsl)) -> dict:
        _incident_or_404(request, incident_id, user)
        action = _store(request).add_incident_action(incident_id, user.username, "note", text=body.text)
        _store(request).audit(user.username, "incident.note", incident_id, None)
        return action

    @r.post("/incidents/{incident_id}/checklist")
    def tick(incident_id: str, request: Request, body: Any = Body(None), user: User = Depends(dsl)) -> dict:
        incident = _incident_or_404(request, incident_id, user)
        try:
            item, done, note = inc.validate_tick(incident.get("category"), body)
        except inc.IncidentError as exc:
            raise _bad(exc) from None
        _store(request).add_incident_action(incident_id, user.username, "tick" if done else "untick",
                                            item=item, text=note)
        _store(request).audit(user.username, "incident.checklist", incident_id, {"item": item, "done": done})
        return inc.for_user(_store(request).get_incident(incident_id), user)

    @r.get("/incidents/{incident_id}/evidence")
    def evidence(incident_id: str, request: Request, user: User = Depends(dsl)) -> dict:
        _incident_or_404(request, incident_id, user)
        items = _store(request).evidence(incident_id)
        # Every view of evidence is recorded (policy: no unlogged access to records).
        _store(request).audit(user.username, "evidence.view", incident_id, {"records": len(items)})
        return {"incident": incident_id, "evidence": items}

    return r


def alerts_router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["alerts"])
    responders = require("teacher", "dsl", "admin")

    def command(cmd: str):
        def handler(alert_id: str, request: Request, user: User = Depends(responders)) -> dict:
            incident = _incident_or_404(request, alert_id, user)
            publisher = request.app.state.publisher
            if publisher is None:
                raise HTTPException(503, "not connected to the broker; use the device's staff PIN")
            payload = {"cmd": cmd, "alert_id": incident["id"], "by": user.username}
            where = make_topic(_prefix(request), incident["site"], incident["room"], incident["device"], "cmd")
            try:
                publisher(where, encode(payload), 1)
            except Exception as exc:  # noqa: BLE001 - tell staff, keep serving
                log.error("cmd %s for %s not published: %s", cmd, alert_id, exc)
                raise HTTPException(503, "the command could not be sent to the broker") from None
            _store(request).audit(user.username, f"alert.{cmd}", incident["id"],
                                  {"device": incident["device"], "room": incident["room"]})
            return {"sent": payload, "topic": where}

        handler.__name__ = f"alert_{cmd}"
        return handler

    r.add_api_route("/alerts/{alert_id}/ack", command("ack"), methods=["POST"])
    r.add_api_route("/alerts/{alert_id}/clear", command("clear"), methods=["POST"])
    return r


def devices_router() -> APIRouter:
    from datetime import datetime, timedelta, timezone

    r = APIRouter(prefix=API, tags=["devices"])
    tech = require("technician", "admin")

    @r.get("/devices")
    def devices(request: Request, user: User = Depends(tech)) -> list[dict]:
        tree = request.app.state.tree
        dark = timedelta(minutes=tree.site.dark_after_minutes) if tree is not None else None
        now = datetime.now(timezone.utc)
        return [device_view(row, now, dark) for row in _store(request).list_devices()]

    @r.get("/device-alerts")
    def device_alerts(request: Request, user: User = Depends(tech),
                      open_only: bool = Query(True, alias="open")) -> list[dict]:
        return _store(request).list_device_alerts(open_only=open_only)

    @r.post("/enrol-tokens")
    def new_token(body: EnrolTokenBody, request: Request, user: User = Depends(tech)) -> dict:
        try:
            return create_enrol_token(_store(request), body.device, user.username, request.app.state.tree,
                                      hours=body.hours)
        except EnrolError as exc:
            raise _bad(exc) from None

    @r.get("/enrol-tokens")
    def tokens(request: Request, user: User = Depends(tech)) -> list[dict]:
        return _store(request).list_enrol_tokens()

    @r.post("/enrol")
    def do_enrol(body: EnrolBody, request: Request) -> dict:
        try:
            return enrol(_store(request), body.token, request.app.state.tree)
        except EnrolError as exc:
            raise HTTPException(403, str(exc)) from None

    @r.get("/device/whoami")
    def whoami(device: str = Depends(current_device)) -> dict:
        """Device endpoints authenticate with HTTP basic (device id + enrolment password)."""
        return {"device": device}

    return r


def admin_router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["admin"])
    admin = require("admin")

    def check_role(role: str | None) -> None:
        if role is not None and role not in ROLES:
            raise HTTPException(400, f"role: {role!r} is not one of {', '.join(ROLES)}")

    @r.get("/users")
    def users(request: Request, user: User = Depends(admin)) -> list[dict]:
        return _store(request).list_users()

    @r.post("/users", status_code=201)
    def add_user(body: NewUserBody, request: Request, user: User = Depends(admin)) -> dict:
        from agent.config.schema import check_username

        check_role(body.role)
        try:
            check_username(body.username)
        except ValueError as exc:
            raise HTTPException(400, f"username: {exc}") from None
        if _store(request).get_user(body.username):
            raise HTTPException(409, f"username: {body.username!r} already exists")
        _store(request).add_user(body.username, body.role, hash_password(body.password), body.display_name)
        _store(request).audit(user.username, "user.add", body.username, {"role": body.role})
        return {"username": body.username, "role": body.role, "display_name": body.display_name}

    @r.patch("/users/{username}")
    def change_user(username: str, body: UserChangeBody, request: Request, user: User = Depends(admin)) -> dict:
        check_role(body.role)
        fields: dict[str, Any] = {}
        if body.role is not None:
            fields["role"] = body.role
        if body.display_name is not None:
            fields["display_name"] = body.display_name
        if body.disabled is not None:
            fields["disabled"] = int(body.disabled)
        if body.password is not None:
            fields["password_hash"] = hash_password(body.password)
        if not _store(request).update_user(username[:64], **fields):
            raise HTTPException(404, f"user {username[:64]!r} not found")
        if "password_hash" in fields or fields.get("disabled") or "role" in fields:
            _store(request).delete_user_sessions(username)
        _store(request).audit(user.username, "user.change", username,
                              {k: ("***" if k == "password_hash" else v) for k, v in fields.items()})
        return {"username": username, "changed": sorted(k.replace("password_hash", "password") for k in fields)}

    @r.get("/audit")
    def audit(request: Request, user: User = Depends(require("dsl", "admin")),
              since: str | None = Query(None, max_length=40), action: str | None = Query(None, max_length=64),
              limit: int = Query(500, ge=1, le=5000)) -> list[dict]:
        return _store(request).list_audit(since=since, action=action, limit=limit)

    return r


def ops_router() -> APIRouter:
    r = APIRouter(tags=["ops"])

    @r.get("/healthz")
    def healthz(request: Request) -> JSONResponse:
        try:
            _store(request).query_one("SELECT 1 AS ok")
            ok = True
        except Exception:  # noqa: BLE001
            ok = False
        ingest = request.app.state.ingest
        body = {"ok": ok, "version": __version__, "store": _store(request).dialect,
                "broker": None if ingest is None else ingest.connected.is_set()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @r.get("/metrics", response_class=PlainTextResponse)
    def metrics(request: Request) -> str:
        store = _store(request)
        ingest = request.app.state.ingest
        gauges = {
            "devices_online": (store.count("devices", "status = ?", ("online",)), "devices whose status is online"),
            "devices_known": (store.count("devices"), "devices in the registry"),
            "device_alerts_open": (store.count("device_alerts", "cleared_at IS NULL"), "open technician alerts"),
            "store_queue_depth": (store.queue_depth, "write tasks waiting for the store"),
            "ingest_queue_depth": (ingest.queue_depth if ingest is not None else 0,
                                   "MQTT messages waiting to be parsed"),
            "broker_connected": (int(bool(ingest and ingest.connected.is_set())), "1 if ingest is connected"),
        }
        return request.app.state.metrics.render(gauges)

    return r


# --------------------------------------------------------------------------- factory


def create_app(settings: Settings | None = None, *, store: Store | None = None, tree=None,
               publisher: Callable[[str, bytes, int], Any] | None = None, metrics: Metrics | None = None,
               ingest=None) -> FastAPI:
    """Build the app.  Opens ``settings.db_url`` unless a store is given; loads
    ``settings.config_dir`` unless a tree is given."""
    from contextlib import asynccontextmanager

    settings = settings or Settings()
    own_store = store is None
    if store is None:
        store = Store.open(settings.db_url)
    if tree is None and settings.config_dir:
        from agent.config import load_tree

        tree = load_tree(Path(settings.config_dir))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if own_store:
            store.close()

    app = FastAPI(title="classroom-server", version=__version__, openapi_url=f"{API}/openapi.json",
                  docs_url=f"{API}/docs", redoc_url=None, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.tree = tree
    app.state.publisher = publisher
    app.state.metrics = metrics or (ingest.metrics if ingest is not None else Metrics())
    app.state.ingest = ingest
    app.state.listeners = []
    app.state.login_throttle = LoginThrottle()

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    for router in (auth_router(), incidents_router(), alerts_router(), devices_router(), admin_router(),
                   ops_router()):
        app.include_router(router)

    # ---- server-web routers (dashboard, rollout, reports) are registered below this line.
    from .web import install as install_web

    install_web(app)
    return app
