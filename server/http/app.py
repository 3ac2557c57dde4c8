"""The collector's web application: ``create_app(settings)`` builds the FastAPI app.

It opens the store (unless given one), loads the config trees (one per school), sets up
what the routes share on ``app.state`` (listed in state.py), includes the JSON API routers
(api/) and the dashboard (server/web), and makes each school's newest published config
version its live tree (it outranks ``--config`` at start).  When the collector serves one
school, accounts and rows from before tenancy are given that school
(``Store.adopt_single_site``): a single-school install needs no setup.  OpenAPI is served
at ``/api/v1/openapi.json``.

Every route states its roles with ``Depends(require(...))`` (auth.py) unless its router
lists it in its ``PUBLIC`` set; ``PUBLIC_ROUTES`` is their union, and the route x role
test (tests/test_api_roles.py) checks everything else refuses every other role, and the
route x role x site test (tests/test_tenancy.py) that no route shows or changes another
school's records.

Every request passes three pieces of middleware first (outermost first): headers.py
(CSP, no framing, nosniff, no referrer to other sites), bodylimit.py (413 before a body over the limit is
read) and csrf.py (a browser's state-changing request must be same-origin and carry the
session's CSRF token).  Logins are throttled (throttle.py, through auth.attempt_login).

Background work (ingest, retention, dark-device checks, the weekly digest, escalation
e-mails and webhooks) is started by server/serve.py, so tests can build an app around a
store alone.
"""

from __future__ import annotations

import functools
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__, allowlist, web
from ..holds import Holds
from ..ingest import Metrics
from ..presence import Presence
from ..rollout import Rollouts
from ..sites import Sites
from ..store import Store, StoreError
from . import state
from .api import (API, alerts, allowlist as allowlist_api, audit, aup, blocked, commands, concerns, config, deliveries,
                  devices, exports, guard, holds, incidents, login, ops, reports, reviews, sites, timetable, unblock,
                  users)
from .bodylimit import BodyLimit
from .csrf import CsrfGuard
from .headers import SecurityHeaders
from .throttle import LoginThrottle

log = logging.getLogger(__name__)

# In this order; the dashboard's pages come after them.
API_ROUTERS = (login, sites, incidents, alerts, commands, devices, users, audit, ops, config, reports, deliveries,
               concerns, guard, allowlist_api, exports, reviews, aup, unblock, timetable, holds, blocked)
# FastAPI's own page: the OpenAPI document.  (Not its Swagger UI: that loads scripts from a
# CDN, which the dashboard's Content-Security-Policy and house rules forbid.)
DOCS_ROUTES = frozenset({("GET", f"{API}/openapi.json")})
# Routes anyone may call, as each router declares them.
PUBLIC_ROUTES = DOCS_ROUTES.union(web.PUBLIC, *(module.PUBLIC for module in API_ROUTERS))


@dataclass
class Settings:
    """What create_app needs.  serve.py fills it from the command line."""

    db_url: str = "sqlite:///classroom-server.db"
    config_dir: str | None = None
    # More schools: one config folder each (config_dir, if set, is one of them).
    config_dirs: tuple[str, ...] = ()
    broker_url: str | None = None
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    prefix: str | None = None
    # Session cookies are Secure (sent over HTTPS only) unless `serve --plain-http`, which
    # only a local demo on loopback may use (serve.py refuses it with any other --bind).
    cookie_secure: bool = True
    session_hours: int = 12
    dark_check_seconds: float = 60.0
    # Single sign-on (server/http/oidc.OidcSettings), or None for local accounts only.
    oidc: Any = None

    def folders(self) -> list[str]:
        """Every config folder given, in order, once."""
        return list(dict.fromkeys([*([self.config_dir] if self.config_dir else []), *self.config_dirs]))


def create_app(settings: Settings | None = None, *, store: Store | None = None, tree=None,
               publisher: Callable[[str, bytes, int], Any] | None = None, metrics: Metrics | None = None,
               ingest=None) -> FastAPI:
    """Build the app.  Opens ``settings.db_url`` unless a store is given; loads
    ``settings.config_dir`` / ``config_dirs`` unless a tree (or a list of trees, one per
    school) is given."""
    settings = settings or Settings()
    own_store = store is None
    if store is None:
        store = Store.open(settings.db_url)
    folders: dict[str, str] = {}
    given = [] if tree is None else list(tree) if isinstance(tree, (list, tuple)) else [tree]
    if given and len(given) == len(settings.folders()):
        folders = {t.site.site: folder for t, folder in zip(given, settings.folders())}
    if tree is None and settings.folders():
        from agent.config import load_tree

        tree = []
        for folder in settings.folders():
            loaded = load_tree(Path(folder))
            folders[loaded.site.site] = folder
            tree.append(loaded)
    trees = [] if tree is None else list(tree) if isinstance(tree, (list, tuple)) else [tree]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if own_store:
            store.close()

    app = FastAPI(title="classroom-server", version=__version__, openapi_url=f"{API}/openapi.json",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.sites = Sites(trees)
    app.state.config_folders = folders  # {site: config folder} for the rollout page's publish
    app.state.tree = None
    app.state.oidc = None
    app.state.publisher = publisher
    app.state.metrics = metrics or (ingest.metrics if ingest is not None else Metrics())
    app.state.ingest = ingest
    app.state.listeners = []
    # Who is watching each room (teacher clients' _watch messages, dashboard tabs): the office
    # board shows it and the notifier (serve.py) escalates a press in a room that has nobody.
    app.state.presence = Presence(store)
    app.state.listeners.append(app.state.presence.listener)
    # The DSL's holds (server/holds.py): a device that comes online is told its holds again.
    app.state.holds = Holds(store, lambda topic, payload, qos: _cmd_publisher(app)(topic, payload, qos, False),
                            lambda: state.topic_prefix(app))
    app.state.listeners.append(app.state.holds.listener)
    app.state.login_throttle = LoginThrottle()
    _start_rollouts(app)
    _adopt_single_site(app)
    if settings.oidc is not None:
        from .oidc import OidcLogin

        app.state.oidc = OidcLogin(settings.oidc)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    for module in API_ROUTERS:
        app.include_router(module.router())
    web.install(app)
    # The last added is the outermost: headers on every answer, then the body limit
    # before anything reads a body, then the CSRF check (which may read a form body).
    app.add_middleware(CsrfGuard, public=PUBLIC_ROUTES)
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)
    return app


def _start_rollouts(app: FastAPI) -> None:
    """``app.state.rollouts``; each school's last published version becomes its live tree."""
    sites: Sites = app.state.sites

    def on_live(tree) -> None:
        sites.set(tree)
        _single_tree(app)

    rollouts = Rollouts(app.state.store, prefix=state.topic_prefix(app), publish_cmd=_cmd_publisher(app),
                        on_live=on_live, sites=sites)
    # Every publish that changes an allow list goes in its school's change log (server/allowlist.py).
    rollouts.on_published.append(functools.partial(allowlist.record_publish, app.state.store))
    app.state.rollouts = rollouts
    try:
        for tree in rollouts.live_trees():
            sites.set(tree)
    except Exception:  # noqa: BLE001 - a damaged row must not stop the server
        log.exception("could not load the live config versions")
    _single_tree(app)
    rollouts.prefix = state.topic_prefix(app)


def _single_tree(app: FastAPI) -> None:
    # app.state.tree: the one school's tree, for code that serves a single-school install.
    sites: Sites = app.state.sites
    app.state.tree = sites.tree(sites.single())


def _adopt_single_site(app: FastAPI) -> None:
    """A single-school install keeps working with no setup: its accounts (and rows from
    before tenancy) belong to its one site."""
    site = app.state.sites.single()
    if site is None:
        return
    done = app.state.store.adopt_single_site(site)
    if done:
        log.info("tenancy: gave site %s to %s", site, ", ".join(f"{n} {t}" for t, n in sorted(done.items())))


def _cmd_publisher(app: FastAPI):
    """(topic, payload, qos, retain) publisher for rollout: ingest's own connection, else app.state.publisher."""

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
