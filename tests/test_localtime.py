"""Times in the school's own zone (server/localtime.py) on pages, the weekly report and messages,
never UTC: a press at 08:31 UTC on 1 July is 09:31 BST in Europe/London."""

from __future__ import annotations

from datetime import datetime, timezone

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import make_alert

SUMMER = "2026-07-01T08:31:05.120Z"
WINTER = "2026-11-24T08:31:05.120Z"


def test_local_time_formats():
    from server.localtime import local_long, local_ts

    assert local_ts(SUMMER, "Europe/London") == "2026-07-01 09:31 BST"
    assert local_ts(WINTER, "Europe/London") == "2026-11-24 08:31 GMT"
    assert local_ts(SUMMER, "Europe/London", seconds=True) == "2026-07-01 09:31:05 BST"
    assert local_long(SUMMER, "Europe/London") == "Wed 1 Jul 2026, 09:31:05 BST"
    assert local_ts(datetime(2026, 7, 1, 8, 31, tzinfo=timezone.utc), "Europe/Dublin") == "2026-07-01 09:31 IST"
    assert local_ts("garbage", "Europe/London") == "garbage" and local_ts(None) == ""


def test_pages_and_the_weekly_report_show_school_time(sqlite_store, app_factory, staff_client):
    sqlite_store.record_alert(make_alert(ts=SUMMER))
    app = app_factory(sqlite_store)
    dsl = staff_client(app, "dsl")
    page = dsl.get("/incidents")
    assert page.status_code == 200
    assert "2026-07-01 09:31 BST" in page.text and "08:31" not in page.text and "UTC" not in page.text
    assert 'data-tz="Europe/London"' in page.text and "/static/localtime.js" in page.text
    report = staff_client(app, "technician").get("/reports/weekly", params={"week": "2026-W27"})
    assert report.status_code == 200 and "times are school time (Europe/London)" in report.text
    assert "UTC" not in report.text
