"""Logging in and out of the dashboard, and ``/`` (to your home page, or to the login page).

The session is the same as the API's (server/http/auth.py ``attempt_login``, which also
throttles and audits): an HttpOnly, SameSite=Strict, Secure cookie.  ``?next=`` only ever
sends staff to a path on this site.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse

from ...http import state
from ...http.auth import (COOKIE, User, attempt_login, current_session_user, current_user, school_of,
                          set_session_cookie, token_hash)
from .base import any_page, home_for, render

PUBLIC = frozenset({("GET", "/"), ("GET", "/login"), ("POST", "/login")})


def sso_label(request: Request) -> str | None:
    """The single sign-on button's label ("Sign in with Microsoft"), or None without SSO."""
    oidc = getattr(request.app.state, "oidc", None)
    return oidc.settings.label if oidc is not None else None


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
        return render(request, "login.html", user=None, next=_safe_next(next), sso=sso_label(request))

    @r.post("/login")
    def login_submit(request: Request, username: str = Form("", max_length=64),
                     password: str = Form("", max_length=1024), next: str = Form("", max_length=500)):
        attempt = attempt_login(request, username, password, "web")
        if attempt.token is None:
            if attempt.retry_after:
                error = (f"Too many wrong passwords. Wait {attempt.retry_after} seconds and try again, "
                         "or ask an admin to reset your password.")
                return render(request, "login.html", http_status=429, user=None, next=_safe_next(next),
                              username=username, error=error, headers={"Retry-After": str(attempt.retry_after)},
                              sso=sso_label(request))
            return render(request, "login.html", http_status=401, user=None, next=_safe_next(next), username=username,
                          error="That username and password do not match. Try again.", sso=sso_label(request))
        user = current_session_user(request, attempt.token)
        response = RedirectResponse(_safe_next(next) or home_for(user), status_code=303)
        set_session_cookie(request, response, attempt.token)
        return response

    @r.post("/logout")
    def logout(request: Request, user: User = Depends(any_page)):
        token = request.cookies.get(COOKIE)
        if token:
            state.store(request).delete_session(token_hash(token))
        state.store(request).audit(user.username, "logout", None, {"via": "web"}, site=school_of(user.site))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return r
