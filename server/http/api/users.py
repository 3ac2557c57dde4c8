"""Staff accounts over the API (admins only): list, add, change role/password/name, disable.

A changed password or role, or a disabled account, ends that user's sessions at once.
Names follow the config contract's username rule (``check_staff_name``), because the
same names are used in rooms' ``alert_staff`` and as broker accounts.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import Field

from .. import state
from ..auth import ROLES, User, check_staff_name, hash_password, require
from . import API, RequestBody

PUBLIC: frozenset = frozenset()


class NewUserBody(RequestBody):
    username: str = Field(max_length=64)
    role: str
    password: str = Field(min_length=10, max_length=1024)
    display_name: str | None = Field(default=None, max_length=120)


class UserChangeBody(RequestBody):
    role: str | None = None
    password: str | None = Field(default=None, min_length=10, max_length=1024)
    display_name: str | None = Field(default=None, max_length=120)
    disabled: bool | None = None


def _check_role(role: str | None) -> None:
    if role is not None and role not in ROLES:
        raise HTTPException(400, f"role: {role!r} is not one of {', '.join(ROLES)}")


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["admin"])
    admin = require("admin")

    @r.get("/users")
    def users(request: Request, user: User = Depends(admin)) -> list[dict]:
        return state.store(request).list_users()

    @r.post("/users", status_code=201)
    def add_user(body: NewUserBody, request: Request, user: User = Depends(admin)) -> dict:
        _check_role(body.role)
        try:
            check_staff_name(body.username)
        except ValueError as exc:
            raise HTTPException(400, f"username: {exc}") from None
        store = state.store(request)
        if store.get_user(body.username):
            raise HTTPException(409, f"username: {body.username!r} already exists")
        store.add_user(body.username, body.role, hash_password(body.password), body.display_name)
        store.audit(user.username, "user.add", body.username, {"role": body.role})
        return {"username": body.username, "role": body.role, "display_name": body.display_name}

    @r.patch("/users/{username}")
    def change_user(username: str, body: UserChangeBody, request: Request, user: User = Depends(admin)) -> dict:
        _check_role(body.role)
        fields: dict[str, Any] = {}
        if body.role is not None:
            fields["role"] = body.role
        if body.display_name is not None:
            fields["display_name"] = body.display_name
        if body.disabled is not None:
            fields["disabled"] = int(body.disabled)
        if body.password is not None:
            fields["password_hash"] = hash_password(body.password)
        store = state.store(request)
        if not store.update_user(username[:64], **fields):
            raise HTTPException(404, f"user {username[:64]!r} not found")
        if "password_hash" in fields or fields.get("disabled") or "role" in fields:
            store.delete_user_sessions(username)
        store.audit(user.username, "user.change", username,
                    {k: ("***" if k == "password_hash" else v) for k, v in fields.items()})
        return {"username": username, "changed": sorted(k.replace("password_hash", "password") for k in fields)}

    return r
