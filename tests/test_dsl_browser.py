"""The DSL's hold and the blocked-attempt search in headless Chromium (issue 15: the pages a
DSL uses most are tested in a real browser).

Real mosquitto, the collector (ingest + uvicorn + SQLite) and Debian's chromium through
chromedriver.  The DSL logs in through the form, opens an incident, puts its device on hold
(the device's cmd topic receives ``hold``), lifts it (``release``), and searches the blocked
attempts by pupil and risk list.
"""

from __future__ import annotations

import pytest

from agent import protocol
from server_fixtures import PASSWORD, SITE, make_alert, make_event, tree  # noqa: F401
from services import wait_until
from test_browser_e2e import _find, browser  # noqa: F401 - the headless Chromium fixture
from web_fixtures import CmdRecorder, collector  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEVICE = "5b-pi-01"


def _login_as_dsl(collector, browser, path: str) -> None:
    browser.get(collector.url + path)
    wait_until(lambda: "/login" in browser.current_url, timeout=10,
               message=lambda: f"no login page: {browser.current_url} {browser.find_element('tag name', 'body').text[:500]}")
    _find(browser, "username").send_keys("s.patel")
    _find(browser, "password").send_keys(PASSWORD)
    _find(browser, "login-submit").click()
    wait_until(lambda: browser.current_url.endswith(path), timeout=10,
               message=lambda: f"not on {path}: {browser.current_url}")


def test_the_dsl_holds_and_releases_a_device_and_searches_blocked_attempts(collector, browser):
    from selenium.webdriver.common.by import By

    alert = make_alert(room="5b", device=DEVICE, seat="Table 1")
    collector.store.record_alert(alert)
    collector.store.insert_events([
        make_event(device=DEVICE, domain="suicide-forum.example", category="self-harm", user="pupil.5b.07",
                   device_ip="10.20.5.31", count=4),
        make_event(device=DEVICE, domain="tiktok.com", user="pupil.5b.07", device_ip="10.20.5.31"),
        make_event(device="5b-pi-02", domain="pornhub.com", category="adult", user="pupil.5b.12")])
    cmd_topic = protocol.topic(protocol.DEFAULT_PREFIX, SITE, "5b", DEVICE, "cmd")
    recorder = CmdRecorder(collector.broker, cmd_topic)
    try:
        _login_as_dsl(collector, browser, f"/incidents/{alert['id']}")
        _find(browser, "incident-hold").click()
        wait_until(lambda: browser.current_url.endswith(f"/incidents/{alert['id']}/hold"), timeout=10)
        form = _find(browser, "hold-place")
        form.find_element(By.NAME, "reason").send_keys("Police advice sought (ref 42)")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        _find(browser, "hold-lift")
        assert "is on hold" in _find(browser, "hold-state").text
        assert "Police advice sought (ref 42)" in _find(browser, "hold-history").text
        _, cmd, _ = recorder.wait_for(lambda m: m[1].get("cmd") == "hold")
        assert protocol.validate("cmd", cmd)["incident"] == alert["id"] and cmd["by"] == "s.patel"

        lift = _find(browser, "hold-lift")
        lift.find_element(By.NAME, "reason").send_keys("Police: no further action")
        lift.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        _find(browser, "hold-place")
        _, cmd, _ = recorder.wait_for(lambda m: m[1].get("cmd") == "release")
        assert cmd["hold_id"] == collector.store.list_holds(SITE)[0]["id"]
        assert "lifted" in _find(browser, "hold-history").text

        # The blocked-attempt search: by pupil, then by risk list.
        browser.get(collector.url + "/blocked")
        search = _find(browser, "blocked-search")
        search.find_element(By.NAME, "user").send_keys("pupil.5b.07")
        search.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_until(lambda: "user=pupil.5b.07" in browser.current_url, timeout=10)
        rows = browser.find_elements(By.CSS_SELECTOR, "#blocked-list tbody tr")
        assert len(rows) == 2 and all("pupil.5b.07" in r.text for r in rows)
        high = browser.find_elements(By.CSS_SELECTOR, "#blocked-list tr.high-risk")
        assert len(high) == 1 and "suicide-forum.example" in high[0].text and "10.20.5.31" in high[0].text
        browser.get(collector.url + "/blocked?category=adult")
        rows = browser.find_elements(By.CSS_SELECTOR, "#blocked-list tbody tr")
        assert len(rows) == 1 and "pornhub.com" in rows[0].text
        assert {"hold.place", "hold.lift", "blocked.search"} <= {a["action"] for a in collector.store.list_audit(limit=50)}
    finally:
        browser.get("about:blank")
        recorder.close()
