"""What every page module uses: the ``page(...)`` role check, ``render``, and the error pages.

Pages are server-rendered Jinja2 (server/web/templating.py) and role-checked like the JSON
API: ``page(...)`` wraps ``auth.require(...)`` and carries the same ``.roles`` for the
route x role test, but a browser asking without a session is sent to /login (and back to
where it was going afterwards) instead of getting a bare 401.  Like the API, a page acts
in the one school the session has chosen (``user.site``; the switcher in the header
changes it) and reads only that school's records.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...http.api import API
from ...http.auth import User, current_user, logged_in, require
from ...http.csrf import csrf_token_for
from ...http.state import site_and_timezone
from ..templating import environment


class LoginRedirect(Exception):
    """Raised by a page dependency to send a browser to the login page."""

    def __init__(self, location: str):
        self.location = location


def page(*roles: str):
    """Dependency for HTML pages: like auth.require, but sends browsers to /login."""
    return _browser(require(*roles), roles)


def _browser(check, roles):
    def dependency(request: Request) -> User:
        try:
            return check(request)
        except HTTPException as exc:
            browser = request.method == "GET" and "text/html" in request.headers.get("accept", "")
            if exc.status_code == 401 and browser:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                raise LoginRedirect(f"/login?next={quote(target, safe='')}") from None
            raise

    dependency.roles = roles  # type: ignore[attr-defined]
    return dependency


# Any logged-in staff member, whatever their role (log out, choose a school).
any_page = _browser(logged_in, logged_in.roles)


def render(request: Request, name: str, http_status: int = 200, headers: dict | None = None,
           **context: Any) -> HTMLResponse:
    """The page *name* with *context*; every page gets ``user`` and ``csrf_token`` (for its
    forms' hidden ``csrf_token`` field and the ``csrf-token`` meta tag room.js reads)."""
    context.setdefault("user", getattr(request.state, "user", None))
    context.setdefault("csrf_token", csrf_token_for(request))
    # Every time on every page in the school's own zone (server/localtime.py), via the ts filter.
    context.setdefault("tz", site_and_timezone(request)[1])
    context.setdefault("school_names", school_names(request))
    html = environment().get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=http_status, headers={"Cache-Control": "no-store", **(headers or {})})


def school_names(request: Request) -> dict[str, str]:
    """{site: school name} for the header's switcher (the trust level is ``*``)."""
    sites = getattr(request.app.state, "sites", None)
    names = {tree.site.site: tree.site.school for tree in sites} if sites is not None else {}
    return {**names, "*": "Trust overview"}


def home_for(user: User) -> str:
    """Where a user lands after logging in (or switching school): their room, the
    incidents, the office board, the devices, the trust overview, or the school chooser."""
    if user.role == "teacher":
        return f"/rooms/{user.rooms[0]}" if len(user.rooms) == 1 else "/rooms"
    if user.role == "dsl":
        return "/incidents"
    if user.role == "office":
        return "/office"
    if user.role == "trust":
        return "/trust"
    if user.role is None:
        return "/schools"
    return "/devices"


async def to_login(request: Request, exc: LoginRedirect):
    return RedirectResponse(exc.location, status_code=303)


async def error_page(request: Request, exc: StarletteHTTPException):
    # Browsers on dashboard pages get a readable page; the API keeps FastAPI's JSON.
    wants_html = "text/html" in request.headers.get("accept", "")
    if not wants_html or request.url.path.startswith(API) or exc.status_code < 400:
        return await http_exception_handler(request, exc)
    titles = {403: "Not for your role", 404: "Not found", 401: "Please log in"}
    detail = exc.detail if isinstance(exc.detail, str) else "Something was not right with that request."
    return render(request, "error.html", http_status=exc.status_code, status=exc.status_code,
                  title=titles.get(exc.status_code, "Something went wrong"), detail=detail,
                  user=current_user(request))
