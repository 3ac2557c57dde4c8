"""Staff sessions over the API: log in (bearer token and cookie), log out, who am I.

A login answers with the bearer ``token`` and, for a client that uses the cookie instead,
its ``csrf_token`` (send it as ``X-CSRF-Token`` on every POST/PATCH made with the cookie;
server/http/csrf.py).  Logins are throttled and audited by ``auth.attempt_login``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import Field

from .. import state
from ..auth import (COOKIE, User, any_staff, attempt_login, current_session_user, school_of, set_session_cookie,
                    token_hash)
from ..csrf import csrf_token
from . import API, RequestBody

PUBLIC = frozenset({("POST", f"{API}/login")})


class LoginBody(RequestBody):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["auth"])

    @r.post("/login")
    def do_login(body: LoginBody, request: Request, response: Response) -> dict:
        attempt = attempt_login(request, body.username, body.password, "api")
        if attempt.retry_after:
            raise HTTPException(429, f"too many wrong passwords; try again in {attempt.retry_after} seconds",
                                headers={"Retry-After": str(attempt.retry_after)})
        if attempt.token is None:
            raise HTTPException(401, "username or password is not right")
        set_session_cookie(request, response, attempt.token)
        user = current_session_user(request, attempt.token)
        return {"token": attempt.token, "csrf_token": csrf_token(attempt.token), "user": user.to_dict()}

    @r.post("/logout")
    def do_logout(request: Request, response: Response, user: User = Depends(any_staff)) -> dict:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get(COOKIE, "")
        state.store(request).delete_session(token_hash(token))
        state.store(request).audit(user.username, "logout", None, None, site=school_of(user.site))
        response.delete_cookie(COOKIE, path="/")
        return {"ok": True}

    @r.get("/me")
    def me(user: User = Depends(any_staff)) -> dict:
        return user.to_dict()

    return r
