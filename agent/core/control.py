"""The agent's local control socket: ``classroom-agent press`` and ``classroom-agent status``.

A unix stream socket taking one JSON request per line and answering one JSON line:

    {"op": "press", "source": "key"}  ->  {"ok": true}
    {"op": "status"}                  ->  {"ok": true, "status": {...}}
    {"op": "ping"}                    ->  {"ok": true}

Anything else gets ``{"ok": false, "error": "..."}`` and the server carries on.  The
desktop binds the report key / accessibility switch to ``classroom-agent press --source
key``, so this socket is also the keyboard path of the report button.  Components add
their own ops through the runtime (``register_control``: the filter's ``filter-check``),
which calls ``register`` / ``unregister`` here.

Who may do what, so that pressing the button is all a pupil's account can do here:

* the socket is mode 0660, owner the agent, group *group* (agent.yaml's
  ``control_group``, ``classroom-press``): a press-only group the desktop users are in,
  NOT the agent's own group (which may read agent.yaml and the outbox).  Its directory
  (the agent's private runtime directory) is given to the same group, traverse-only
  (0710), so the group reaches the socket and nothing else there;
* each connection's peer credentials (``SO_PEERCRED``) decide the ops: ``PUBLIC_OPS``
  (``press``, ``ping``, and ``ask``: the block page's "Ask my teacher") for anyone who can connect, everything else (``status``,
  ``filter-check``...) only for root and the agent's own user.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

MAX_REQUEST = 4096
# What the press group (a pupil's account) may ask: press the button, and the block page's
# "Ask my teacher" (agent/filter/blockpage.py checks and limits it).
PUBLIC_OPS = frozenset({"press", "ping", "ask"})


def _listed(words: list[str]) -> str:
    """'ask, ping and press'."""
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    except (OSError, AttributeError):
        return None


class _Handler(socketserver.StreamRequestHandler):
    timeout = 5

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST)
        except (OSError, socket.timeout):
            return
        reply = self.server.control.dispatch(line, peer_uid(self.request))  # type: ignore[attr-defined]
        try:
            self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")
        except OSError:
            pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


Handler = Callable[[dict], Any]


class ControlServer:
    """Serve *handlers* ({op: fn(request) -> dict | None}) on the unix socket at *path*.

    *group*: the press-only group given the socket (None: the agent's own).  Handlers run
    on the socket's own threads, one per connection."""

    def __init__(self, path: str | Path, handlers: Mapping[str, Handler], *, group: str | None = None):
        self.path = Path(path)
        self.group = group
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
        if self.group:
            self._give_to_group(self.group)
        self._server.control = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)
        self._thread.start()
        log.info("control socket at %s", self.path)

    def _give_to_group(self, name: str) -> None:
        """Socket to *name*'s group; its directory too, traverse-only, if it is our private one."""
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            log.warning("control socket: group %s does not exist (scripts/install-agent.sh makes it); "
                        "only root and the agent's group can press through %s", name, self.path)
            return
        try:
            os.chown(self.path, -1, gid)
            parent = self.path.parent
            st = parent.stat()
            # Only a directory of ours that nobody else may enter (the RuntimeDirectory,
            # 0750): never /tmp or a shared one.
            if st.st_uid == os.geteuid() and not st.st_mode & 0o007 and st.st_gid != gid:
                os.chown(parent, -1, gid)
                os.chmod(parent, stat.S_IMODE(st.st_mode) & 0o700 | 0o010)
            elif st.st_gid == gid and not st.st_mode & 0o010:
                os.chmod(parent, stat.S_IMODE(st.st_mode) | 0o010)
        except OSError as exc:
            log.error("control socket: cannot give %s to group %s (%s); is the agent's user in it?",
                      self.path, name, exc)

    def dispatch(self, line: bytes, uid: int | None = 0) -> dict:
        """One request; *uid* is the caller's (None: unknown, treated as unprivileged)."""
        try:
            req = json.loads(line.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("control socket: ignored malformed request: %s", str(exc).splitlines()[0][:120])
            return {"ok": False, "error": f"malformed request: {exc}"}
        op = req.get("op")
        privileged = uid is not None and uid in (0, os.geteuid())
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is not None and not privileged and op not in PUBLIC_OPS:
            log.warning("control socket: uid %s asked for %r; only root and the agent may", uid, op)
            return {"ok": False, "error": f"op {op!r} is for root and the agent's own user; "
                                          f"this account may only {_listed(sorted(PUBLIC_OPS))}"}
        if handler is None:
            known = sorted(self._handlers) if privileged else sorted(PUBLIC_OPS)
            return {"ok": False, "error": f"unknown op {op!r} (known: {', '.join(known)})"}
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
