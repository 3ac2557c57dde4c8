"""Exports for the school's safeguarding record (CPOMS, MyConcern, Arbor): an incident, or a
pupil's incidents, as a PDF and a CSV chronology.

A chronology is what those systems import or attach: one line per thing that happened, in
time order (the press and every alert transition, a concern staff logged, each change of
category, 4 Cs, status and outcome, each checklist tick with who and when, each note),
plus the record as it stands (category, 4 Cs, status, outcome, who was logged in, the
checklist).  The evidence domains go in only when the DSL ticks them in, and then only
domains and times (never imagery: there is none).  Every export is written to the export
log and the audit log by the route (server/http/api/exports.py), before the file leaves.

``chronology(incident)`` works on an incident as ``server/incidents.for_user`` gives it to
the DSL; ``to_csv`` (server/safecsv.py neutralises every cell) and ``to_pdf``
(server/pdf.py) lay it out.
"""

from __future__ import annotations

import json
from typing import Sequence

from . import incidents as inc
from .localtime import local_ts
from .pdf import Document
from .safecsv import to_csv as write_csv

FORMATS = ("pdf", "csv")
CSV_FIELDS = ["incident", "time_utc", "time_local", "event", "by", "details"]
STATE_WORDS = {"raised": "Report button pressed", "acknowledged": "Acknowledged ('I'm coming')",
               "escalated": "Escalated (nobody answered in time)", "cleared": "Cleared",
               "logged": "Concern logged by staff"}


def _checklist_text(category: str | None, item: str | None) -> str:
    for key, text, _ in inc.CHECKLISTS.get(category or "", []):
        if key == item:
            return text
    return item or ""


def chronology(incident: dict, evidence: Sequence[dict] | None = None) -> list[dict]:
    """``[{ts, event, by, details}]`` in time order for one incident (the DSL's view of it)."""
    rows = []
    concern = incident.get("concern")
    for t in incident.get("timeline") or []:
        details = ""
        if t["state"] == "logged" and concern:
            details = concern.get("what") or ""
            if concern.get("url"):
                details += f" (site: {concern['url']})"
        rows.append({"ts": t["ts"], "event": STATE_WORDS.get(t["state"], t["state"]), "by": t.get("by") or "",
                     "details": details})
    category = incident.get("category")
    for a in incident.get("actions") or []:
        kind = a["kind"]
        if kind == "note":
            event, details = "Note", a.get("text") or ""
        elif kind in ("tick", "untick"):
            # A tick is read against the category the incident has now (the checklist it belongs to).
            event = "Checklist: done" if kind == "tick" else "Checklist: not done"
            details = _checklist_text(category, a.get("item"))
            if a.get("text"):
                details += f" (note: {a['text']})"
        elif kind == "set":
            field, value = a.get("item"), a.get("text") or ""
            event = f"Set {field}"
            if field == "category":
                details = inc.CATEGORIES.get(value, value)
            elif field == "tags":
                try:
                    details = ", ".join(json.loads(value)) or "(none)"
                except ValueError:
                    details = value
            else:
                details = value
        else:
            event, details = kind, a.get("text") or ""
        rows.append({"ts": a["ts"], "event": event, "by": a.get("actor") or "", "details": details})
    for e in evidence or []:
        for d in e.get("domains") or []:
            rows.append({"ts": d.get("ts") or e["ts"], "event": "Evidence: domain looked up",
                         "by": e.get("device") or "", "details": f"{d.get('domain')} ({d.get('count') or 1}x)"})
    for x in incident.get("exports") or []:
        rows.append({"ts": x["ts"], "event": f"Exported ({x['format']})", "by": x["actor"],
                     "details": "with evidence domains" if x.get("with_evidence") else "without evidence"})
    # By time only (a stable sort): steps at the same moment keep their order, the timeline's
    # lifecycle order first (raised before acknowledged), then the DSL's actions.
    return sorted(rows, key=lambda r: r["ts"] or "")


def to_csv(incidents: Sequence[dict], evidence: dict[str, list] | None, tz: str) -> str:
    """One CSV chronology for *incidents*; *evidence* ``{incident_id: [...]}`` only if ticked in."""
    out = []
    for incident in incidents:
        for row in chronology(incident, (evidence or {}).get(incident["id"])):
            out.append([incident["id"], row["ts"], local_ts(row["ts"], tz, seconds=True), row["event"], row["by"],
                        row["details"]])
    return write_csv(CSV_FIELDS, out)


def to_pdf(incidents: Sequence[dict], evidence: dict[str, list] | None, *, school: str, tz: str, title: str,
           exported_by: str, exported_at: str) -> bytes:
    """The chronology as a PDF: per incident the record as it stands, then every step in order."""
    doc = Document(title, subtitle=f"{school} - exported by {exported_by} on {local_ts(exported_at, tz)} "
                                   f"(school time, {tz})",
                   footer=f"{school} - safeguarding record - confidential")
    doc.paragraph("Evidence is the domains a device looked up before a press, and when; no screen images or page "
                  "content are ever collected." + ("" if evidence else " Evidence domains are not in this export."),
                  size=8.5, muted=True)
    for incident in incidents:
        doc.heading(f"Incident {incident['id'][:8]}: {incident['room']}"
                    + (f", {incident.get('seat') or incident.get('device')}" if incident.get("device") else ""))
        concern = incident.get("concern")
        doc.fields([
            ("Incident id", incident["id"]),
            ("How it started", "Concern logged by staff" if concern else "Report button pressed"),
            ("When", local_ts(incident["raised_at"], tz)),
            ("Room / device", f"{incident['room']} / {incident.get('device') or '-'}"),
            ("Logged in", incident.get("session_user")),
            ("Category", inc.CATEGORIES.get(incident.get("category") or "", incident.get("category"))),
            ("4 Cs", ", ".join(inc.FOUR_CS.get(t, t).split(":")[0] for t in incident.get("tags") or [])),
            ("Status", incident.get("status")),
            ("Outcome", incident.get("outcome")),
        ])
        if concern:
            doc.fields([("What happened", concern.get("what")), ("Site", concern.get("url")),
                        ("Logged by", f"{concern.get('logged_by')} at {local_ts(concern.get('logged_at'), tz)}")])
        doc.paragraph("Checklist", size=10)
        doc.table(["Step", "Done", "By", "When"],
                  [[c["text"], "yes" if c["done"] else "no", c.get("by") or "", local_ts(c.get("at"), tz)
                    if c.get("at") else ""] for c in incident.get("checklist") or []],
                  widths=(100, 14, 30, 36), empty="No category set yet, so no checklist.")
        doc.paragraph("Chronology", size=10)
        doc.table(["When", "What", "By", "Details"],
                  [[local_ts(r["ts"], tz, seconds=True), r["event"], r["by"], r["details"]]
                   for r in chronology(incident, (evidence or {}).get(incident["id"]))],
                  widths=(34, 40, 28, 78))
    return doc.bytes()
