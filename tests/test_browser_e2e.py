"""End to end in headless Chromium: log in, a press appears live, "I'm coming" reaches the device.

Real everything: mosquitto, the collector (ingest + uvicorn + SQLite), Debian's chromium
driven by chromedriver through selenium.  The device is simulated on the broker exactly
as the agent speaks (agent.protocol): it publishes a ``raised`` alert and listens on its
own cmd topic.
"""

from __future__ import annotations

import tempfile
import shutil

import pytest

from agent import protocol
from server_fixtures import PASSWORD, SITE, tree  # noqa: F401
from services import mqtt_client, require_binary, skip_or_fail, wait_until
from web_fixtures import CmdRecorder, collector  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PREFIX = protocol.DEFAULT_PREFIX
DEVICE = "5b-pi-01"


@pytest.fixture
def browser():
    chromium = require_binary("chromium")
    chromedriver = require_binary("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # the test extra brings it; in CI a missing driver is a failure
        skip_or_fail("selenium is not installed (pip install -e '.[test]')")

    profile = tempfile.mkdtemp(prefix="chromium-e2e-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=412,915",  # a phone-sized window
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _find(driver, element_id: str, timeout: float = 10.0):
    """The element once it is in the DOM (the machine may be busy; never a fixed sleep)."""
    from selenium.webdriver.common.by import By

    return wait_until(lambda: driver.find_elements(By.ID, element_id), timeout=timeout,
                      message=lambda: f"#{element_id} not on {driver.current_url}: {driver.page_source[:500]}")[0]


def _alert(alert_id: str, state: str, by: str | None = None) -> dict:
    return {"id": alert_id, "state": state, "site": SITE, "room": "5b", "device": DEVICE, "seat": "Table 1",
            "ts": protocol.now_ts(), "by": by}


def test_press_appears_live_and_ack_reaches_device(collector, browser):
    from selenium.webdriver.common.by import By

    device_cmd = protocol.topic(PREFIX, SITE, "5b", DEVICE, "cmd")
    recorder = CmdRecorder(collector.broker, device_cmd)
    device = mqtt_client(collector.broker, client_id=DEVICE)
    try:
        # Log in through the form, as the 5b teacher.
        browser.get(collector.url + "/rooms/5b")
        wait_until(lambda: "/login" in browser.current_url, timeout=10)
        _find(browser, "username").send_keys("m.khan")
        _find(browser, "password").send_keys(PASSWORD)
        _find(browser, "login-submit").click()
        wait_until(lambda: browser.current_url.endswith("/rooms/5b"), timeout=10,
                   message=lambda: f"not on the room view: {browser.current_url}")
        # The page is phone-friendly and the live stream is connected before the press.
        assert browser.find_element(By.CSS_SELECTOR, 'meta[name="viewport"]') is not None
        wait_until(lambda: browser.find_element(By.ID, "conn").text == "live", timeout=10,
                   message="the event stream did not connect")
        assert browser.find_elements(By.CSS_SELECTOR, "#alerts li") == []
        # Sound on (one tap, as browsers require): WebAudio plays a test beep.
        _find(browser, "sound-toggle").click()
        wait_until(lambda: browser.find_element(By.ID, "sound-toggle").text == "Sound is on", timeout=5)
        wait_until(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-beeps") == "1", timeout=5)

        # A pupil presses the button on 5b-pi-01: the agent publishes a raised alert.
        alert_id = protocol.new_id()
        raised = _alert(alert_id, "raised")
        protocol.validate("alert", raised)
        device.publish(protocol.topic(PREFIX, SITE, "5b", DEVICE, "alert"), protocol.encode(raised), qos=1).wait_for_publish(5)

        item = wait_until(lambda: browser.find_elements(By.ID, f"alert-{alert_id}"), timeout=10,
                          message="the alert did not appear on the page")[0]
        assert "Table 1" in item.text
        assert "needs help" in item.text
        # ...and the alert beeped.
        wait_until(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-beeps") == "2", timeout=5)

        # "I'm coming" -> the collector publishes ack on the device's own cmd topic.
        item.find_element(By.CSS_SELECTOR, "button.ack").click()
        topic, cmd, retained = recorder.wait_for(lambda m: m[1].get("cmd") == "ack")
        assert topic == device_cmd
        assert cmd == {"cmd": "ack", "alert_id": alert_id, "by": "m.khan"}
        assert retained is False
        protocol.validate("cmd", cmd)

        # The agent confirms; the page follows the device's state.
        acked = _alert(alert_id, "acknowledged", by="m.khan")
        device.publish(protocol.topic(PREFIX, SITE, "5b", DEVICE, "alert"), protocol.encode(acked), qos=1).wait_for_publish(5)
        wait_until(lambda: "someone is coming" in browser.find_element(By.ID, f"alert-{alert_id}").text, timeout=10)

        # "Clear" reaches the device too; when the device reports cleared the alert goes away.
        browser.find_element(By.CSS_SELECTOR, f"#alert-{alert_id} button.clear").click()
        recorder.wait_for(lambda m: m[1].get("cmd") == "clear" and m[1].get("alert_id") == alert_id)
        cleared = _alert(alert_id, "cleared", by="m.khan")
        device.publish(protocol.topic(PREFIX, SITE, "5b", DEVICE, "alert"), protocol.encode(cleared), qos=1).wait_for_publish(5)
        wait_until(lambda: not browser.find_elements(By.ID, f"alert-{alert_id}"), timeout=10,
                   message="the cleared alert stayed on the page")

        # Every step is on record for the DSL.
        actions = {r["action"] for r in collector.store.list_audit(limit=50)}
        assert {"login", "alert.ack", "alert.clear"} <= actions
    finally:
        browser.get("about:blank")  # close the event stream before the server stops
        recorder.close()
        device.loop_stop()
        device.disconnect()


def test_real_agent_press_shows_live_and_teacher_buttons_reach_it(collector, browser, tmp_path):
    """The same loop with the REAL agent runtime on 5b-pi-01 (GPIO via gpiozero's MockFactory)."""
    from gpiozero.pins.mock import MockFactory
    from selenium.webdriver.common.by import By

    from agent.config.schema import AgentBootstrap
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessScreen
    from agent.report.screen import Screen
    from server_fixtures import REPO

    boot = AgentBootstrap(device=DEVICE, site=SITE, broker_url=f"mqtt://127.0.0.1:{collector.broker.port}",
                          collector_url=collector.url, credentials=str(tmp_path / "none.yaml"),
                          state_dir=str(tmp_path / "state"), control_socket=str(tmp_path / "control.sock"),
                          config_dir=str(REPO / "config"), screen_backend="headless")
    factory = MockFactory()
    screen = Screen(HeadlessScreen())
    runtime = Runtime(boot, screen=screen, pin_factory=factory, control=False).start()
    recorder = CmdRecorder(collector.broker, protocol.topic(PREFIX, SITE, "5b", DEVICE, "cmd"))
    try:
        wait_until(lambda: runtime.link is not None and runtime.link.connected.is_set(), timeout=15)
        browser.get(collector.url + "/login")
        _find(browser, "username").send_keys("m.khan")
        _find(browser, "password").send_keys(PASSWORD)
        _find(browser, "login-form").submit()
        wait_until(lambda: browser.current_url.endswith("/rooms/5b"), timeout=10)
        wait_until(lambda: browser.find_element(By.ID, "conn").text == "live", timeout=10)

        factory.pin(17).drive_low()  # the pupil presses the button
        assert screen.is_blank  # blank first, before any network
        alert_id = wait_until(lambda: runtime.report.alert and runtime.report.alert["id"], timeout=10)
        item = wait_until(lambda: browser.find_elements(By.ID, f"alert-{alert_id}"), timeout=10,
                          message="the press did not appear on the page")[0]
        assert "Table 1" in item.text

        item.find_element(By.CSS_SELECTOR, "button.ack").click()
        _topic, cmd, _ = recorder.wait_for(lambda m: m[1].get("cmd") == "ack")
        assert cmd == {"cmd": "ack", "alert_id": alert_id, "by": "m.khan"}
        # The agent acted on it: the pupil's screen says help is coming, the page shows it.
        wait_until(lambda: screen.message == runtime.report._message("report_acknowledged"), timeout=10)
        wait_until(lambda: "someone is coming" in browser.find_element(By.ID, f"alert-{alert_id}").text, timeout=10)

        browser.find_element(By.CSS_SELECTOR, f"#alert-{alert_id} button.clear").click()
        wait_until(lambda: not screen.is_blank, timeout=10, message="the device screen was not cleared")
        wait_until(lambda: not browser.find_elements(By.ID, f"alert-{alert_id}"), timeout=10)
        states = {r["state"] for r in collector.store.query(
            "SELECT state FROM alert_transitions WHERE alert_id = ?", (alert_id,))}
        assert states == {"raised", "acknowledged", "cleared"}
    finally:
        browser.get("about:blank")
        recorder.close()
        runtime.stop()


def test_dashboard_latency_bench_runs_and_prints_its_summary_line():
    # The numbers are the bench's business (no timed assertions in tests); this keeps it runnable.
    import subprocess
    import sys

    from server_fixtures import REPO

    require_binary("chromium")
    require_binary("mosquitto")
    r = subprocess.run([sys.executable, str(REPO / "bench" / "dashboard_latency.py"), "--presses", "3"],
                       capture_output=True, text=True, timeout=80)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("dashboard_latency presses=3 p50_ms=") and "target_p99_ms=100" in last


def test_technician_rollout_page_follows_devices_without_a_reload(collector, browser):
    """Publish, then a device reports config_applied: the open rollout page updates by itself."""
    from selenium.webdriver.common.by import By

    from agent.config import load_tree
    from server.rollout import read_files
    from server_fixtures import REPO, make_event

    version = collector.app.state.rollouts.publish(read_files(REPO / "config"), "tech", "start of term").version
    assert version == load_tree(REPO / "config").version
    browser.get(collector.url + "/rollout")
    _find(browser, "username").send_keys("tech")
    _find(browser, "password").send_keys(PASSWORD)
    _find(browser, "login-submit").click()
    wait_until(lambda: browser.current_url.endswith("/rollout"), timeout=10)
    cell = 'tr[data-device="5b-pi-01"] .state'
    assert browser.find_element(By.CSS_SELECTOR, cell).text == "pending"
    assert _find(browser, "live-version").text == version
    collector.store.insert_events([make_event(type="config_applied", version=version)])
    wait_until(lambda: browser.find_element(By.CSS_SELECTOR, cell).text == "current", timeout=15,
               message="the rollout table did not update")
    assert browser.find_element(By.CSS_SELECTOR, 'tr[data-device="5b-pi-01"] .running').text == version
    browser.get("about:blank")
