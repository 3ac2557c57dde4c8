"""The governors' term report: what filtering and monitoring saw this term, with no pupil in it.

Governors and the leadership team review filtering and monitoring (DfE standard; policy 000
§7.3.1 "regular checks").  For a school term (site.yaml ``terms``, in the school's time
zone) it counts: incidents by category, by 4 Cs and by status (the outcome), how fast a
press was acknowledged (median, 90th percentile, slowest, how many never were), the
checks run (filter checks passed/failed, SWGfL test runs, reviews held), the overrides
teachers opened (by domain), the guard's events and blocked attempts, and the trend
against the term before.  No pupil identifiers: no user names, no devices, no evidence,
no free text from the record (notes, outcomes, concerns) -- only counts and categories.

It is made of the DSL's record (categories, status), so it is the DSL's
(``/reports/term``); the DSL hands the PDF to the governors.  ``collect_term`` reads the
store (server/store/reports.py ``term_figures``), ``build_term`` does the sums on plain rows
(tested without a server), ``term_pdf`` lays it out (server/pdf.py); the page is
server/web/templates/term_report.html.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from agent.protocol import now_ts, parse_ts

from .. import incidents as inc
from ..pdf import Document
from .data import check_row


@dataclass(frozen=True)
class Term:
    """A school term: its name and first and last days, in the school's time zone."""

    name: str
    start: date
    end: date
    tz: str = "Europe/London"

    def _utc(self, day: date) -> datetime:
        return datetime.combine(day, time(0), ZoneInfo(self.tz)).astimezone(timezone.utc)

    @property
    def start_ts(self) -> str:
        return now_ts(self._utc(self.start))

    @property
    def end_ts(self) -> str:
        return now_ts(self._utc(self.end + timedelta(days=1)))

    @property
    def label(self) -> str:
        return f"{self.name} ({self.start:%d %b %Y} to {self.end:%d %b %Y})"


def terms_of(tree) -> list[Term]:
    """The site's terms, oldest first (none without a tree or terms)."""
    if tree is None:
        return []
    tz = tree.site.timezone
    return sorted((Term(t.name, t.start, t.end, tz) for t in tree.site.terms or ()), key=lambda t: t.start)


def pick_term(tree, name: str | None, today: date) -> tuple[Term | None, Term | None]:
    """(the term called *name*, or the one *today* is in, or the last one begun; the term before it)."""
    terms = terms_of(tree)
    if not terms:
        return None, None
    if name:
        found = [i for i, t in enumerate(terms) if t.name == name]
        if not found:
            raise ValueError(f"term: {name[:64]!r} is not one of {', '.join(t.name for t in terms)}")
        i = found[0]
    else:
        begun = [i for i, t in enumerate(terms) if t.start <= today]
        i = begun[-1] if begun else 0
    return terms[i], terms[i - 1] if i > 0 else None


@dataclass
class TermReport:
    term: Term
    school: str
    incidents: int = 0
    presses: int = 0
    concerns: int = 0
    by_category: list[tuple[str, int]] = field(default_factory=list)
    by_four_cs: list[tuple[str, int]] = field(default_factory=list)
    by_status: list[tuple[str, int]] = field(default_factory=list)
    ack: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    guard: list[tuple[str, int]] = field(default_factory=list)
    blocked_records: int = 0
    reviews: list[dict] = field(default_factory=list)
    trend: list[dict] = field(default_factory=list)
    previous_label: str = ""
    generated_at: str = ""


def _seconds(start: str | None, end: str | None) -> float | None:
    try:
        return (parse_ts(end) - parse_ts(start)).total_seconds() if start and end else None
    except ValueError:
        return None


def _ack_summary(incidents: list[dict]) -> dict:
    presses = [i for i in incidents if i.get("alert_state") != "logged"]
    waits = sorted(s for s in (_seconds(i["raised_at"], i.get("ack_at")) for i in presses) if s is not None and s >= 0)
    if not waits:
        return {"presses": len(presses), "acknowledged": 0, "never": len(presses), "median_s": None, "p90_s": None,
                "max_s": None}
    p90 = waits[min(len(waits) - 1, int(round(0.9 * (len(waits) - 1))))]
    return {"presses": len(presses), "acknowledged": len(waits), "never": len(presses) - len(waits),
            "median_s": round(statistics.median(waits), 1), "p90_s": round(p90, 1), "max_s": round(waits[-1], 1)}


def build_term(term: Term, school: str, figures: dict, previous: dict | None = None,
               previous_term: Term | None = None, generated_at: str | None = None) -> TermReport:
    """Sum a term's figures (``Store.term_figures``) into a TermReport."""
    incidents = figures["incidents"]
    tags: Counter = Counter()
    for i in incidents:
        try:
            tags.update(json.loads(i.get("tags") or "[]") if isinstance(i.get("tags"), str) else i.get("tags") or [])
        except ValueError:
            pass
    checks = [check_row(r) for r in figures["checks"]]
    tests = Counter((t.get("result") or "not recorded") for t in figures["tests"])
    events = figures["events"]
    report = TermReport(
        term=term, school=school, incidents=len(incidents),
        presses=sum(1 for i in incidents if i.get("alert_state") != "logged"),
        concerns=sum(1 for i in incidents if i.get("alert_state") == "logged"),
        by_category=sorted(Counter(inc.CATEGORIES.get(i.get("category") or "", "Not yet categorised")
                                   for i in incidents).items(), key=lambda kv: (-kv[1], kv[0])),
        by_four_cs=[(inc.FOUR_CS[k].split(":")[0], tags.get(k, 0)) for k in inc.FOUR_CS],
        by_status=[(s, sum(1 for i in incidents if (i.get("status") or "open") == s)) for s in inc.STATUSES],
        ack=_ack_summary(incidents),
        checks={"runs": len(checks), "passed": sum(1 for c in checks if c["result"] in ("pass", "ok")),
                "failed": sum(1 for c in checks if c["result"] in ("fail", "failed")),
                "tests": sum(tests.values()), "tests_by_result": sorted(tests.items())},
        overrides={"opened": events.get("override_opened", 0),
                   "top": [(r["domain"] or "?", int(r["n"])) for r in figures["overrides"]]},
        guard=[(k, events.get(k, 0)) for k in ("bypass_process", "tamper", "removable_media", "shared_login")],
        blocked_records=figures["blocked_events"], reviews=list(figures["reviews"]),
        generated_at=generated_at or now_ts())
    if previous is not None and previous_term is not None:
        before = build_term(previous_term, school, previous)
        report.trend = [
            {"what": "Incidents", "now": report.incidents, "before": before.incidents},
            {"what": "Report button presses", "now": report.presses, "before": before.presses},
            {"what": "Concerns logged by staff", "now": report.concerns, "before": before.concerns},
            {"what": "Median seconds to acknowledge", "now": report.ack["median_s"], "before": before.ack["median_s"]},
            {"what": "Presses never acknowledged", "now": report.ack["never"], "before": before.ack["never"]},
            {"what": "Filter checks run", "now": report.checks["runs"], "before": before.checks["runs"]},
            {"what": "Filter checks failed", "now": report.checks["failed"], "before": before.checks["failed"]},
            {"what": "Overrides opened", "now": report.overrides["opened"], "before": before.overrides["opened"]},
            {"what": "Blocked-attempt records", "now": report.blocked_records, "before": before.blocked_records},
        ]
        report.previous_label = previous_term.label
    return report


def collect_term(store, site: str, school: str, term: Term, previous_term: Term | None = None) -> TermReport:
    figures = store.term_figures(site, term.start_ts, term.end_ts)
    previous = store.term_figures(site, previous_term.start_ts, previous_term.end_ts) if previous_term else None
    return build_term(term, school, figures, previous, previous_term)


def _fmt_s(value) -> str:
    return "-" if value is None else f"{value:g} s"


def term_pdf(report: TermReport) -> bytes:
    """The term report as a PDF for the governors."""
    t = report.term
    doc = Document(f"Filtering and monitoring: {report.school}, {t.name}",
                   subtitle=f"Term {t.label}. Generated {report.generated_at[:16].replace('T', ' ')} UTC. "
                            "Counts only: no pupil is named or identifiable in this report.",
                   footer=f"{report.school} - term report {t.name}")
    doc.heading("Incidents")
    doc.paragraph(f"{report.incidents} incidents: {report.presses} from the report button, {report.concerns} "
                  "logged by staff.")
    doc.table(["Category", "Incidents"], report.by_category, widths=(140, 40))
    doc.table(["4 Cs (an incident may have several)", "Incidents"], report.by_four_cs, widths=(140, 40))
    doc.table(["Status (outcome)", "Incidents"], report.by_status, widths=(140, 40))
    doc.heading("Press to acknowledgement")
    a = report.ack
    doc.fields([("Presses", a["presses"]), ("Acknowledged", a["acknowledged"]), ("Never acknowledged", a["never"]),
                ("Median", _fmt_s(a["median_s"])), ("90th percentile", _fmt_s(a["p90_s"])),
                ("Slowest", _fmt_s(a["max_s"]))])
    doc.heading("Checks run")
    c = report.checks
    doc.fields([("Filter checks", f"{c['runs']} run, {c['passed']} passed, {c['failed']} failed"),
                ("SWGfL test runs", ", ".join(f"{k}: {n}" for k, n in c["tests_by_result"]) or "none"),
                ("Reviews held", ", ".join(r["held_on"] for r in report.reviews) or "none this term")])
    doc.heading("Overrides (\"allow this site for this lesson\")")
    doc.paragraph(f"{report.overrides['opened']} overrides opened by teachers.")
    doc.table(["Domain", "Times opened"], report.overrides["top"], widths=(140, 40))
    doc.heading("Guard and filtering")
    doc.table(["Guard event", "Events"], report.guard, widths=(140, 40))
    doc.paragraph(f"{report.blocked_records} blocked-attempt records (repeats within the coalescing window count "
                  "once).")
    if report.trend:
        doc.heading(f"Trend: against {report.previous_label or 'the term before'}")
        doc.table(["", "This term", "Term before"],
                  [[r["what"], "-" if r["now"] is None else r["now"], "-" if r["before"] is None else r["before"]]
                   for r in report.trend], widths=(100, 40, 40))
    return doc.bytes()
