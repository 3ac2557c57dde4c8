"""Cross-site request forgery: no other site (not even a same-site host such as the school's
intranet wiki) can make a logged-in browser change anything.

``CsrfGuard`` is ASGI middleware (create_app installs it) applied to every request whose
method changes state (POST, PUT, PATCH, DELETE) and that does *not* carry a bearer token:
a browser never adds ``Authorization: Bearer`` by itself, so bearer-token API clients are
not affected.  For those requests:

1. **Origin**: a browser's ``Sec-Fetch-Site`` must be ``same-origin`` (or ``none``: typed
   or bookmarked), and its ``Origin`` must be this server (host and port, as the browser
   addressed it: ``Host``, or ``X-Forwarded-Host`` from the reverse proxy).  ``same-site`` is refused on purpose: SameSite=Strict cookies are still
   sent from a sibling host, which is exactly the intranet-wiki attack.  Requests with
   neither header (scripts, old browsers) go on to the token check.  This applies to the
   public routes too (``POST /login``: no logging a browser in as someone else).
2. **Token**, when the request carries the session cookie and is not to a public route:
   the session's CSRF token must come with it, as the form field ``csrf_token`` (every
   dashboard form has it; ``base.render`` puts it in each page) or the ``X-CSRF-Token``
   header (room.js reads it from the page's ``csrf-token`` meta tag; an API client gets it
   from ``POST /api/v1/login``).

The token is an HMAC of the session token (``csrf_token``), so there is one per session,
it is never stored, every ``serve`` process sharing a database can check it, and the
stored session hash (SHA-256 of the token) does not give it away.  Refusals are 403 with
a one-line reason.  The form body is read here (to find the field) and handed on to the
app unchanged; BodyLimit (bodylimit.py) sits outside, so that read is bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
from typing import Iterable
from urllib.parse import parse_qs, urlsplit

from .auth import COOKIE

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_CONTEXT = b"classroom-safety csrf v1"


def csrf_token(session_token: str) -> str:
    """The CSRF token of the session whose token is *session_token*."""
    return hmac.new(session_token.encode("utf-8", "replace"), _CONTEXT, hashlib.sha256).hexdigest()


def csrf_token_for(request) -> str:
    """The token for the session the request's cookie names ('' without a cookie)."""
    token = request.cookies.get(COOKIE)
    return csrf_token(token) if token else ""


def _headers(scope) -> dict[str, str]:
    """The request's headers by lower-case name; repeated ones joined (cookies with '; ')."""
    out: dict[str, str] = {}
    for key, value in scope.get("headers") or []:
        name, text = key.decode("latin-1").lower(), value.decode("latin-1")
        out[name] = f"{out[name]}{'; ' if name == 'cookie' else ', '}{text}" if name in out else text
    return out


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"') or None
    return None


def _netloc(host: str, scheme: str | None = None) -> str:
    """host[:port] in lower case, without the scheme's default port."""
    host = host.strip().lower()
    for default in ((":443",) if scheme == "https" else (":80",) if scheme == "http" else (":80", ":443")):
        if host.endswith(default):
            return host[: -len(default)]
    return host


def origin_problem(headers: dict[str, str]) -> str | None:
    """Why a browser's state-changing request is not same-origin, or None."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site[:20]!r}; only same-origin requests may change anything"
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin.strip())
    if origin.strip() == "null" or parts.scheme not in ("http", "https") or not parts.netloc:
        return "the request's Origin is not this server"
    # The host the browser addressed: Host, or the reverse proxy's X-Forwarded-Host.  (A page
    # on another site cannot add X-Forwarded-Host to a browser's request without a CORS
    # preflight, which this server never grants.)
    addressed = {_netloc(h) for h in (headers.get("host", ""), *headers.get("x-forwarded-host", "").split(","))
                 if h.strip()}
    if _netloc(parts.netloc, parts.scheme) not in addressed:
        return "the request's Origin is not this server"
    return None


class CsrfGuard:
    """ASGI middleware; see the module docstring.  *public*: the (method, path) pairs anyone
    may call (no session is used there, so no token is asked for)."""

    def __init__(self, app, public: Iterable[tuple[str, str]] = ()) -> None:
        self.app = app
        self.public = frozenset(public)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        if headers.get("authorization", "")[:7].lower() == "bearer ":
            return await self.app(scope, receive, send)
        problem = origin_problem(headers)
        if problem is None and (scope["method"], scope["path"]) not in self.public:
            session = _cookie(headers.get("cookie", ""), COOKIE)
            if session is not None:
                sent = headers.get(CSRF_HEADER)
                if sent is None and headers.get("content-type", "").split(";")[0].strip().lower() == \
                        "application/x-www-form-urlencoded":
                    body, receive = await _buffer(receive)
                    values = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).get(CSRF_FIELD)
                    sent = values[0] if values else None
                if sent is None:
                    problem = "the form or request has no CSRF token; reload the page and try again"
                elif not hmac.compare_digest(sent.encode("utf-8", "replace"), csrf_token(session).encode()):
                    problem = "the CSRF token does not match this session; reload the page and try again"
        if problem is None:
            return await self.app(scope, receive, send)
        if "text/html" in headers.get("accept", ""):  # a browser: a page it can show
            body = (f"<!doctype html><title>Refused</title><h1>Refused</h1><p>refused: {html.escape(problem)}</p>"
                    '<p><a href="/">Back to the dashboard</a></p>').encode()
            kind = b"text/html; charset=utf-8"
        else:
            body, kind = json.dumps({"detail": f"refused: {problem}"}).encode(), b"application/json"
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def _buffer(receive):
    """Read the whole request body (bounded by BodyLimit outside) and a receive that replays it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
