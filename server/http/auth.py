"""Staff and device authentication, and role checks as FastAPI dependencies.

Staff (teacher, dsl, technician, admin, office) log in with a password hashed with argon2id
(argon2-cffi), always through ``attempt_login`` (throttled: throttle.py).  A login creates a session: a random token given to the browser as an
HttpOnly SameSite=Strict cookie and to API clients as a bearer token; only its SHA-256
is stored, so a stolen database holds no usable session.  Devices authenticate with
the credentials enrolment gave them (HTTP basic, username = device id), also argon2.

Use in routes::

    @router.get("/x")
    def x(user: User = Depends(require("dsl", "admin"))): ...

A teacher's rooms are the rooms whose ``alert_staff`` lists their username in the
live config tree (``app.state.tree``), and the rooms the timetable or the office's cover
has them teaching in now (server/timetable/now.py: ``rooms_now``).  Pages use ``server.web.pages.base.page(...)``, the
same check that sends a browser to the login page instead of answering 401.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import HTTPException, Request

from agent.config.schema import check_username

from ..store import iso
from ..timetable.now import rooms_now
from .throttle import LoginThrottle, address_key

# office: the school office (reception), who sends an adult when a room has nobody watching;
# sees the office board (every room's open alerts and live receivers), nothing else.
ROLES = ("teacher", "dsl", "technician", "admin", "office")
COOKIE = "classroom_session"
SESSION_HOURS = 12

_hasher = PasswordHasher()
# A dummy hash so a login for an unknown user costs the same as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def mask(secret: str | None) -> str:
    """For logs: never print a secret, only that there was one."""
    return "***" if secret else ""


@dataclass(frozen=True)
class User:
    username: str
    role: str
    display_name: str | None = None
    rooms: tuple[str, ...] = field(default=())

    def can_see_room(self, room: str) -> bool:
        return self.role in ("dsl", "admin") or room in self.rooms

    def to_dict(self) -> dict:
        return {"username": self.username, "role": self.role, "display_name": self.display_name,
                "rooms": list(self.rooms)}


def check_staff_name(name: str) -> str:
    """A staff account name, checked by the config contract's username rule: the same
    names appear in rooms' ``alert_staff`` (which is how a teacher's rooms are found) and
    as broker accounts.  ValueError (one line) if it is not one."""
    return check_username(name)


def staff_rooms(tree, username: str, store=None) -> tuple[str, ...]:
    """The rooms whose alert_staff lists *username*, and, given the *store*, those the
    timetable or cover has them teaching in now."""
    if tree is None:
        return ()
    rooms = {room_id for room_id, room in tree.rooms.items() if username in room.alert_staff}
    if store is not None:
        rooms.update(rooms_now(store, tree, username))
    return tuple(sorted(rooms))


# --------------------------------------------------------------------------- sessions


def login(store, username: str, password: str, hours: int = SESSION_HOURS) -> str | None:
    """Check a password; on success create a session and return its token.  Routes call
    ``attempt_login`` (throttled and audited), never this directly."""
    row = store.get_user(username) if isinstance(username, str) else None
    if not verify_password(row["password_hash"] if row else None, password if isinstance(password, str) else ""):
        return None
    if row["disabled"]:
        return None
    token = new_token()
    expires = datetime.now(timezone.utc) + timedelta(hours=hours)
    store.add_session(token_hash(token), username, iso(expires))
    return token


@dataclass(frozen=True)
class LoginAttempt:
    """What ``attempt_login`` found: a session ``token``, or None and, if the throttle held
    the attempt back without checking the password, ``retry_after`` seconds (else 0)."""

    token: str | None
    retry_after: int = 0


def client_address(request: Request) -> str:
    """The throttle's key for the caller's address (behind the reverse proxy, uvicorn's
    ``proxy_headers`` has already put the X-Forwarded-For address in ``request.client``)."""
    return address_key(request.client.host if request.client else None)


def attempt_login(request: Request, username: str, password: str, via: str) -> LoginAttempt:
    """THE way to log in (API and form alike): ask the throttle, check the password, tell
    the throttle about a failure, and write the audit log (``login``, ``login.failed``,
    ``login.throttled``, each with *via* and, for the last two, the address)."""
    store = request.app.state.store
    throttle: LoginThrottle = request.app.state.login_throttle
    name = username[:64] if isinstance(username, str) else ""
    address = client_address(request)
    verdict = throttle.check(name, address)
    if not verdict.allowed:
        if throttle.may_audit():
            store.audit(name or "?", "login.throttled", None,
                        {"via": via, "from": address, "why": verdict.why, "retry_after": verdict.retry_after})
        return LoginAttempt(None, verdict.retry_after)
    hours = getattr(request.app.state.settings, "session_hours", SESSION_HOURS)
    token = login(store, name, password, hours)
    if token is None:
        throttle.failed(name, address)
        store.audit(name or "?", "login.failed", None, {"via": via, "from": address})
        return LoginAttempt(None)
    store.audit(name, "login", None, {"via": via})
    return LoginAttempt(token)


def set_session_cookie(request: Request, response, token: str) -> None:
    """Give the browser its session: HttpOnly, SameSite=Strict, and Secure unless the
    server was started with ``--plain-http`` (a local demo on loopback)."""
    settings = request.app.state.settings
    hours = getattr(settings, "session_hours", SESSION_HOURS)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        secure=bool(getattr(settings, "cookie_secure", True)), max_age=hours * 3600, path="/")


def session_cookie_token(request: Request) -> str | None:
    """The session token the browser's cookie carries (whether or not it is still valid)."""
    return request.cookies.get(COOKIE) or None


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _request_token(request: Request) -> str | None:
    return bearer_token(request) or session_cookie_token(request)


def current_user(request: Request) -> User | None:
    """The logged-in staff member, or None."""
    token = _request_token(request)
    if not token:
        return None
    session = request.app.state.store.get_session(token_hash(token))
    if session is None or session["disabled"]:
        return None
    rooms = staff_rooms(getattr(request.app.state, "tree", None), session["username"], request.app.state.store)
    return User(session["username"], session["role"], session["display_name"], rooms)


def require(*roles: str):
    """Dependency: a logged-in user with one of *roles* (401 if not logged in, 403 if wrong role)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {unknown}")

    def dependency(request: Request) -> User:
        user = current_user(request)
        if user is None:
            raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Bearer"})
        if user.role not in roles:
            raise HTTPException(403, f"this needs the {' or '.join(roles)} role")
        request.state.user = user
        return user

    dependency.roles = roles  # type: ignore[attr-defined]  # read by the route x role test
    return dependency


any_staff = require(*ROLES)


# --------------------------------------------------------------------------- devices


class _DeviceCache:
    """Remember successful device logins briefly: argon2 is deliberately slow and
    devices fetch config often.  Keyed by a hash of the credentials, never the password."""

    TTL = 300.0

    def __init__(self) -> None:
        self._ok: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> bool:
        with self._lock:
            expiry = self._ok.get(key)
            return expiry is not None and expiry > time.monotonic()

    def remember(self, key: str) -> None:
        with self._lock:
            if len(self._ok) > 10000:
                self._ok.clear()
            self._ok[key] = time.monotonic() + self.TTL

    def forget_device(self, device: str) -> None:
        with self._lock:
            self._ok.clear()


device_cache = _DeviceCache()


def device_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    device, sep, password = decoded.partition(":")
    return (device, password) if sep and device else None


def current_device(request: Request) -> str:
    """Dependency for device endpoints: the authenticated device id (HTTP basic)."""
    creds = device_credentials(request)
    if creds is None:
        raise HTTPException(401, "device credentials required", headers={"WWW-Authenticate": "Basic"})
    device, password = creds
    key = hashlib.sha256(f"{device}\0{password}".encode()).hexdigest()
    if device_cache.check(key):
        return device
    row = request.app.state.store.get_device(device)
    if row is None or not verify_password(row.get("password_hash"), password):
        raise HTTPException(401, "device credentials are not valid", headers={"WWW-Authenticate": "Basic"})
    device_cache.remember(key)
    return device


current_device.roles = ("device",)  # type: ignore[attr-defined]
