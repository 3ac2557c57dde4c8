"""Real receivers for the escalation tests: an SMTP server (aiosmtpd, STARTTLS + AUTH) and an
HTTP webhook receiver, both on 127.0.0.1 free ports, each able to go down and come back on
the same port; and a config tree whose escalation contacts have e-mail addresses.

Import with ``from notify_fixtures import *``.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from services import free_port, require_binary, skip_or_fail, wait_until

__all__ = ["SmtpServer", "WebhookReceiver", "smtp_server", "webhooks", "notify_tree_dir", "notify_tree",
           "write_notify_file", "wait_for_mail", "SMTP_USER", "SMTP_PASSWORD", "WEBHOOK_SECRET", "CONTACT_EMAILS"]

SMTP_USER = "classroom-safety@penny-acres.test"
SMTP_PASSWORD = "smtp-password-never-logged"
WEBHOOK_SECRET = "sig=0123456789abcdef-webhook-secret"
CONTACT_EMAILS = {"dsl": "dsl@penny-acres.test", "office": "office@penny-acres.test",
                  "headteacher": "head@penny-acres.test"}


def _self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = require_binary("openssl")
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class SmtpServer:
    """aiosmtpd on 127.0.0.1:<port>: STARTTLS required, AUTH (one account) required.

    ``messages``: (envelope recipients, parsed message, {"tls": bool, "authenticated": bool}) per mail."""

    def __init__(self, directory: Path) -> None:
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            skip_or_fail("aiosmtpd is not installed (pip install -e '.[test]')")
        self.port = free_port()
        self.cert, key = _self_signed(directory)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(self.cert, key)
        self.messages: list[tuple[list[str], Message, dict]] = []
        self.logins: list[tuple[str, bool]] = []
        self._lock = threading.Lock()
        self.controller = None

    def start(self) -> "SmtpServer":
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope):
                with server._lock:
                    server.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default),
                                            {"tls": session.ssl is not None,
                                             "authenticated": bool(getattr(session, "authenticated", False))}))
                return "250 OK"

        def authenticator(smtp, session, envelope, mechanism, auth_data):
            ok = auth_data.login.decode() == SMTP_USER and auth_data.password.decode() == SMTP_PASSWORD
            with server._lock:
                server.logins.append((auth_data.login.decode(), ok))
            return AuthResult(success=ok, handled=False)

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=self.context,
                                     require_starttls=True, auth_required=True, authenticator=authenticator)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def to(self, address: str) -> list[Message]:
        with self._lock:
            return [m for rcpts, m, _ in self.messages if address in rcpts]


class WebhookReceiver:
    """An HTTP server recording every POST: ``posts`` = [(path, json body)]."""

    def __init__(self) -> None:
        self.port = free_port()
        self.posts: list[tuple[str, dict]] = []
        self.status = 200
        self._lock = threading.Lock()
        self.httpd = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.posts.append((self.path, json.loads(body or b"null")))
                    status = receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, name="webhook-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def at(self, path: str) -> list[dict]:
        with self._lock:
            return [body for p, body in self.posts if p.split("?")[0] == path]


@pytest.fixture
def smtp_server(tmp_path):
    server = SmtpServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def webhooks():
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


def notify_tree_dir(tmp_path: Path, repo: Path) -> Path:
    """A copy of the example config whose escalation contacts have e-mails (and a headteacher)."""
    target = tmp_path / "config"
    shutil.copytree(repo / "config", target)
    site = target / "site.yaml"
    data = yaml.safe_load(site.read_text())
    contacts = data["escalation"]["contacts"]
    for contact in contacts:
        contact["email"] = CONTACT_EMAILS[contact["role"]]
    contacts.append({"name": "Mr Jones (head)", "role": "headteacher", "email": CONTACT_EMAILS["headteacher"]})
    site.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@pytest.fixture
def notify_tree(tmp_path):
    from agent.config import load_tree
    from server_fixtures import REPO

    return load_tree(notify_tree_dir(tmp_path, REPO))


def write_notify_file(directory: Path, smtp: SmtpServer | None, receiver: WebhookReceiver | None,
                      **extra) -> Path:
    """A notify file for these receivers, secrets in 0600 files next to it."""
    data: dict = {"dashboard_url": "https://classroom.penny-acres.test"}
    if smtp is not None:
        pw = directory / "smtp.pw"
        pw.write_text(SMTP_PASSWORD + "\n")
        pw.chmod(0o600)
        data["smtp"] = {"host": "127.0.0.1", "port": smtp.port, "starttls": True, "username": SMTP_USER,
                        "password_file": str(pw), "from": f"Classroom safety <{SMTP_USER}>",
                        "ca_file": str(smtp.cert), "timeout_seconds": 5}
    if receiver is not None:
        data["webhooks"] = []
        for fmt in ("teams", "slack", "json"):
            url_file = directory / f"{fmt}.url"
            url_file.write_text(f"{receiver.url}/{fmt}?{WEBHOOK_SECRET}\n")
            url_file.chmod(0o600)
            data["webhooks"].append({"name": f"office-{fmt}", "url_file": str(url_file), "format": fmt,
                                     "timeout_seconds": 5})
    data.update(extra)
    path = directory / "notify.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wait_for_mail(server: SmtpServer, address: str, count: int = 1, timeout: float = 20.0) -> list[Message]:
    return wait_until(lambda: len(server.to(address)) >= count and server.to(address), timeout=timeout,
                      message=lambda: f"no mail for {address}; got {[r for r, _, _ in server.messages]}")
