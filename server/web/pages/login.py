"""Logging in and out of the dashboard, and ``/`` (to your home page, or to the login page).

The session is the same as the API's (server/http/auth.py ``attempt_login``, which also
throttles and audits): an HttpOnly, SameSite=Strict, Secure cookie.  ``?next=`` only ever
sends staff to a path on this site.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse

from ...http import state
from ...http.auth import COOKIE, User, attempt_login, current_user, set_session_cookie, staff_rooms, token_hash
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
        attempt = attempt_login(request, username, password, "web")
        if attempt.token is None:
            if attempt.retry_after:
                error = (f"Too many wrong passwords. Wait {attempt.retry_after} seconds and try again, "
                         "or ask an admin to reset your password.")
                return render(request, "login.html", http_status=429, user=None, next=_safe_next(next),
                              username=username, error=error, headers={"Retry-After": str(attempt.retry_after)})
            return render(request, "login.html", http_status=401, user=None, next=_safe_next(next), username=username,
                          error="That username and password do not match. Try again.")
        row = state.store(request).get_user(username)
        user = User(username, row["role"], row["display_name"],
                    staff_rooms(state.tree(request), username, state.store(request)))
        response = RedirectResponse(_safe_next(next) or home_for(user), status_code=303)
        set_session_cookie(request, response, attempt.token)
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
