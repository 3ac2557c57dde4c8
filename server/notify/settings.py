"""The notify file (``serve --notify FILE``): where escalations go beyond the room, and its secrets.

Why a file of its own: site.yaml is compiled into every device's config, so it must never
hold the SMTP password or a webhook URL (a Teams/Power Automate or Slack webhook URL is
itself the credential: anyone holding it can post).  This file lives only on the
collector (``/etc/classroom-server/notify.yaml``, 0640 root:classroom-server) and points at
secret files (``password_file``, ``url_file``, 0600/0640) rather than holding them.  Who
gets e-mails is still site.yaml's ``escalation.contacts[].email``.

It is checked like the config tree: every problem is ``file:line: key: message`` with a
did-you-mean, all of them in one go (``ConfigInvalid``), and a file named in it that
cannot be read is a problem at the line that names it.  ``classroom-server notify check``
and ``serve --notify`` both go through ``load_notify``.

    dashboard_url: https://classroom.penny-acres.sch.uk   # links in messages (default: site collector.url)
    smtp:
      host: smtp.office365.com
      port: 587
      starttls: true
      username: classroom-safety@penny-acres.sch.uk
      password_file: /etc/classroom-server/smtp.pw
      from: Classroom safety <classroom-safety@penny-acres.sch.uk>
    webhooks:
      - {name: office-teams, url_file: /etc/classroom-server/office-teams.url, format: teams}
      # A trust's collector: a school's own channel gets that school's reports only.
      - {name: hilltop-teams, url_file: /etc/classroom-server/hilltop.url, format: teams, sites: [hilltop]}
    send: {escalated: true, unwatched: true, high_risk: true}
    retry: {max_interval_seconds: 300, give_up_after_minutes: 720}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from agent.config import ConfigInvalid, SourceError
from agent.config.credentials import read_password
from agent.config.schema import HttpUrl, Model, check_id
from agent.config.tree import validate_source
from agent.config.yamlsrc import load_yaml
from agent.errors import UserError

FORMATS = ("teams", "slack", "json")


class SmtpModel(Model):
    host: str = Field(min_length=1, max_length=253, description="SMTP server (the school's or its mail provider's).")
    port: int = Field(default=587, ge=1, le=65535, description="587 for STARTTLS (submission), 25 for a relay.")
    starttls: bool = Field(default=True, description="Upgrade to TLS before logging in (STARTTLS).")
    username: str | None = Field(default=None, description="Login name, if the server needs one.")
    password_file: str | None = Field(default=None, description="File holding the login password (0600).")
    sender: str = Field(alias="from", min_length=3, description="The From: address.")
    ca_file: str | None = Field(default=None, description="CA certificate for the server's TLS, if not a public CA.")
    timeout_seconds: float = Field(default=20, ge=1, le=120, description="Give up one attempt after this long.")


class WebhookModel(Model):
    name: str = Field(description="Short name shown in the delivery records ('office-teams').")
    url: HttpUrl | None = Field(default=None, description="The webhook URL; better in url_file (it is a secret).")
    url_file: str | None = Field(default=None, description="File holding the webhook URL (0600).")
    format: Literal["teams", "slack", "json"] = Field(
        default="json", description="teams: a Teams/Power Automate workflow (Adaptive Card); slack: a Slack-style "
        "incoming webhook ({text}); json: the plain fields.")
    ca_file: str | None = Field(default=None, description="CA certificate for the receiver's TLS, if not a public CA.")
    timeout_seconds: float = Field(default=10, ge=1, le=120, description="Give up one attempt after this long.")
    sites: list[str] = Field(default=[], max_length=200, description="Only these schools' reports (site ids, "
                             "site.yaml site:); empty: every school the collector serves.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_id(value)

    @field_validator("sites")
    @classmethod
    def _sites(cls, value: list[str]) -> list[str]:
        return [check_id(site) for site in value]


class SendModel(Model):
    escalated: bool = Field(default=True, description="Send each report the device escalated (nobody answered).")
    unwatched: bool = Field(default=True, description="Send each report raised during school hours in a room "
                            "with no live receiver (no teacher client, no dashboard tab), at once.")
    high_risk: bool = Field(default=True, description="Tell the DSL at once of a blocked attempt on a risk list "
                            "with notify (site.yaml filtering.risk_lists), at most once per device per list "
                            "per 10 minutes.")


class RetryModel(Model):
    max_interval_seconds: int = Field(default=300, ge=5, le=3600,
                                      description="Longest wait between two attempts (they start at 10 s).")
    give_up_after_minutes: int = Field(default=720, ge=1, le=10080,
                                       description="Stop trying a message this long after it was first due.")


class NotifyModel(Model):
    dashboard_url: HttpUrl | None = Field(default=None, description="Base URL for links (default site collector.url).")
    smtp: SmtpModel | None = Field(default=None, description="E-mail to escalation.contacts[].email.")
    webhooks: list[WebhookModel] = Field(default=[], max_length=20, description="Webhooks that get every message.")
    send: SendModel = Field(default_factory=SendModel)
    retry: RetryModel = Field(default_factory=RetryModel)


# --------------------------------------------------------------------------- resolved


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    starttls: bool
    sender: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    timeout: float = 20.0

    def __repr__(self) -> str:  # the password never reaches a log
        return (f"Smtp(host={self.host!r}, port={self.port}, starttls={self.starttls}, username={self.username!r}, "
                f"password={'***' if self.password else None})")


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str = field(repr=False)
    format: str = "json"
    ca_file: str | None = None
    timeout: float = 10.0
    sites: tuple[str, ...] = ()  # empty: every school's reports

    def __repr__(self) -> str:  # the URL is the secret
        return f"Webhook(name={self.name!r}, format={self.format!r}, url=***)"

    def serves(self, site: str | None) -> bool:
        """Does a report of *site* go to this webhook?"""
        return not self.sites or site in self.sites

    @property
    def secrets(self) -> tuple[str, ...]:
        """The URL and the parts of it that must never appear in a record or a log."""
        parts = urlsplit(self.url)
        out = [self.url, parts.path + ("?" + parts.query if parts.query else "")]
        if parts.query:
            out.append(parts.query)
        return tuple(s for s in out if s and s != "/")


@dataclass(frozen=True)
class NotifySettings:
    """A checked notify file with its secrets read."""

    path: str = ""
    smtp: Smtp | None = None
    webhooks: tuple[Webhook, ...] = ()
    dashboard_url: str | None = None
    send_escalated: bool = True
    send_unwatched: bool = True
    send_high_risk: bool = True
    max_interval: float = 300.0
    give_up_after: float = 720 * 60.0

    def webhook(self, name: str) -> Webhook | None:
        return next((w for w in self.webhooks if w.name == name), None)

    @property
    def secrets(self) -> tuple[str, ...]:
        out = [s for w in self.webhooks for s in w.secrets]
        if self.smtp is not None and self.smtp.password:
            out.append(self.smtp.password)
        return tuple(out)


def _read_secret_file(path: str, what: str) -> str:
    try:
        return read_password(path)
    except UserError as exc:
        raise ValueError(f"{what}: {exc}") from None


def load_notify(path: str | Path) -> NotifySettings:
    """Read and check the notify file; ConfigInvalid (every problem, ``file:line: key: message``)."""
    source, errors = load_yaml(path)
    if source is None:
        raise ConfigInvalid(errors)
    if source.data is None:
        source.data = {}
    model, more = validate_source(NotifyModel, source)
    errors += more
    if model is None:
        raise ConfigInvalid(errors)

    def problem(loc: tuple, message: str, at: tuple | None = None) -> None:
        from agent.config.yamlsrc import format_path

        errors.append(SourceError(source.file, source.line_of(at or loc), format_path(loc), message))

    smtp = None
    if model.smtp is not None:
        s = model.smtp
        password = None
        if s.password_file:
            try:
                password = _read_secret_file(s.password_file, "cannot read it")
            except ValueError as exc:
                problem(("smtp", "password_file"), str(exc))
        if s.username and not s.password_file:
            problem(("smtp", "password_file"), "is required with username (the password never goes in this file)",
                    at=("smtp", "username"))
        if s.ca_file and not Path(s.ca_file).is_file():
            problem(("smtp", "ca_file"), f"{s.ca_file}: no such file")
        smtp = Smtp(host=s.host, port=s.port, starttls=s.starttls, sender=s.sender, username=s.username,
                    password=password, ca_file=s.ca_file, timeout=s.timeout_seconds)
    hooks = []
    seen: set[str] = set()
    for i, w in enumerate(model.webhooks):
        if w.name in seen:
            problem(("webhooks", i, "name"), f"{w.name!r} is used by another webhook; names must be unique")
        seen.add(w.name)
        if bool(w.url) == bool(w.url_file):
            problem(("webhooks", i), "give exactly one of url_file (better: the URL is a secret) or url")
            continue
        url = w.url
        if w.url_file:
            try:
                url = _read_secret_file(w.url_file, "cannot read it")
            except ValueError as exc:
                problem(("webhooks", i, "url_file"), str(exc))
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # Never echo the file's content: it is the secret.
                problem(("webhooks", i, "url_file"), f"{w.url_file}: does not hold an http(s):// URL")
                continue
        if w.ca_file and not Path(w.ca_file).is_file():
            problem(("webhooks", i, "ca_file"), f"{w.ca_file}: no such file")
        hooks.append(Webhook(name=w.name, url=url, format=w.format, ca_file=w.ca_file, timeout=w.timeout_seconds,
                             sites=tuple(w.sites)))
    if errors:
        raise ConfigInvalid(errors)
    return NotifySettings(path=str(path), smtp=smtp, webhooks=tuple(hooks), dashboard_url=model.dashboard_url,
                          send_escalated=model.send.escalated, send_unwatched=model.send.unwatched,
                          send_high_risk=model.send.high_risk,
                          max_interval=float(model.retry.max_interval_seconds),
                          give_up_after=model.retry.give_up_after_minutes * 60.0)


def notify_warnings(settings: NotifySettings, tree) -> list[str]:
    """What a technician should hear about a notify file that is valid but will not reach
    everyone it should (logged by ``serve``, printed by ``notify check``)."""
    out = []
    emails = [c for c in tree.site.escalation.contacts if c.email] if tree is not None else []
    if settings.smtp is not None and tree is not None and not emails:
        out.append("smtp is set but no escalation contact in site.yaml has an email")
    if settings.smtp is None and emails:
        out.append(f"{len(emails)} escalation contact(s) have an email but the notify file has no smtp; "
                   "they get no escalation e-mails")
    if settings.smtp is None and not settings.webhooks:
        out.append("no smtp and no webhooks: escalations reach nobody beyond the room")
    elif tree is not None and not settings.smtp and not any(w.serves(tree.site.site) for w in settings.webhooks):
        out.append(f"no smtp and no webhook for site {tree.site.site!r} (webhooks[].sites): its escalations "
                   "reach nobody beyond the room")
    if tree is None:
        out.append("no config tree: e-mail recipients come from site.yaml escalation.contacts, so only "
                   "webhooks are used")
    return out


def unknown_webhook_sites(settings: NotifySettings, sites: list[str]) -> list[str]:
    """Warnings for webhooks limited to a site the collector does not serve (a typo there
    means that school's reports never reach the webhook)."""
    return [f"webhooks: {w.name}: sites: {site!r} is not a school this collector serves ({', '.join(sites)})"
            for w in settings.webhooks for site in w.sites if site not in sites]
