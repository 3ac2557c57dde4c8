"""The teacher in control of the room, end to end: real mosquitto, the collector (ingest,
uvicorn, SQLite), the REAL agent runtime on 5b-pi-01 (headless desktop: its lock and
message presenter record what a pupil would see), and the room page in headless Chromium.

5b-pi-02 is not running, so every command shows one device that obeyed and one "not
reachable".  The timetable test logs in as a teacher who is only timetabled in 1a: the
press there reaches them and their "I'm coming" reaches the device in their name.  The
allow test runs the real filter (dnsmasq) inside the agent."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from agent import protocol
from server_fixtures import PASSWORD, REPO, SITE, add_staff, tree  # noqa: F401
from services import mqtt_client, require_binary, wait_until
from test_browser_e2e import _find, browser  # noqa: F401 - the Chromium fixture
from web_fixtures import CmdRecorder, collector  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PREFIX = protocol.DEFAULT_PREFIX
LONDON = ZoneInfo("Europe/London")


def agent_runtime(tmp_path, collector, device="5b-pi-01", components=None, **boot):
    from gpiozero.pins.mock import MockFactory

    from agent.config.schema import AgentBootstrap
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessScreen
    from agent.report.screen import Screen

    fields = dict(device=device, site=SITE, broker_url=f"mqtt://127.0.0.1:{collector.broker.port}",
                  collector_url=collector.url, credentials=str(tmp_path / "none.yaml"),
                  state_dir=str(tmp_path / "state"), control_socket=str(tmp_path / "control.sock"),
                  config_dir=str(REPO / "config"), screen_backend="headless",
                  # Never the machine-wide defaults (/etc/chromium, /var/cache): a test writes only its own folder.
                  chromium_policy_dir=str(tmp_path / "chromium" / "managed"),
                  chromium_native_hosts_dir=str(tmp_path / "chromium" / "native-messaging-hosts"),
                  blockpage_dir=str(tmp_path / "blockpage"), firefox_policy_dir=str(tmp_path / "firefox"))
    fields.update(boot)
    runtime = Runtime(AgentBootstrap(**fields), screen=Screen(HeadlessScreen()), pin_factory=MockFactory(),
                      control=False, components=components or [])
    runtime.start()
    wait_until(lambda: runtime.link is not None and runtime.link.connected.is_set(), timeout=15,
               message="the agent did not connect")
    return runtime


def log_in(browser, collector, username: str, landing: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(collector.url + "/login")
    _find(browser, "username").send_keys(username)
    _find(browser, "password").send_keys(PASSWORD)
    _find(browser, "login-submit").click()
    wait_until(lambda: browser.current_url.endswith(landing), timeout=10,
               message=lambda: f"not on {landing}: {browser.current_url}")
    wait_until(lambda: browser.find_element(By.ID, "conn").text == "live", timeout=10,
               message="the event stream did not connect")


def text_of(browser, selector: str) -> str:
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def wait_text(browser, selector: str, *words: str, timeout: float = 10.0) -> str:
    return wait_until(lambda: (lambda t: t if all(w in t for w in words) else None)(text_of(browser, selector)),
                      timeout=timeout, message=lambda: f"{selector} says {text_of(browser, selector)!r}, not {words}")


def test_eyes_on_me_per_device_lock_and_a_message_from_the_room_page(collector, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from agent.desktop.headless import HeadlessLock, NoIdle
    from agent.desktop.session import Session
    from agent.policy.lock import LockComponent
    from agent.policy.teacher_message import TeacherMessage

    backend = HeadlessLock()
    pupil = Session(id="c7", user="pupil5b", uid=1007, type="x11", display=":0", seat="seat0")
    runtime = agent_runtime(tmp_path, collector, components=[
        LockComponent(backend=backend, idle=NoIdle()), TeacherMessage(session=lambda: pupil)])
    presenter = runtime.desktop.presenter
    try:
        log_in(browser, collector, "m.khan", "/rooms/5b")
        assert not backend.calls or backend.calls[-1][0] == "lock" and backend.mode == "staff"  # maybe out of hours

        # Eyes on me, 1 minute, the teacher's words: the real device locks with them.
        browser.find_element(By.CSS_SELECTOR, "#eyes-form input[name=minutes][value='1']").click()
        box = browser.find_element(By.ID, "eyes-message")
        box.clear()
        box.send_keys("Eyes on me, Beech class")
        browser.find_element(By.ID, "eyes-on-me").click()
        wait_until(lambda: backend.is_locked and backend.message == "Eyes on me, Beech class", timeout=10,
                   message=lambda: f"the device did not lock: {backend.calls}")
        # The page shows who obeyed and who is not reachable (5b-pi-02 has no agent running).
        wait_text(browser, "#device-5b-pi-01 .answer", "✓ locked")
        wait_text(browser, "#device-5b-pi-01 .lock-state", "Locked (staff, m.khan) until")
        wait_text(browser, "#device-5b-pi-02 .answer", "not reachable")
        wait_text(browser, "#command-status", "Lock by m.khan", "1 obeyed", "1 not reachable")
        [command] = collector.store.room_commands(SITE, "5b", limit=1)
        assert command["by"] == "m.khan" and command["details"] == {"minutes": 1, "message": "Eyes on me, Beech class"}
        assert {d["device"]: d["result"] for d in command["devices"]} == {"5b-pi-01": "done", "5b-pi-02": None}
        lock_event = next(e for e in collector.store.events(type="lock", device="5b-pi-01") if e["data"]["by"] == "m.khan")
        assert lock_event["data"]["until"]

        # End it early: every screen unlocked.
        browser.find_element(By.ID, "eyes-end").click()
        wait_until(lambda: not backend.is_locked, timeout=10, message=lambda: f"still locked: {backend.calls}")
        wait_text(browser, "#device-5b-pi-01 .answer", "✓ unlocked")
        wait_text(browser, "#device-5b-pi-01 .lock-state", "Unlocked")

        # One device: its own Lock and Unlock buttons.
        browser.find_element(By.CSS_SELECTOR, "#device-5b-pi-01 button[data-device-action=lock]").click()
        wait_until(lambda: backend.is_locked, timeout=10)
        wait_text(browser, "#command-status", "Lock by m.khan", "1 obeyed")
        assert "not reachable" not in text_of(browser, "#command-status")  # 5b-pi-02 was not sent this one
        browser.find_element(By.CSS_SELECTOR, "#device-5b-pi-01 button[data-device-action=unlock]").click()
        wait_until(lambda: not backend.is_locked, timeout=10)
        wait_text(browser, "#device-5b-pi-01 .answer", "✓ unlocked")

        # A one-line message to every screen.
        browser.find_element(By.ID, "message-text").send_keys("Tidy up in two minutes")
        browser.find_element(By.ID, "message-send").click()
        wait_until(lambda: ("message", "c7", "Tidy up in two minutes") in presenter.shown, timeout=10)
        wait_text(browser, "#device-5b-pi-01 .answer", "✓ on screen")

        # Allow a site: this device runs no filter, and says so instead of leaving the teacher guessing.
        browser.find_element(By.ID, "allow-domain").send_keys("www.example.org")
        browser.find_element(By.ID, "allow-reason").send_keys("Science")
        browser.find_element(By.ID, "allow-submit").click()
        wait_text(browser, "#device-5b-pi-01 .answer", "this device cannot do that")
        wait_text(browser, "#command-status", "Allow a site by m.khan", "1 refused or could not")

        # Every command is on record, in the teacher's name.
        actions = [(a["action"], a["actor"]) for a in collector.store.list_audit(limit=100)
                   if a["action"].startswith("room.")]
        assert sorted(set(actions)) == [("room.allow", "m.khan"), ("room.lock", "m.khan"),
                                        ("room.message", "m.khan"), ("room.unlock", "m.khan")]
        assert len(actions) == 6

        # A page opened now starts from the last command and each device's lock.
        browser.get(collector.url + "/rooms/5b")
        wait_text(browser, "#device-5b-pi-01 .answer", "this device cannot do that")
        wait_text(browser, "#device-5b-pi-02 .answer", "not reachable")
        assert "Unlocked" in text_of(browser, "#device-5b-pi-01 .lock-state")
    finally:
        browser.get("about:blank")
        runtime.stop()


def test_a_timetabled_teacher_hears_the_press_in_their_lesson_and_answers_it(collector, browser):
    from selenium.webdriver.common.by import By

    add_staff(collector.store, "k.evans", "teacher")  # in no room's alert_staff
    local = datetime.now(timezone.utc).astimezone(LONDON)
    start = max(local.replace(hour=0, minute=0), local - timedelta(minutes=30))
    end = min(local.replace(hour=23, minute=59), local + timedelta(minutes=30))
    collector.store.replace_timetable(SITE, [{"day": local.weekday(), "start_time": f"{start:%H:%M}",
                                              "end_time": f"{end:%H:%M}", "room": "1a", "staff": "k.evans"}],
                                      by="test", source="t.csv", sha256="0" * 64)
    recorder = CmdRecorder(collector.broker, protocol.topic(PREFIX, SITE, "1a", "1a-pi-01", "cmd"))
    device = mqtt_client(collector.broker, client_id="1a-pi-01")
    try:
        log_in(browser, collector, "k.evans", "/rooms/1a")  # their one room now: straight to it
        alert_id = protocol.new_id()
        raised = {"id": alert_id, "state": "raised", "site": SITE, "room": "1a", "device": "1a-pi-01",
                  "seat": "Table 3", "ts": protocol.now_ts(), "by": "pupil"}
        device.publish(protocol.topic(PREFIX, SITE, "1a", "1a-pi-01", "alert"), protocol.encode(raised),
                       qos=1).wait_for_publish(5)
        item = wait_until(lambda: browser.find_elements(By.ID, f"alert-{alert_id}"), timeout=10,
                          message="the press did not reach the timetabled teacher")[0]
        item.find_element(By.CSS_SELECTOR, "button.ack").click()
        _topic, cmd, _ = recorder.wait_for(lambda m: m[1].get("cmd") == "ack")
        assert cmd == {"cmd": "ack", "alert_id": alert_id, "by": "k.evans"}
        # The lesson over (a new timetable without it): the room is no longer theirs.
        collector.store.replace_timetable(SITE, [], by="test", source="empty.csv", sha256="0" * 64)
        browser.get(collector.url + "/rooms/1a")
        wait_until(lambda: "Not found" in browser.page_source, timeout=10)
    finally:
        browser.get("about:blank")
        recorder.close()
        device.loop_stop()
        device.disconnect()


def test_allow_for_the_lesson_opens_the_site_on_the_real_filter(collector, tmp_path, dnsmasq_factory):
    require_binary("dnsmasq")
    import httpx

    from agent.filter import dnsclient
    from agent.filter.component import FilterComponent
    from filter_fixtures import STUB_RECORDS, filtering_for, world_readable_dir
    from services import free_port

    upstream = dnsmasq_factory(STUB_RECORDS)
    root = world_readable_dir("cs-room-allow-")
    comp = FilterComponent(filtering=filtering_for(), port=free_port(), filter_port=free_port(),
                           upstream_port=upstream.port, settle_seconds=0.2)
    runtime = agent_runtime(root, collector, components=[comp], dnsmasq_dir=str(root / "dnsmasq"),
                            chromium_policy_dir=str(root / "chromium" / "managed"),
                            firefox_policy_dir=str(root / "firefox" / "policies"), apply_nftables=False)
    try:
        wait_until(lambda: comp.spec is not None, 10)
        ask = lambda name: dnsclient.query(name, server="127.0.0.1", port=comp.port)  # noqa: E731
        assert ask("override-me.org") == ("NXDOMAIN", [])
        with httpx.Client(base_url=collector.url, timeout=10) as client:
            token = client.post("/api/v1/login", json={"username": "m.khan", "password": PASSWORD}).json()["token"]
            client.headers["Authorization"] = f"Bearer {token}"
            r = client.post("/api/v1/rooms/5b/allow", json={"domain": "override-me.org", "reason": "Science",
                                                            "minutes": 15, "devices": ["5b-pi-01"]})
            assert r.status_code == 200, r.text
            cmd_id = r.json()["id"]
            wait_until(lambda: ask("override-me.org") == ("NOERROR", ["192.0.2.77"]), 10,
                       message="the site did not open on the device")
            answers = wait_until(lambda: (lambda c: c if c["devices"][0]["result"] else None)(
                client.get("/api/v1/rooms/5b/commands").json()["commands"][0]), 10)
            assert answers["id"] == cmd_id and answers["devices"][0]["result"] == "done"
            # The device audits the change to its filter too, in the teacher's name.
            opened = wait_until(lambda: collector.store.events(type="override_opened", device="5b-pi-01"), 10)
            assert opened[0]["data"]["by"] == "m.khan" and opened[0]["data"]["reason"] == "Science"
            # A whole public suffix: refused on the device, and the teacher is told why.
            r = client.post("/api/v1/rooms/5b/allow", json={"domain": "co.uk", "reason": "x",
                                                            "devices": ["5b-pi-01"]})
            assert r.status_code == 200, r.text
            refused = wait_until(lambda: (lambda c: c if c["devices"][0]["result"] else None)(
                client.get("/api/v1/rooms/5b/commands").json()["commands"][0]), 10)
            assert refused["id"] == r.json()["id"] and refused["devices"][0]["result"] == "refused"
            assert "public suffix" in refused["devices"][0]["error"]
    finally:
        runtime.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_room_command_bench_runs_and_prints_its_summary_line():
    # The numbers are the bench's business (no timed assertions in tests); this keeps it runnable.
    import subprocess
    import sys

    require_binary("chromium")
    require_binary("mosquitto")
    r = subprocess.run([sys.executable, str(REPO / "bench" / "room_command.py"), "--devices", "3", "--rounds", "1",
                        "--warmup", "0"], capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("room_command devices=3 p50_ms=") and " p99_ms=" in last, last
