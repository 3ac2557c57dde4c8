"""Staff sessions over the API: log in (bearer token and cookie), log out, who am I."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import Field

from .. import state
from ..auth import COOKIE, LoginThrottle, User, any_staff, login, token_hash
from . import API, RequestBody

PUBLIC = frozenset({("POST", f"{API}/login")})


class LoginBody(RequestBody):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["auth"])

    @r.post("/login")
    def do_login(body: LoginBody, request: Request, response: Response) -> dict:
        settings = request.app.state.settings
        store = state.store(request)
        throttle: LoginThrottle = request.app.state.login_throttle
        if throttle.is_blocked(body.username):
            store.audit(body.username[:64], "login.throttled", None, None)
            raise HTTPException(429, "too many wrong passwords for this username; wait 15 minutes or ask an admin")
        token = login(store, body.username, body.password, settings.session_hours)
        if token is None:
            throttle.failed(body.username)
            store.audit(body.username[:64], "login.failed", None, None)
            raise HTTPException(401, "username or password is not right")
        throttle.succeeded(body.username)
        store.audit(body.username, "login", None, None)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=settings.cookie_secure,
                            max_age=settings.session_hours * 3600, path="/")
        user = store.get_user(body.username)
        return {"token": token, "user": {"username": user["username"], "role": user["role"],
                                         "display_name": user["display_name"]}}

    @r.post("/logout")
    def do_logout(request: Request, response: Response, user: User = Depends(any_staff)) -> dict:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get(COOKIE, "")
        state.store(request).delete_session(token_hash(token))
        state.store(request).audit(user.username, "logout", None, None)
        response.delete_cookie(COOKIE, path="/")
        return {"ok": True}

    @r.get("/me")
    def me(user: User = Depends(any_staff)) -> dict:
        return user.to_dict()

    return r
