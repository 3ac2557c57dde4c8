"""Staff accounts over the API (admins of a school): list, add, change role/password/name,
disable, take off the school; with each account's last sign-in for access reviews
(policy 000 §7.5.1; leavers disabled, policy 002 §6.9).

An admin works on the accounts of the school they act in: the list shows only those,
with their role there; an account of another school is 404.  What belongs to the
account as a whole (password, disabled) may be changed only for an account that belongs
to no other school (else 403: the trust's IT does that, with ``classroom-server user`` or
in the identity provider).  A changed password or role, a disabled account or one taken
off the school ends that user's sessions at once.  Names follow the config contract's
username rule (``check_staff_name``), because the same names are used in rooms'
``alert_staff`` and as broker accounts.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import Field

from .. import state
from ..auth import SCHOOL_ROLES, User, check_staff_name, hash_password, require
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
    remove: bool | None = None


def check_role(role: str | None) -> None:
    """400 unless *role* is a school role (the trust level is granted by the trust's IT)."""
    if role is not None and role not in SCHOOL_ROLES:
        raise HTTPException(400, f"role: {role!r} is not one of {', '.join(SCHOOL_ROLES)}")


def site_users(request: Request, user: User) -> list[dict]:
    """The accounts of *user*'s school, each with its role there (never another school's)."""
    rows = state.store(request).list_users(site=user.site)
    for row in rows:
        membership = row.pop("sites").get(user.site, {})
        row["role"], row["source"] = membership.get("role"), membership.get("source")
    return rows


def change_user(request: Request, admin: User, username: str, body: UserChangeBody) -> list[str]:
    """Apply *body* to *username* of *admin*'s school; the names of what changed.  404 for
    an account not of this school; 403 for account-wide changes to one shared with others."""
    check_role(body.role)
    store = state.store(request)
    username = username[:64]
    memberships = store.memberships(username)
    if admin.site not in memberships:
        raise HTTPException(404, f"user {username!r} not found")
    shared = set(memberships) - {admin.site}
    account: dict[str, Any] = {}
    if body.display_name is not None:
        account["display_name"] = body.display_name
    if body.disabled is not None:
        account["disabled"] = int(body.disabled)
    if body.password is not None:
        account["password_hash"] = hash_password(body.password)
    if shared and ({"disabled", "password_hash"} & set(account)):
        raise HTTPException(403, "this account also belongs to another school: take it off this school "
                                 "(remove), or ask the trust's IT to disable it or change its password")
    changed = sorted(k.replace("password_hash", "password") for k in account)
    if account:
        store.update_user(username, **account)
    if body.remove:
        store.revoke_site(username, admin.site)
        changed.append("removed")
    elif body.role is not None:
        store.grant_site(username, admin.site, body.role)
        changed.append("role")
    if {"password", "disabled", "role", "removed"} & set(changed):
        store.delete_user_sessions(username)
    store.audit(admin.username, "user.change", username,
                {**{k: ("***" if k == "password_hash" else v) for k, v in account.items()},
                 **({"role": body.role} if body.role and not body.remove else {}),
                 **({"removed": True} if body.remove else {})}, site=admin.site)
    return sorted(changed)


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["admin"])
    admin = require("admin")

    @r.get("/users")
    def users(request: Request, user: User = Depends(admin)) -> list[dict]:
        return site_users(request, user)

    @r.post("/users", status_code=201)
    def add_user(body: NewUserBody, request: Request, user: User = Depends(admin)) -> dict:
        check_role(body.role)
        try:
            check_staff_name(body.username)
        except ValueError as exc:
            raise HTTPException(400, f"username: {exc}") from None
        store = state.store(request)
        if store.get_user(body.username):
            raise HTTPException(409, f"username: {body.username!r} already exists")
        store.add_user(body.username, body.role, hash_password(body.password), body.display_name,
                       sites={user.site: body.role})
        store.audit(user.username, "user.add", body.username, {"role": body.role}, site=user.site)
        return {"username": body.username, "role": body.role, "display_name": body.display_name, "site": user.site}

    @r.patch("/users/{username}")
    def patch_user(username: str, body: UserChangeBody, request: Request, user: User = Depends(admin)) -> dict:
        return {"username": username, "changed": change_user(request, user, username, body)}

    return r
