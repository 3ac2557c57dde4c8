"""Security headers on every response: a strict Content-Security-Policy, no framing, no MIME
sniffing, no referrer to other sites, and HSTS when the request came over HTTPS.

``SecurityHeaders`` is ASGI middleware, outermost in create_app, so refusals made by the
other middleware (413, 403) get the headers too.  A response that sets its own
``Content-Security-Policy`` keeps it: the weekly report page is one self-contained HTML
file (it is also written to disk and e-mailed) with an inline ``<style>``, so it answers
with ``policy_for(html)``, which allows exactly that style by its hash.

The dashboard loads nothing from anywhere else (no CDNs, fonts or remote scripts) and has
no inline script or style, so ``'self'`` is all the policy allows.
"""

from __future__ import annotations

import base64
import hashlib
import re

POLICY = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
}

HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Not no-referrer: with it, browsers send "Origin: null" on the dashboard's own form
    # posts, and the CSRF check (csrf.py) needs the real Origin.  same-origin still sends
    # nothing to any other site.
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), display-capture=()",
}
HSTS = "max-age=31536000"

_STYLE = re.compile(r"<style[^>]*>(.*?)</style>", re.S | re.I)


def content_security_policy(extra_styles: tuple[str, ...] = ()) -> str:
    policy = dict(POLICY)
    if extra_styles:
        policy["style-src"] += "".join(f" '{s}'" for s in extra_styles)
    return "; ".join(f"{k} {v}" for k, v in policy.items())


def policy_for(html: str) -> str:
    """The policy for a self-contained page: the default, plus its own inline ``<style>``
    blocks by hash (and nothing else inline)."""
    hashes = tuple("sha256-" + base64.b64encode(hashlib.sha256(m.encode("utf-8")).digest()).decode()
                   for m in _STYLE.findall(html))
    return content_security_policy(hashes)


_DEFAULT = [(b"content-security-policy", content_security_policy().encode())] + [
    (k.encode(), v.encode()) for k, v in HEADERS.items()]


class SecurityHeaders:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        https = scope.get("scheme") == "https"

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in _DEFAULT if k not in present]
                if https and b"strict-transport-security" not in present:
                    headers.append((b"strict-transport-security", HSTS.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
