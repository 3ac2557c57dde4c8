"""The office board in headless Chromium: every room live, open alerts with their age and who is
coming, rooms with no live receiver marked, times in the school's zone.

Real mosquitto, the real collector (ingest + uvicorn + SQLite), Debian's chromium through
selenium; the devices and the teacher's alerts client are simulated on the broker exactly as
they speak (agent.protocol: alert transitions, retained ``_watch`` presence).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from agent import protocol
from server_fixtures import PASSWORD, SITE, tree  # noqa: F401
from services import close_client, mqtt_client, wait_until
from test_browser_e2e import _find, browser  # noqa: F401
from web_fixtures import collector  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PREFIX = protocol.DEFAULT_PREFIX


def _publish(client, topic: str, payload: dict, retain: bool = True) -> None:
    client.publish(topic, protocol.encode(payload), qos=1, retain=retain).wait_for_publish(5)


def _alert(alert_id: str, state: str, room: str, device: str, seat: str | None, ts: str | None = None,
           by: str | None = None) -> dict:
    return {"id": alert_id, "state": state, "site": SITE, "room": room, "device": device, "seat": seat,
            "ts": ts or protocol.now_ts(), "by": by}


def _london(ts: str) -> str:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(ZoneInfo("Europe/London")).strftime(
        "%H:%M:%S %Z")


def test_office_board_shows_every_room_live(collector, browser):
    from selenium.webdriver.common.by import By

    def card(room):
        return browser.find_element(By.ID, f"room-{room}")

    device = mqtt_client(collector.broker, client_id="1a-pi-01")
    teacher = mqtt_client(collector.broker, client_id="m.khan")
    watch = protocol.watch_topic(PREFIX, SITE, "5b", "m.khan")
    try:
        browser.get(collector.url + "/office")
        wait_until(lambda: "/login" in browser.current_url, timeout=10)
        _find(browser, "username").send_keys("office")
        _find(browser, "password").send_keys(PASSWORD)
        _find(browser, "login-submit").click()
        wait_until(lambda: browser.current_url.endswith("/office"), timeout=10,
                   message=lambda: f"not on the office board: {browser.current_url}")
        wait_until(lambda: browser.find_element(By.ID, "conn").text == "live", timeout=10,
                   message="the event stream did not connect")
        # Every room of the live config, none of them watched yet.
        assert {c.get_attribute("data-room") for c in browser.find_elements(By.CSS_SELECTOR, ".room-card")} == \
            {"1a", "5b", "reception"}
        assert {card(r).get_attribute("data-watched") for r in ("1a", "5b", "reception")} == {"false"}
        assert "No live receiver" in card("5b").text

        # m.khan's alerts client starts: 5b is watched, live.
        _publish(teacher, watch, {"state": "watching", "ts": protocol.now_ts(), "client": "classroom-alerts"})
        wait_until(lambda: card("5b").get_attribute("data-watched") == "true", timeout=10,
                   message="5b did not turn watched")
        assert "m.khan (classroom-alerts)" in card("5b").text and "unwatched" not in card("5b").get_attribute("class")

        # A press in 1a: on the board at once, with its seat, state, school time and a ticking age.
        alert_id = protocol.new_id()
        raised = _alert(alert_id, "raised", "1a", "1a-pi-01", "Carpet")
        _publish(device, protocol.topic(PREFIX, SITE, "1a", "1a-pi-01", "alert"), raised)
        item = wait_until(lambda: browser.find_elements(By.ID, f"office-alert-{alert_id}"), timeout=10,
                          message="the press did not appear on the board")[0]
        assert "Carpet" in item.text and "needs help" in item.text
        assert item.find_element(By.CSS_SELECTOR, ".alert-ts").text == _london(raised["ts"])
        assert "has-alerts" in card("1a").get_attribute("class") and card("1a").get_attribute("data-watched") == "false"
        first_age = item.find_element(By.CSS_SELECTOR, ".age").text
        assert first_age.endswith(" s")
        wait_until(lambda: item.find_element(By.CSS_SELECTOR, ".age").text != first_age, timeout=5,
                   message="the age does not tick")

        # Someone says they are coming.
        _publish(device, protocol.topic(PREFIX, SITE, "1a", "1a-pi-01", "alert"),
                 _alert(alert_id, "acknowledged", "1a", "1a-pi-01", "Carpet", by="m.khan"))
        wait_until(lambda: "m.khan is coming" in browser.find_element(By.ID, f"office-alert-{alert_id}").text,
                   timeout=10, message="who is coming did not show")

        # A device whose press was stamped in British summer time: shown in BST, not UTC.
        summer_id = protocol.new_id()
        summer = _alert(summer_id, "raised", "reception", "reception-pi-01", None, ts="2026-07-01T08:31:05.000Z")
        _publish(device, protocol.topic(PREFIX, SITE, "reception", "reception-pi-01", "alert"), summer)
        shown = wait_until(lambda: browser.find_elements(By.ID, f"office-alert-{summer_id}"), timeout=10)[0]
        assert shown.find_element(By.CSS_SELECTOR, ".alert-ts").text == "09:31:05 BST"

        # The teacher's client goes: 5b is marked again.
        _publish(teacher, watch, {"state": "gone", "ts": protocol.now_ts(), "client": "classroom-alerts"})
        wait_until(lambda: card("5b").get_attribute("data-watched") == "false", timeout=10,
                   message="5b did not turn unwatched")
        assert "No live receiver" in card("5b").text

        # Cleared: off the board.
        _publish(device, protocol.topic(PREFIX, SITE, "1a", "1a-pi-01", "alert"),
                 _alert(alert_id, "cleared", "1a", "1a-pi-01", "Carpet", by="m.khan"))
        wait_until(lambda: not browser.find_elements(By.ID, f"office-alert-{alert_id}"), timeout=10,
                   message="the cleared alert stayed on the board")
        # The board was never a receiver itself.
        assert collector.app.state.presence.receivers(SITE) == {}
    finally:
        browser.get("about:blank")  # close the event stream before the server stops
        close_client(device)
        close_client(teacher)
