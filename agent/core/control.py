"""The agent's local control socket: ``classroom-agent press`` and ``classroom-agent status``.

A unix stream socket (mode 0660, so root and the agent's group only) taking one JSON
request per line and answering one JSON line:

    {"op": "press", "source": "key"}  ->  {"ok": true}
    {"op": "status"}                  ->  {"ok": true, "status": {...}}
    {"op": "ping"}                    ->  {"ok": true}

Anything else gets ``{"ok": false, "error": "..."}`` and the server carries on.  The
desktop binds the report key / accessibility switch to ``classroom-agent press --source
key``, so this socket is also the keyboard path of the report button.  Components add
their own ops through the runtime (``register_control``: the filter's ``filter-check``),
which calls ``register`` / ``unregister`` here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

MAX_REQUEST = 4096


class _Handler(socketserver.StreamRequestHandler):
    timeout = 5

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST)
        except (OSError, socket.timeout):
            return
        reply = self.server.control.dispatch(line)  # type: ignore[attr-defined]
        try:
            self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")
        except OSError:
            pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


Handler = Callable[[dict], Any]


class ControlServer:
    """Serve *handlers* ({op: fn(request) -> dict | None}) on the unix socket at *path*.

    Handlers run on the socket's own threads, one per connection."""

    def __init__(self, path: str | Path, handlers: Mapping[str, Handler]):
        self.path = Path(path)
        self._handlers: dict[str, Handler] = {"ping": lambda req: None, **handlers}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """The ops served now (read-only: ``register`` / ``unregister`` change them)."""
        return MappingProxyType(self._handlers)

    def register(self, op: str, handler: Handler) -> None:
        """Serve *op* with *handler* from now on (replacing any earlier one)."""
        self._handlers[op] = handler

    def unregister(self, op: str) -> None:
        self._handlers.pop(op, None)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # a stale socket from a crashed run
        old = os.umask(0o117)
        try:
            self._server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        self._server.control = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)
        self._thread.start()
        log.info("control socket at %s", self.path)

    def dispatch(self, line: bytes) -> dict:
        try:
            req = json.loads(line.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("control socket: ignored malformed request: %s", str(exc).splitlines()[0][:120])
            return {"ok": False, "error": f"malformed request: {exc}"}
        op = req.get("op")
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r} (known: {', '.join(sorted(self._handlers))})"}
        try:
            result = handler(req)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the socket
            log.exception("control op %s failed", op)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out = {"ok": True}
        if isinstance(result, dict):
            out.update(result)
        return out

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def request(path: str | Path, req: dict, timeout: float = 5.0) -> dict:
    """Send one request to a running agent; raise OSError if it is not there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf.decode() or "{}")
