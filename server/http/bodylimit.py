"""Request body limits: a body over the limit is refused with 413 before it is read.

``BodyLimit`` is ASGI middleware (create_app installs it outside everything that reads a
body).  Every route gets ``MAX_BODY`` (64 KiB: a login, a note, an incident change or an
enrolment is a few hundred bytes); the routes in ``LARGER`` get more, and only when the
request carries a session of one of the listed roles (checked before a byte of the body
is read), so nobody who is not logged in can send more than ``MAX_BODY``.

* With ``Content-Length``: a declared size over the limit is answered 413 at once, with
  ``Connection: close``; the app never runs and uvicorn stops reading the socket (it
  pauses reading once 64 KiB are buffered, and closes after the answer).
* Chunked (no length): the body is read here up to the limit and handed to the app from
  memory; one byte more and the answer is 413, the rest is never read.

Why here and not in each route: FastAPI reads and parses the whole body before a route
or its dependencies run, so a route-level check would come after the memory is spent
(a 200 MB body took the collector from 61 MB to 950 MB).
"""

from __future__ import annotations

import json

import anyio

from .api import API

MAX_BODY = 64 * 1024
# (method, path) -> (limit in bytes, roles whose session may send that much).
# A config tree is published as JSON (server/rollout.py allows 500 files of 256 KiB;
# real trees are well under a megabyte).
LARGER: dict[tuple[str, str], tuple[int, tuple[str, ...]]] = {
    ("POST", f"{API}/config/rollouts"): (32 * 1024 * 1024, ("technician", "admin")),
}


class BodyLimit:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app, limit: int = MAX_BODY, larger=None) -> None:
        self.app = app
        self.limit = limit
        self.larger = LARGER if larger is None else larger

    async def _limit_for(self, scope) -> int:
        larger = self.larger.get((scope["method"], scope["path"]))
        if larger is None:
            return self.limit
        from fastapi import Request

        from .auth import current_user

        limit, roles = larger
        user = await anyio.to_thread.run_sync(current_user, Request(scope))
        return limit if user is not None and user.role in roles else self.limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length is None and not chunked:
            return await self.app(scope, receive, send)
        limit = await self._limit_for(scope)
        if length is not None and not chunked:
            try:
                size = int(length)
            except ValueError:
                return await _refuse(send, 400, "Content-Length is not a number")
            if size > limit:
                return await _refuse(send, 413, f"the request body is larger than {limit} bytes")
            return await self.app(scope, receive, send)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                return await _refuse(send, 413, f"the request body is larger than {limit} bytes")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
