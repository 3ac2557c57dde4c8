"""Single sign-on in the browser: ``/auth/oidc/login`` sends staff to the school's identity
provider, ``/auth/oidc/callback`` signs them in when it sends them back (the flow and its
checks are server/http/oidc.py).

Both are public (nobody is signed in yet) and both go through the same login throttle as
passwords: a caller whose sign-ins keep failing waits, without this collector calling the
provider for them.  The flow cookie is ``SameSite=Lax`` (it must come back on the
provider's redirect, a top-level navigation from another site) and lives ten minutes on
``/auth/oidc`` only; the session cookie is the usual HttpOnly, SameSite=Strict one, which
is why the callback answers with a small page that moves on from our own origin rather
than a redirect.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import RedirectResponse

from ...http import state
from ...http.auth import (attempt_throttle, client_address, current_session_user, set_session_cookie, sign_in_site,
                          start_session)
from ...http.oidc import FLOW_COOKIE, FLOW_MINUTES, FLOW_PATH, OidcError, sign_in
from .base import home_for, render
from .login import _safe_next

PUBLIC = frozenset({("GET", f"{FLOW_PATH}/login"), ("GET", f"{FLOW_PATH}/callback")})
THROTTLE_KEY = "sso"  # the throttle's "username" for sign-on attempts (the person is not known yet)


def _oidc(request: Request):
    oidc = getattr(request.app.state, "oidc", None)
    if oidc is None:
        raise HTTPException(404, "single sign-on is not set up on this server")
    return oidc


def _refused(request: Request, message: str, status: int, headers: dict | None = None):
    from .login import sso_label

    return render(request, "login.html", http_status=status, user=None, next=None, error=message,
                  sso=sso_label(request), headers=headers)


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get(f"{FLOW_PATH}/login")
    def sso_start(request: Request, next: str | None = Query(None, max_length=500)):
        oidc = _oidc(request)
        wait = attempt_throttle(request, THROTTLE_KEY, "oidc")
        if wait:
            return _refused(request, f"Too many failed sign-ins. Wait {wait} seconds and try again.", 429,
                            {"Retry-After": str(wait)})
        try:
            url, browser = oidc.start(state.store(request), _safe_next(next))
        except OidcError as exc:
            return _refused(request, str(exc), 503)
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(FLOW_COOKIE, browser, max_age=FLOW_MINUTES * 60, path=FLOW_PATH, httponly=True,
                            samesite="lax", secure=bool(getattr(request.app.state.settings, "cookie_secure", True)))
        return response

    @r.get(f"{FLOW_PATH}/callback")
    def sso_callback(request: Request):
        oidc = _oidc(request)
        store = state.store(request)
        wait = attempt_throttle(request, THROTTLE_KEY, "oidc")
        if wait:
            return _refused(request, f"Too many failed sign-ins. Wait {wait} seconds and try again.", 429,
                            {"Retry-After": str(wait)})
        params = {k: v[:4096] for k, v in request.query_params.items()}
        try:
            identity, next_path = oidc.finish(store, params, request.cookies.get(FLOW_COOKIE))
            sign_in(store, identity)
        except OidcError as exc:
            request.app.state.login_throttle.failed(THROTTLE_KEY, client_address(request))
            store.audit("?", "login.refused", None, {"via": "oidc", "why": str(exc), "from": client_address(request)})
            response = _refused(request, str(exc), 403)
            response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
            return response
        hours = getattr(request.app.state.settings, "session_hours", 12)
        token = start_session(store, identity.username, "oidc", hours)
        store.audit(identity.username, "login", None, {"via": "oidc", "sites": sorted(identity.sites)},
                    site=sign_in_site(store, identity.username))
        user = current_session_user(request, token)
        target = _safe_next(next_path) or home_for(user)
        response = render(request, "signed_in.html", user=None, target=target)
        set_session_cookie(request, response, token)
        response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
        return response

    return r
