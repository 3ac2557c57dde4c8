"""The two ways an escalation leaves the collector: e-mail (SMTP) and webhooks (HTTP POST).

Each ``send(recipient, notice)`` makes one attempt and either returns or raises
``DeliveryError`` with a one-line reason that is safe to store: secrets (the SMTP
password, a webhook's URL, which is its credential, and the URL's query) are masked
before the message leaves this module.  Retrying is the notifier's business
(server/notify/notifier.py).

E-mail: the standard library's ``smtplib``, STARTTLS (certificate checked, against
``ca_file`` if given) before AUTH, one message per recipient so one bad address does not
hold up the others.  Webhooks: ``requests`` (already an agent dependency), a JSON POST,
any 2xx is success; ``format`` picks the body (server/notify/message.py).
"""

from __future__ import annotations

import smtplib
import ssl
from typing import Iterable

import requests

from .message import Notice
from .settings import Smtp, Webhook


class DeliveryError(Exception):
    """One failed attempt; str() is one line with the secrets masked."""


def mask(text: str, secrets: Iterable[str]) -> str:
    """*text* on one line with every secret replaced by ``***`` (longest first)."""
    out = " ".join(str(text).split())
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        out = out.replace(secret, "***")
    return out[:500]


class EmailChannel:
    """SMTP to one address per message."""

    kind = "email"

    def __init__(self, smtp: Smtp, smtp_class=smtplib.SMTP) -> None:
        self.smtp = smtp
        self.smtp_class = smtp_class

    def describe(self) -> str:
        s = self.smtp
        return f"smtp {s.host}:{s.port}{' starttls' if s.starttls else ''}{' as ' + s.username if s.username else ''}"

    def send(self, recipient: str, notice: Notice) -> None:
        s = self.smtp
        message = notice.email(s.sender, recipient)
        try:
            with self.smtp_class(s.host, s.port, timeout=s.timeout) as client:
                if s.starttls:
                    client.starttls(context=ssl.create_default_context(cafile=s.ca_file))
                if s.username:
                    client.login(s.username, s.password or "")
                refused = client.send_message(message, to_addrs=[recipient])
        except smtplib.SMTPResponseException as exc:
            reply = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            raise DeliveryError(mask(f"{type(exc).__name__}: {exc.smtp_code} {reply}", self._secrets)) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(mask(f"recipient refused: {exc.recipients}", self._secrets)) from None
        except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
            raise DeliveryError(mask(f"{type(exc).__name__}: {exc or 'no reason given'} "
                                     f"({s.host}:{s.port})", self._secrets)) from None
        if refused:
            raise DeliveryError(mask(f"recipient refused: {refused}", self._secrets))

    @property
    def _secrets(self) -> tuple[str, ...]:
        return (self.smtp.password,) if self.smtp.password else ()


class WebhookChannel:
    """A JSON POST to each configured webhook, by name."""

    kind = "webhook"

    def __init__(self, hooks: Iterable[Webhook], session: requests.Session | None = None) -> None:
        self.hooks = {h.name: h for h in hooks}
        self.session = session or requests.Session()

    def send(self, recipient: str, notice: Notice) -> None:
        hook = self.hooks.get(recipient)
        if hook is None:
            raise DeliveryError(f"webhook {recipient!r} is no longer in the notify file")
        secrets = hook.secrets
        try:
            response = self.session.post(hook.url, json=notice.payload(hook.format), timeout=hook.timeout,
                                         verify=hook.ca_file or True, allow_redirects=False,
                                         headers={"User-Agent": "classroom-safety"})
        except requests.RequestException as exc:
            reason = type(exc).__name__
            inner = getattr(exc, "args", None)
            detail = str(inner[0]) if inner else ""
            raise DeliveryError(mask(f"{reason}: {detail}" if detail else reason, secrets)) from None
        if not 200 <= response.status_code < 300:
            body = (response.text or "")[:200]
            raise DeliveryError(mask(f"HTTP {response.status_code}" + (f": {body}" if body.strip() else ""),
                                     secrets))
