"""The ``report_runs`` table: weekly digests already written.

The digest scheduler (server/reports/digest.py) checks often and writes each week's
digest at most once; this table is how a restart, or a second ``serve`` process on the
same database, knows a week is done.  What the report reads lives with its tables
(events.py: blocked attempts and filtering checks; incidents.py: incidents raised).
"""

from __future__ import annotations


class ReportsTable:
    """Store methods for weekly report runs (mixed into ``Store``): one per school and week."""

    def report_weeks_done(self, site: str = "") -> set[str]:
        """Weeks (``2026-W47``) whose digest has been written for *site* ("": for any site)."""
        if not site:
            return {r["week"] for r in self.query("SELECT week FROM report_runs", [])}
        return {r["week"] for r in self.query("SELECT week FROM report_runs WHERE site = ?", [site])}

    def add_report_run(self, week: str, ts: str, path: str, emailed: bool, site: str = "") -> None:
        self.execute("INSERT INTO report_runs (site, week, ts, path, emailed) VALUES (?, ?, ?, ?, ?)",
                     [site, week, ts, path, int(emailed)])
