"""The staff web dashboard: server-rendered HTML pages and live alerts.

``install(app)`` (called by server/http/app.py ``create_app``) wires the dashboard into
the collector's app: the live broadcaster and the ingest listener that feeds it
(live.py), the login redirect and readable error pages, one router per page family
(pages/), and ``/static``.  ``PUBLIC`` is the pages anyone may open (the login page and
the landing redirect); create_app adds them to the API's.

templating.py is the Jinja2 environment over templates/; static/ holds the CSS and the
one small script per live page.  No CDNs, web fonts or remote scripts.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .live import get_broadcaster, live_listener
from .pages import (allowlist, aup, blocked, concerns, cover, deliveries, devices, exports, guard, holds, incidents,
                    login, office, reports, reviews, rollout, rooms, sites, sso, users)
from .pages.base import LoginRedirect, error_page, to_login
from .templating import STATIC_DIR

PAGES = (login, sso, sites, rooms, office, cover, incidents, devices, rollout, reports, deliveries, users, concerns,
         guard, allowlist, exports, reviews, aup, holds, blocked)
PUBLIC = frozenset().union(*(module.PUBLIC for module in PAGES))

__all__ = ["install", "PUBLIC"]


def install(app: FastAPI) -> None:
    """Wire the dashboard into the collector's app."""
    get_broadcaster(app)
    listeners = getattr(app.state, "listeners", None)
    if listeners is None:
        listeners = app.state.listeners = []
    if not any(getattr(listener, "is_live_feed", False) for listener in listeners):
        listeners.append(live_listener(app))
    app.add_exception_handler(LoginRedirect, to_login)
    # Browsers on dashboard pages get a readable page; the API keeps FastAPI's JSON.
    app.add_exception_handler(StarletteHTTPException, error_page)
    for module in PAGES:
        app.include_router(module.router())
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
