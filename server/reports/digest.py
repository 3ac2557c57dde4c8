"""Weekly reports, the schedule: the digest for last week, written once and maybe e-mailed.

``due_week``/``run_digest`` are the weekly schedule: the digest for last week is written
to the reports dir on Monday morning, once (``report_runs`` in the store remembers), and
e-mailed only if SMTP is configured (``CLASSROOM_SMTP_*``).  ``DigestScheduler`` is the
background thread ``classroom-server serve`` runs.

A collector serving several schools writes one digest per school, each from that
school's rows only, into ``REPORTS_DIR/SITE/``, and e-mails it only to that school's
``CLASSROOM_SMTP_TO_SITE`` list (the site id in capitals, ``-`` as ``_``): one school's
digest never goes to another school's recipients.
"""

from __future__ import annotations

import logging
import os
import smtplib
import threading
from dataclasses import dataclass
from datetime import datetime, time, timezone
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.errors import UserError
from agent.files import atomic_write
from agent.protocol import now_ts

from ..sites import trees_of
from .data import Week, collect, for_role
from .render import render_csv, render_html

log = logging.getLogger(__name__)

DIGEST_HOUR = 7  # Monday 07:00 local: before staff arrive, after the weekend's data is in.


class SmtpConfigError(UserError, ValueError):
    """A bad CLASSROOM_SMTP_* setting: shown as one line by the CLI."""


@dataclass
class SmtpSettings:
    """Optional: without a host the digest is only written to disk."""

    host: str | None = None
    port: int = 25
    sender: str = "classroom-safety@localhost"
    to: tuple[str, ...] = ()
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    # {site: recipients} from CLASSROOM_SMTP_TO_<SITE>, for a collector of several schools.
    site_to: dict = None  # type: ignore[assignment]

    def for_site(self, site: str) -> "SmtpSettings":
        """These settings sending to *site*'s own recipients only (none set: not e-mailed)."""
        from dataclasses import replace

        return replace(self, to=tuple((self.site_to or {}).get(site, ())), site_to=None)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "SmtpSettings":
        env = os.environ if env is None else env
        to = tuple(a.strip() for a in env.get("CLASSROOM_SMTP_TO", "").split(",") if a.strip())
        try:
            port = int(env.get("CLASSROOM_SMTP_PORT", "25"))
        except ValueError:
            raise SmtpConfigError(f"CLASSROOM_SMTP_PORT: {env.get('CLASSROOM_SMTP_PORT')!r} is not a port number") \
                from None
        site_to = {key[len("CLASSROOM_SMTP_TO_"):].lower().replace("_", "-"):
                   tuple(a.strip() for a in value.split(",") if a.strip())
                   for key, value in env.items() if key.startswith("CLASSROOM_SMTP_TO_")}
        return cls(site_to=site_to, host=env.get("CLASSROOM_SMTP_HOST") or None, port=port,
                   sender=env.get("CLASSROOM_SMTP_FROM", cls.sender), to=to,
                   username=env.get("CLASSROOM_SMTP_USER") or None,
                   password=env.get("CLASSROOM_SMTP_PASSWORD") or None,
                   starttls=env.get("CLASSROOM_SMTP_STARTTLS", "").lower() in ("1", "true", "yes"))

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.to)

    def __repr__(self) -> str:  # never show the password in logs
        masked = "***" if self.password else None
        return f"SmtpSettings(host={self.host!r}, port={self.port}, to={self.to!r}, password={masked})"


def due_week(now: datetime, tz: str, done: set[str]) -> Week | None:
    """The week whose digest should be written now, or None.

    Last week's digest is due from Monday DIGEST_HOUR local onwards, once."""
    this = Week.containing(now, tz)
    due_at = datetime.combine(this.monday, time(DIGEST_HOUR), ZoneInfo(tz))
    if now < due_at:
        return None
    last = this.previous()
    return None if last.key in done else last


def send_email(smtp: SmtpSettings, subject: str, html: str, csv_text: str, filename: str,
               smtp_class=smtplib.SMTP) -> None:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = smtp.sender
    msg["To"] = ", ".join(smtp.to)
    msg.set_content("The weekly classroom-safety report is attached as HTML and CSV.")
    msg.add_alternative(html, subtype="html")
    msg.add_attachment(csv_text.encode("utf-8"), maintype="text", subtype="csv", filename=filename)
    with smtp_class(smtp.host, smtp.port, timeout=30) as client:
        if smtp.starttls:
            client.starttls()
        if smtp.username:
            client.login(smtp.username, smtp.password or "")
        client.send_message(msg)


def run_digest(store, reports_dir: str | Path, *, now: datetime | None = None, tz: str = "Europe/London",
               site: str = "", smtp: SmtpSettings | None = None, smtp_class=smtplib.SMTP,
               folder: str | None = None) -> Path | None:
    """Write (and maybe e-mail) *site*'s digest if one is due, into *reports_dir* (or its
    subfolder *folder*); returns the HTML path or None."""
    now = now or datetime.now(timezone.utc)
    done = store.report_weeks_done(site)
    week = due_week(now, tz, done)
    if week is None:
        return None
    # Written to a folder and mailed to a list, neither of which checks roles: the digest
    # is the technician's view (no incident counts by category or status; data.for_role).
    report = for_role(collect(store, week, site), "technician")
    html, csv_text = render_html(report), render_csv(report)
    out = Path(reports_dir) / folder if folder else Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"weekly-{week.key}.html"
    atomic_write(path, html, 0o640)
    atomic_write(out / f"weekly-{week.key}.csv", csv_text, 0o640)
    emailed = 0
    if smtp is not None and smtp.enabled:
        try:
            send_email(smtp, f"Classroom safety weekly report {week.label}", html, csv_text,
                       f"blocked-{week.key}.csv", smtp_class=smtp_class)
            emailed = 1
        except (OSError, smtplib.SMTPException) as exc:
            # The file is written either way; a mail outage must not lose the digest.
            log.warning("weekly digest %s: e-mail failed (%s); written to %s", week.key, exc, path)
    store.add_report_run(week.key, now_ts(now), str(path), bool(emailed), site)
    log.info("weekly digest %s written to %s%s", week.key, path, " and e-mailed" if emailed else "")
    return path


class DigestScheduler:
    """Background thread: every ``interval`` seconds, write the weekly digest if one is due.

    Checking often and writing at most once (``report_runs``) means a server that was down
    on Monday morning still writes last week's digest when it comes back."""

    def __init__(self, store, reports_dir: str | Path, tree_getter, *, interval: float = 900.0,
                 smtp: SmtpSettings | None = None, clock=None):
        self.store = store
        self.reports_dir = Path(reports_dir)
        self.tree_getter = tree_getter
        self.interval = interval
        self.smtp = smtp
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> Path | None:
        """One check; the last digest written (of any school), or None."""
        trees = trees_of(self.tree_getter())
        if len(trees) <= 1:
            tree = trees[0] if trees else None
            tz = tree.site.timezone if tree is not None else "Europe/London"
            site = tree.site.site if tree is not None else ""
            return run_digest(self.store, self.reports_dir, now=self.clock(), tz=tz, site=site, smtp=self.smtp)
        written = None
        for tree in trees:
            site = tree.site.site
            smtp = self.smtp.for_site(site) if self.smtp is not None else None
            written = run_digest(self.store, self.reports_dir, now=self.clock(), tz=tree.site.timezone, site=site,
                                 smtp=smtp, folder=site) or written
        return written

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - try again next round; never kill the server
                log.exception("weekly digest failed")
            self._stop.wait(self.interval)

    def start(self) -> "DigestScheduler":
        self._thread = threading.Thread(target=self._loop, name="weekly-digest", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
