"""The ``report_runs`` table: weekly digests already written.

The digest scheduler (server/reports/digest.py) checks often and writes each week's
digest at most once; this table is how a restart, or a second ``serve`` process on the
same database, knows a week is done.  What the weekly report reads lives with its tables
(events.py: blocked attempts and filtering checks; incidents.py: incidents raised).

The governors' term report (server/reports/term.py) reads counts only, through
``term_figures``: no pupil identifier (no user name, no device) leaves this query.
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

    def term_figures(self, site: str, start: str, end: str) -> dict:
        """What the term report counts for [start, end) at *site*: incidents (category, tags,
        status, whether a press or a logged concern, press-to-acknowledge seconds), checks run,
        test-filtering runs, overrides opened (by domain), blocked attempts, guard events, reviews."""
        incidents = self.query(
            "SELECT i.id, i.category, i.tags, i.status, i.alert_state, i.raised_at, "
            "(SELECT MIN(t.ts) FROM alert_transitions t WHERE t.alert_id = i.id AND t.state = 'acknowledged') "
            "AS ack_at FROM incidents i WHERE i.site = ? AND i.raised_at >= ? AND i.raised_at < ?",
            (site, start, end))
        events = {r["type"]: int(r["n"]) for r in self.query(
            "SELECT type, COUNT(*) AS n FROM events WHERE site = ? AND ts >= ? AND ts < ? AND type IN "
            "('filter_check', 'override_opened', 'bypass_process', 'tamper', 'removable_media', 'shared_login') "
            "GROUP BY type", (site, start, end))}
        checks = self.query("SELECT data FROM events WHERE site = ? AND type = 'filter_check' AND ts >= ? "
                            "AND ts < ?", (site, start, end))
        overrides = self.query("SELECT domain, COUNT(*) AS n FROM events WHERE site = ? AND type = "
                               "'override_opened' AND ts >= ? AND ts < ? GROUP BY domain ORDER BY n DESC, domain "
                               "LIMIT 10", (site, start, end))
        blocked = self.query_one("SELECT COUNT(*) AS n FROM events WHERE site = ? AND type = 'blocked' AND ts >= ? "
                                 "AND ts < ?", (site, start, end))
        tests = self.query("SELECT result FROM filter_tests WHERE site = ? AND started_at >= ? AND started_at < ?",
                           (site, start, end))
        reviews = self.query("SELECT held_on, next_review FROM reviews WHERE site = ? AND held_on >= ? "
                             "AND held_on < ? ORDER BY held_on", (site, start[:10], end[:10]))
        return {"incidents": incidents, "events": events, "checks": checks, "overrides": overrides,
                "blocked_events": int(blocked["n"]) if blocked else 0, "tests": tests, "reviews": reviews}
