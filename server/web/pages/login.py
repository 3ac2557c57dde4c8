"""Logging in and out of the dashboard, and ``/`` (to your home page, or to the login page).

The session is the same as the API's (server/http/auth.py ``login``): an HttpOnly,
SameSite=Strict cookie.  ``?next=`` only ever sends staff to a path on this site.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse

from ...http import state
from ...http.auth import COOKIE, User, current_user, login, staff_rooms, token_hash
from .base import home_for, page, render

PUBLIC = frozenset({("GET", "/"), ("GET", "/login"), ("POST", "/login")})


def _safe_next(value: str | None) -> str | None:
    # Only same-site paths: never let ?next= send staff to another site.
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return None


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/")
    def home(request: Request):
        user = current_user(request)
        return RedirectResponse(home_for(user) if user else "/login", status_code=303)

    @r.get("/login")
    def login_form(request: Request, next: str | None = Query(None, max_length=500)):
        return render(request, "login.html", user=None, next=_safe_next(next))

    @r.post("/login")
    def login_submit(request: Request, username: str = Form("", max_length=64),
                     password: str = Form("", max_length=1024), next: str = Form("", max_length=500)):
        settings = request.app.state.settings
        hours = getattr(settings, "session_hours", 12)
        store = state.store(request)
        token = login(store, username, password, hours)
        if token is None:
            store.audit(username[:64] or "?", "login.failed", None, {"via": "web"})
            return render(request, "login.html", http_status=401, user=None, next=_safe_next(next), username=username,
                          error="That username and password do not match. Try again.")
        store.audit(username, "login", None, {"via": "web"})
        row = store.get_user(username)
        user = User(username, row["role"], row["display_name"], staff_rooms(state.tree(request), username))
        response = RedirectResponse(_safe_next(next) or home_for(user), status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                            secure=bool(getattr(settings, "cookie_secure", False)), max_age=hours * 3600, path="/")
        return response

    @r.post("/logout")
    def logout(request: Request, user: User = Depends(page("teacher", "dsl", "technician", "admin"))):
        token = request.cookies.get(COOKIE)
        if token:
            state.store(request).delete_session(token_hash(token))
        state.store(request).audit(user.username, "logout", None, {"via": "web"})
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return r
