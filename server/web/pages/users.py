"""Staff accounts on the dashboard (a school's admins): who belongs to the school, with
which role, when they last signed in and how (password or single sign-on), for the access
reviews the policies ask for (policy 000 §7.5.1); add an account, change a role, disable a
leaver (policy 002 §6.9) or take an account off the school.

The rules are the API's (server/http/api/users.py: one school's accounts only; account-wide
changes only to an account no other school shares); forms post and redirect back (303).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from ...http import state
from ...http.api.users import NewUserBody, UserChangeBody, change_user, check_role, site_users
from ...http.auth import SCHOOL_ROLES, User, check_staff_name, hash_password
from .base import page, render

PUBLIC: frozenset = frozenset()


def _users_page(request: Request, user: User, *, error: str | None = None, status: int = 200, flash=None):
    return render(request, "users.html", http_status=status, users=site_users(request, user), roles=SCHOOL_ROLES,
                  error=error, flash=flash)


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    admin = page("admin")

    @r.get("/users")
    def users(request: Request, user: User = Depends(admin)):
        return _users_page(request, user)

    @r.post("/users/add")
    def add(request: Request, username: str = Form("", max_length=64), role: str = Form("", max_length=20),
            password: str = Form("", max_length=1024), display_name: str = Form("", max_length=120),
            user: User = Depends(admin)):
        try:
            body = NewUserBody(username=username, role=role, password=password, display_name=display_name or None)
            check_role(body.role)
            check_staff_name(body.username)
        except ValidationError as exc:
            error = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return _users_page(request, user, error=error, status=400)
        except (HTTPException, ValueError) as exc:
            return _users_page(request, user, error=str(getattr(exc, "detail", exc)), status=400)
        store = state.store(request)
        if store.get_user(body.username):
            return _users_page(request, user, error=f"username: {body.username!r} already exists", status=409)
        store.add_user(body.username, body.role, hash_password(body.password), body.display_name,
                       sites={user.site: body.role})
        store.audit(user.username, "user.add", body.username, {"role": body.role, "via": "web"}, site=user.site)
        return RedirectResponse("/users", status_code=303)

    @r.post("/users/{username}/change")
    def change(username: str, request: Request, role: str = Form("", max_length=20),
               action: str = Form("", max_length=20), user: User = Depends(admin)):
        body = UserChangeBody(role=(role or None) if action == "role" else None, disabled={"disable": True, "enable": False}.get(action),
                              remove=True if action == "remove" else None)
        try:
            change_user(request, user, username, body)
        except HTTPException as exc:
            if exc.status_code == 404:
                raise
            return _users_page(request, user, error=str(exc.detail), status=exc.status_code)
        return RedirectResponse("/users", status_code=303)

    return r
