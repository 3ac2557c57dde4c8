"""Weekly reports for the DSL and the technician, and the scheduled weekly digest.

One report per school week (Monday 00:00 to Monday 00:00, school local time):

* the denied/blocked list per room and key stage (the policies ask for "weekly
  denied/blocked lists"), as HTML with an inline SVG bar chart (rendered here, no JS
  library, no CDN: it must also work as an e-mail attachment) and as CSV;
* over-blocking candidates: the most-requested blocked domains ("avoid over-blocking":
  a domain many pupils keep asking for is probably one a lesson needs);
* an incidents summary (counts only: no pupil detail in a digest);
* the filtering check log (``filter_check`` events: who checked, when, what, result).

Building the report (``build``) works on plain rows, so the numbers are tested without a
server; ``collect`` reads those rows from the store.  ``due_week``/``run_digest`` are the
weekly schedule: the digest for last week is written to the reports dir on Monday
morning, once (``report_runs`` remembers), and e-mailed only if SMTP is configured.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import smtplib
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from email.message import EmailMessage
from html import escape
from pathlib import Path
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from agent.errors import UserError
from agent.files import atomic_write
from agent.protocol import now_ts

log = logging.getLogger(__name__)

DIGEST_HOUR = 7  # Monday 07:00 local: before staff arrive, after the weekend's data is in.
TOP_DOMAINS = 20


# --------------------------------------------------------------------------- weeks


@dataclass(frozen=True)
class Week:
    """A school week, Monday to Monday in the school's time zone."""

    monday: date
    tz: str = "Europe/London"

    @classmethod
    def containing(cls, moment: datetime, tz: str = "Europe/London") -> "Week":
        local = moment.astimezone(ZoneInfo(tz)).date()
        return cls(local - timedelta(days=local.weekday()), tz)

    @classmethod
    def parse(cls, key: str, tz: str = "Europe/London") -> "Week":
        """``2026-W47`` (ISO week) or any date inside the week (``2026-11-18``)."""
        try:
            if "-W" in key:
                year, week = key.split("-W")
                return cls(date.fromisocalendar(int(year), int(week), 1), tz)
            day = date.fromisoformat(key)
        except ValueError:
            raise ValueError(f"week: {key!r} is not an ISO week (2026-W47) or a date (2026-11-18)") from None
        return cls(day - timedelta(days=day.weekday()), tz)

    @property
    def key(self) -> str:
        year, week, _ = self.monday.isocalendar()
        return f"{year}-W{week:02d}"

    def _utc(self, day: date) -> datetime:
        return datetime.combine(day, time(0), ZoneInfo(self.tz)).astimezone(timezone.utc)

    @property
    def start(self) -> datetime:
        return self._utc(self.monday)

    @property
    def end(self) -> datetime:
        return self._utc(self.monday + timedelta(days=7))

    @property
    def start_ts(self) -> str:
        # Same text form as every stored ts, so ranges compare as text on both engines.
        return now_ts(self.start)

    @property
    def end_ts(self) -> str:
        return now_ts(self.end)

    def previous(self) -> "Week":
        return Week(self.monday - timedelta(days=7), self.tz)

    @property
    def label(self) -> str:
        last = self.monday + timedelta(days=6)
        return f"{self.key} ({self.monday:%d %b} to {last:%d %b %Y})"


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    week: Week
    site: str
    # (room, key_stage) -> {"attempts", "domains", "devices"}
    by_room: list[dict] = field(default_factory=list)
    # the denied/blocked list: room, key_stage, domain, attempts, devices, first, last
    blocked: list[dict] = field(default_factory=list)
    overblocking: list[dict] = field(default_factory=list)
    incidents: dict[str, Any] = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    generated_at: str = ""

    @property
    def total_attempts(self) -> int:
        return sum(r["attempts"] for r in self.by_room)


def _count(row: dict) -> int:
    """A coalesced blocked event carries a count (DESIGN: filtering.coalesce_seconds)."""
    data = row.get("data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            data = None
    value = (data or {}).get("count") if isinstance(data, dict) else None
    if value is None:
        value = row.get("count")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _data(row: dict) -> dict:
    data = row.get("data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return {}
    return data if isinstance(data, dict) else {}


def build(week: Week, site: str, blocked_rows: Iterable[dict], incident_rows: Iterable[dict],
          check_rows: Iterable[dict], *, top: int = TOP_DOMAINS, generated_at: str | None = None) -> Report:
    """Aggregate plain rows (already limited to *week*) into a Report.

    blocked_rows: events of type blocked (room, profile, domain, device, ts, data/count);
    incident_rows: incidents (room, category, status, alert_state, raised_at);
    check_rows: events of type filter_check (ts, room, device, user_name, domain, data).
    """
    per_room: dict[tuple, dict] = {}
    per_domain: dict[tuple, dict] = {}
    overall: dict[str, dict] = {}
    for row in blocked_rows:
        room, ks, domain = row.get("room") or "?", row.get("profile") or "?", row.get("domain") or "?"
        n = _count(row)
        ts = row.get("ts") or ""
        data = _data(row)
        # A coalesced event spans first_seen..last_seen; fall back to its ts.
        first = data.get("first_seen") if isinstance(data.get("first_seen"), str) else ts
        last = data.get("last_seen") if isinstance(data.get("last_seen"), str) else ts
        agg = per_room.setdefault((room, ks), {"room": room, "key_stage": ks, "attempts": 0,
                                               "domains": set(), "devices": set()})
        agg["attempts"] += n
        agg["domains"].add(domain)
        agg["devices"].add(row.get("device"))
        item = per_domain.setdefault((room, ks, domain), {"room": room, "key_stage": ks, "domain": domain,
                                                          "attempts": 0, "devices": set(), "first": first,
                                                          "last": last})
        item["attempts"] += n
        item["devices"].add(row.get("device"))
        item["first"] = min(item["first"], first)
        item["last"] = max(item["last"], last)
        o = overall.setdefault(domain, {"domain": domain, "attempts": 0, "devices": set(), "rooms": set(),
                                        "key_stages": set()})
        o["attempts"] += n
        o["devices"].add(row.get("device"))
        o["rooms"].add(room)
        o["key_stages"].add(ks)

    by_room = [{**a, "domains": len(a["domains"]), "devices": len(a["devices"])}
               for a in sorted(per_room.values(), key=lambda a: (a["room"], a["key_stage"]))]
    blocked = [{**b, "devices": len(b["devices"])}
               for b in sorted(per_domain.values(), key=lambda b: (b["room"], b["key_stage"], -b["attempts"],
                                                                   b["domain"]))]
    over = sorted(overall.values(), key=lambda o: (-o["attempts"], -len(o["devices"]), o["domain"]))[:top]
    overblocking = [{"domain": o["domain"], "attempts": o["attempts"], "devices": len(o["devices"]),
                     "rooms": ", ".join(sorted(o["rooms"])), "key_stages": ", ".join(sorted(o["key_stages"]))}
                    for o in over]

    incidents = list(incident_rows)
    summary = {
        "total": len(incidents),
        "open": sum(1 for i in incidents if (i.get("status") or "open") != "closed"),
        "by_category": sorted(Counter(i.get("category") or "not yet categorised" for i in incidents).items()),
        "by_room": sorted(Counter(i.get("room") or "?" for i in incidents).items()),
        "by_status": sorted(Counter(i.get("status") or "open" for i in incidents).items()),
    }

    checks = [_check_row(row) for row in sorted(check_rows, key=lambda r: r.get("ts") or "")]
    return Report(week=week, site=site, by_room=by_room, blocked=blocked, overblocking=overblocking,
                  incidents=summary, checks=checks, generated_at=generated_at or now_ts())


def _check_row(row: dict) -> dict:
    """One line of the filtering check log from a ``filter_check`` event.

    The agent's check (agent/filter/check.py) sends one event per run: ``by``, ``profile``,
    ``ok``, ``passed``, ``failed`` and ``results`` (domain, expect, rcode, result); a
    single-domain form (``domain``, ``expected``, ``result``) is read too."""
    data = _data(row)
    who = data.get("by") or row.get("user_name") or data.get("user") or "?"
    results = data.get("results") if isinstance(data.get("results"), list) else None
    if results is not None:
        items = [r for r in results if isinstance(r, dict)]
        failed = [str(r.get("domain")) for r in items if r.get("result") != "pass"]
        what = f"{len(items)} test domains ({data.get('profile') or row.get('profile') or '?'})"
        ok = data.get("ok") if isinstance(data.get("ok"), bool) else not failed
        result = "pass" if ok else "fail"
        details = ("not as expected: " + ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")) \
            if failed else f"all {len(items)} as expected"
    else:
        what = row.get("domain") or data.get("domain") or data.get("url") or "?"
        result = data.get("result")
        if result is None and isinstance(data.get("ok"), bool):
            result = "pass" if data["ok"] else "fail"
        result = str(result or "?")
        details = f"expected {data['expected']}" if data.get("expected") else ""
    return {"ts": row.get("ts") or "", "who": who, "room": row.get("room") or "?", "device": row.get("device") or "?",
            "what": what, "result": result, "details": details}


# --------------------------------------------------------------------------- rendering


def svg_bar_chart(items: list[tuple[str, int]], *, title: str, width: int = 640, bar: int = 22) -> str:
    """A horizontal bar chart as inline SVG (server-side, accessible: role=img + title)."""
    label_w, pad, value_w = 160, 6, 60
    height = max(1, len(items)) * (bar + pad) + pad
    top = max((v for _, v in items), default=0) or 1
    span = width - label_w - value_w
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
           f'width="100%" preserveAspectRatio="xMinYMin meet" aria-labelledby="chart-title">',
           f'<title id="chart-title">{escape(title)}</title>']
    if not items:
        out.append(f'<text x="{pad}" y="{bar}" font-size="14">No blocked attempts this week.</text>')
    for i, (label, value) in enumerate(items):
        y = pad + i * (bar + pad)
        w = max(1, round(span * value / top)) if value else 0
        out.append(f'<g class="bar"><text x="{label_w - pad}" y="{y + bar * 0.7:.1f}" text-anchor="end" '
                   f'font-size="13">{escape(label)}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar}" fill="#2f6f9f" rx="3">'
                   f'<title>{escape(label)}: {value}</title></rect>'
                   f'<text x="{label_w + w + pad}" y="{y + bar * 0.7:.1f}" font-size="13" '
                   f'class="value">{value}</text></g>')
    out.append("</svg>")
    return "".join(out)


def chart(report: Report) -> str:
    items = [(f"{r['room']} ({r['key_stage']})", r["attempts"]) for r in report.by_room]
    return svg_bar_chart(items, title=f"Blocked attempts per room and key stage, week {report.week.key}")


def render_html(report: Report) -> str:
    """A self-contained HTML page (inline CSS and SVG) for the browser, the file and e-mail."""
    from .web.templating import environment

    return environment().get_template("report_weekly.html").render(r=report, chart=chart(report))


CSV_FIELDS = ["week", "room", "key_stage", "domain", "attempts", "devices", "first_seen", "last_seen"]


def render_csv(report: Report) -> str:
    """The denied/blocked list, one row per room, key stage and domain."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_FIELDS)
    for b in report.blocked:
        w.writerow([report.week.key, b["room"], b["key_stage"], _csv_safe(b["domain"]), b["attempts"],
                    b["devices"], b["first"], b["last"]])
    return buf.getvalue()


def _csv_safe(value: str) -> str:
    # A "domain" comes from a device; never let a spreadsheet run it as a formula.
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


# --------------------------------------------------------------------------- from the store


def collect(store, week: Week, site: str | None = None, *, top: int = TOP_DOMAINS) -> Report:
    """Read the week's rows from the store and build the report."""
    q = store.query
    blocked = q("SELECT room, profile, domain, device, ts, data FROM events "
                "WHERE type = ? AND ts >= ? AND ts < ?", ["blocked", week.start_ts, week.end_ts])
    checks = q("SELECT ts, room, device, user_name, domain, data FROM events "
               "WHERE type = ? AND ts >= ? AND ts < ?", ["filter_check", week.start_ts, week.end_ts])
    incidents = q("SELECT room, category, status, alert_state, raised_at FROM incidents "
                  "WHERE raised_at >= ? AND raised_at < ?", [week.start_ts, week.end_ts])
    return build(week, site or "", blocked, incidents, checks, top=top)


# --------------------------------------------------------------------------- the weekly digest


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

    @classmethod
    def from_env(cls, env: dict | None = None) -> "SmtpSettings":
        env = os.environ if env is None else env
        to = tuple(a.strip() for a in env.get("CLASSROOM_SMTP_TO", "").split(",") if a.strip())
        try:
            port = int(env.get("CLASSROOM_SMTP_PORT", "25"))
        except ValueError:
            raise SmtpConfigError(f"CLASSROOM_SMTP_PORT: {env.get('CLASSROOM_SMTP_PORT')!r} is not a port number") \
                from None
        return cls(host=env.get("CLASSROOM_SMTP_HOST") or None, port=port,
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
               site: str = "", smtp: SmtpSettings | None = None, smtp_class=smtplib.SMTP) -> Path | None:
    """Write (and maybe e-mail) the digest if one is due; returns the HTML path or None."""
    now = now or datetime.now(timezone.utc)
    done = {r["week"] for r in store.query("SELECT week FROM report_runs", [])}
    week = due_week(now, tz, done)
    if week is None:
        return None
    report = collect(store, week, site)
    html, csv_text = render_html(report), render_csv(report)
    out = Path(reports_dir)
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
    store.execute("INSERT INTO report_runs (week, ts, path, emailed) VALUES (?, ?, ?, ?)",
                  [week.key, now_ts(now), str(path), emailed])
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
        tree = self.tree_getter()
        tz = tree.site.timezone if tree is not None else "Europe/London"
        site = tree.site.site if tree is not None else ""
        return run_digest(self.store, self.reports_dir, now=self.clock(), tz=tz, site=site, smtp=self.smtp)

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
