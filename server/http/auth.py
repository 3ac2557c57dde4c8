"""Staff and device authentication, the school a request acts in, and role checks as
FastAPI dependencies.

Staff log in with a password hashed with argon2id (argon2-cffi), always through
``attempt_login`` (throttled: throttle.py), or by single sign-on (server/http/oidc.py);
both end in ``start_session``.  A session is a random token given to the browser as an
HttpOnly SameSite=Strict cookie and to API clients as a bearer token; only its SHA-256
is stored, so a stolen database holds no usable session.  Devices authenticate with
the credentials enrolment gave them (HTTP basic, username = device id).  Enrolment's
password is 192 random bits the collector made itself, so it is stored as a plain
SHA-256 (``hash_device_secret``) like the session tokens: argon2's cost protects guessable
human passwords, and it made a rollout to 1,000 devices cost 1,000 argon2 checks (about
80 ms of CPU each, over a minute on two cores; docs/rollout.md).  Device passwords a
person may have chosen (``broker-config`` credentials files) stay argon2, and so do
enrolments made before this; ``verify_device_secret`` checks either.

Tenancy: an account belongs to one or more sites (schools) with a role in each
(teacher, dsl, technician, admin, office), or to the trust level (site ``*``, role ``trust``:
totals and health of every school, never a pupil's record).  A session acts in ONE site
at a time (``User.site``; the site switcher changes it: ``choose_site``), and ``User.role``
is the role there, so every role check below is a check in that school; every route
then reads and writes only that site's records and answers 404 for another's
(``same_site``).  ``state.tree(request)`` is that site's live config tree.

Use in routes::

    @router.get("/x")
    def x(user: User = Depends(require("dsl", "admin"))): ...

A teacher's rooms are the rooms whose ``alert_staff`` lists their username in the
live config tree of the site they act in, and the rooms that school's timetable or office
cover has them teaching in now (server/timetable/now.py: ``rooms_now``).  Pages use
``server.web.pages.base.page(...)``, the
same check that sends a browser to the login page instead of answering 401.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
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
# sees the office board (every room of its school: open alerts and live receivers), nothing else.
SCHOOL_ROLES = ("teacher", "dsl", "technician", "admin", "office")
TRUST_ROLE = "trust"
ROLES = (*SCHOOL_ROLES, TRUST_ROLE)
TRUST_SITE = "*"
COOKIE = "classroom_session"
SESSION_HOURS = 12

_hasher = PasswordHasher()
# A dummy hash so a login for an unknown user costs the same as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    # An account with no password (single sign-on only) never matches, not even the dummy's.
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


DEVICE_HASH_PREFIX = "sha256$"


def hash_device_secret(secret: str) -> str:
    """The stored form of a password the collector generated (enrolment: 192 random bits)."""
    return DEVICE_HASH_PREFIX + hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def verify_device_secret(stored: str | None, secret: str) -> bool:
    """A device's password against its stored hash: SHA-256 (enrolment) or argon2 (others)."""
    if stored and stored.startswith(DEVICE_HASH_PREFIX):
        return hmac.compare_digest(stored, hash_device_secret(secret))
    return verify_password(stored, secret)


def new_token() -> str:
    """A random token; never starting with "-", because an enrolment token is typed as
    ``classroom-agent enrol --token TOKEN`` and argparse takes "-Ew..." for an option
    (one token in 64 would otherwise fail with "expected one argument")."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def mask(secret: str | None) -> str:
    """For logs: never print a secret, only that there was one."""
    return "***" if secret else ""


@dataclass(frozen=True)
class User:
    """A logged-in staff member as one request sees them: ``role`` is their role in
    ``site``, the school this request acts in (``*``: the trust level; None: the account
    belongs to no school yet), ``rooms`` their rooms there, ``sites`` every membership."""

    username: str
    role: str | None
    display_name: str | None = None
    rooms: tuple[str, ...] = field(default=())
    site: str | None = None
    sites: tuple[tuple[str, str], ...] = field(default=())

    def can_see_room(self, room: str, site: str | None = None) -> bool:
        """May this user see *room* of *site* (default: the site they act in)?"""
        if site is not None and site != self.site:
            return False
        return self.role in ("dsl", "admin") or room in self.rooms

    def to_dict(self) -> dict:
        return {"username": self.username, "role": self.role, "display_name": self.display_name,
                "rooms": list(self.rooms), "site": self.site,
                "sites": [{"site": site, "role": role} for site, role in self.sites]}


def same_site(user: User, row: dict | None, what: str, key: str) -> dict:
    """*row* if it belongs to the site *user* acts in; else the same 404 as for no row at
    all, so a school never learns what another school holds."""
    if row is None or row.get("site") != user.site:
        raise HTTPException(404, f"{what} {str(key)[:64]!r} not found")
    return row


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


def default_site(memberships: dict[str, str]) -> str | None:
    """Where a new session starts: the first school, else the trust level."""
    schools = sorted(s for s in memberships if s != TRUST_SITE)
    return schools[0] if schools else (TRUST_SITE if TRUST_SITE in memberships else None)


def school_of(site: str | None) -> str | None:
    """The ``site`` an audit entry about a session acting in *site* carries: the school, or
    None (collector-wide, read by the trust level) for the trust level itself."""
    return None if site == TRUST_SITE else site


def sign_in_site(store, username: str) -> str | None:
    """The school a sign-in of *username* concerns, for its audit entry: where their session
    starts (their first school), so that school's DSL and admin see their staff's sign-ins
    and failures; None for the trust level or a name that is no account."""
    return school_of(default_site(store.memberships(username))) if username else None


def start_session(store, username: str, via: str, hours: int = SESSION_HOURS) -> str:
    """Create a session for an account already proven (password or single sign-on): its
    token, acting in the account's first school.  Records the sign-in (``/users`` shows it)."""
    token = new_token()
    expires = datetime.now(timezone.utc) + timedelta(hours=hours)
    store.add_session(token_hash(token), username, iso(expires), default_site(store.memberships(username)))
    store.record_login(username, via)
    return token


def login(store, username: str, password: str, hours: int = SESSION_HOURS) -> str | None:
    """Check a password; on success create a session and return its token.  Routes call
    ``attempt_login`` (throttled and audited), never this directly."""
    row = store.get_user(username) if isinstance(username, str) else None
    if not verify_password(row["password_hash"] if row else None, password if isinstance(password, str) else ""):
        return None
    if row["disabled"]:
        return None
    return start_session(store, username, "password", hours)


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
    wait = attempt_throttle(request, name, via)
    if wait:
        return LoginAttempt(None, wait)
    hours = getattr(request.app.state.settings, "session_hours", SESSION_HOURS)
    token = login(store, name, password, hours)
    if token is None:
        throttle.failed(name, address)
        store.audit(name or "?", "login.failed", None, {"via": via, "from": address},
                    site=sign_in_site(store, name))
        return LoginAttempt(None)
    store.audit(name, "login", None, {"via": via}, site=sign_in_site(store, name))
    return LoginAttempt(token)


def attempt_throttle(request: Request, name: str, via: str) -> int:
    """Ask the login throttle about *name* from the caller's address: 0 to go on, else the
    seconds to wait (audited like a throttled password, at most 20 a minute)."""
    throttle: LoginThrottle = request.app.state.login_throttle
    address = client_address(request)
    verdict = throttle.check(name, address)
    if verdict.allowed:
        return 0
    if throttle.may_audit():
        store = request.app.state.store
        store.audit(name or "?", "login.throttled", None,
                    {"via": via, "from": address, "why": verdict.why, "retry_after": verdict.retry_after},
                    site=sign_in_site(store, name))
    return verdict.retry_after


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


def make_user(request: Request, username: str, display_name: str | None, site: str | None) -> User:
    """*username* acting in *site* (their session's choice when it is still one of their
    memberships, else their default), with their role and rooms there."""
    store = request.app.state.store
    sites = getattr(request.app.state, "sites", None)
    memberships = store.memberships(username)
    if not memberships and sites is not None and sites.single():
        # An account added (``user add``) while a one-school collector runs: that school's.
        store.adopt_single_site(sites.single())
        memberships = store.memberships(username)
    if site not in memberships:
        site = default_site(memberships)
    role = memberships.get(site) if site else None
    if role == TRUST_ROLE and site != TRUST_SITE or site == TRUST_SITE and role != TRUST_ROLE:
        role = None  # the trust level has one role, and it is only the trust level's
    tree = sites.tree(site) if sites is not None else None
    return User(username, role, display_name, staff_rooms(tree, username, store), site,
                tuple(sorted(memberships.items())))


def current_user(request: Request) -> User | None:
    """The logged-in staff member (acting in their session's site), or None."""
    return current_session_user(request, _request_token(request))


def current_session_user(request: Request, token: str | None) -> User | None:
    """The staff member whose session *token* is (acting in its site), or None."""
    if not token:
        return None
    session = request.app.state.store.get_session(token_hash(token))
    if session is None or session["disabled"]:
        return None
    return make_user(request, session["username"], session["display_name"], session["site"])


def choose_site(request: Request, user: User, site: str) -> User:
    """The site switcher: the session now acts in *site* (404 unless the user belongs to it)."""
    if site not in dict(user.sites):
        raise HTTPException(404, f"site {site[:64]!r} not found")
    token = _request_token(request)
    request.app.state.store.set_session_site(token_hash(token or ""), site)
    return make_user(request, user.username, user.display_name, site)


def require(*roles: str):
    """Dependency: a logged-in user with one of *roles* in the site they act in (401 if
    not logged in, 403 if wrong role)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {unknown}")

    def dependency(request: Request) -> User:
        user = current_user(request)
        if user is None:
            raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Bearer"})
        if user.role not in roles:
            if user.role is None:
                raise HTTPException(403, "your account has no role in any school yet; ask an admin")
            raise HTTPException(403, f"this needs the {' or '.join(roles)} role")
        request.state.user = user
        return user

    dependency.roles = roles  # type: ignore[attr-defined]  # read by the route x role test
    return dependency


def logged_in(request: Request) -> User:
    """Dependency: any logged-in staff member, whatever their role (who am I, log out,
    switch school): an account with no school yet may still do these."""
    user = current_user(request)
    if user is None:
        raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Bearer"})
    request.state.user = user
    return user


logged_in.roles = ROLES  # type: ignore[attr-defined]
any_staff = logged_in


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
    if row is None or not verify_device_secret(row.get("password_hash"), password):
        raise HTTPException(401, "device credentials are not valid", headers={"WWW-Authenticate": "Basic"})
    device_cache.remember(key)
    return device


current_device.roles = ("device",)  # type: ignore[attr-defined]
