"""Render the project's OWN pages and screens for the docs (docs/images/*.png).

This script renders only classroom-safety's own pages and windows, filled with demo data,
on throw-away displays it starts itself: never a pupil's screen, never anyone's desktop.
It lives under tests/ because the project's safeguarding rule keeps any code that takes a
picture of a display out of the product (agent/ and server/ never capture imagery).

* ``room-page.png``: the teacher's room page (server/web) on a demo collector, logged in
  as the demo teacher, with one open alert and one pupil's "Ask my teacher" request,
  taken by headless Chromium through chromedriver;
* ``block-page.png``: the block page (agent/filter/extension) as the pupil sees it,
  force-installed by the agent's own policy into headless Chromium, captured with the
  DevTools protocol;
* ``report-screen.png`` and ``screen-button.png``: the report blank and the on-screen
  button (agent/desktop/programs) on a headless sway desktop of their own, captured with
  ``grim``.

Usage (as root, with the test dependencies installed):
``.venv/bin/python tests/make_doc_images.py [OUT_DIR]`` (default docs/images).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from services import free_port, spawn, terminate, wait_until  # noqa: E402

# Not --disable-background-networking: it also stops Chromium fetching force-installed extensions.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                  "--hide-scrollbars")


def room_page(out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from agent import protocol
    from agent.config import load_tree
    from server.http.app import Settings, create_app
    from server.store import Store
    from server_fixtures import PASSWORD, add_staff
    from web_fixtures import LiveServer

    work = Path(tempfile.mkdtemp(prefix="doc-room-"))
    store = Store.open(f"sqlite:///{work}/server.db")
    add_staff(store, "m.khan", "teacher")
    tree = load_tree(REPO / "config")
    prefix = protocol.DEFAULT_PREFIX
    now = protocol.now_ts()

    def where(device, kind):
        return protocol.parse_topic(protocol.topic(prefix, "penny-acres", "5b", device, kind), prefix)

    items = [
        (where("5b-pi-01", "status"), {"state": "online", "ts": now, "agent_version": "0.1.0", "config_version": "x"}),
        (where("5b-pi-02", "status"), {"state": "online", "ts": now, "agent_version": "0.1.0", "config_version": "x"}),
        (where("5b-pi-02", "alert"), {"id": protocol.new_id(), "state": "raised", "site": "penny-acres", "room": "5b",
                                      "device": "5b-pi-02", "seat": "Table 2", "ts": now, "by": "pupil",
                                      "presses": 1, "source": "screen"}),
        (where("5b-pi-01", "event"), {"id": protocol.new_id(), "type": "unblock_request", "ts": now,
                                      "site": "penny-acres", "room": "5b", "device": "5b-pi-01",
                                      "domain": "volcano-facts.example", "seat": "Table 1", "user": "pupil.5b.07",
                                      "device_name": "Table 1", "profile": "ks2"}),
    ]
    store.ingest(items)
    app = create_app(Settings(db_url="unused", cookie_secure=False), store=store, tree=tree)
    server = LiveServer(app).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*CHROMIUM_FLAGS, "--window-size=900,1700", f"--user-data-dir={work / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        driver.get(server.url + "/rooms/5b")
        wait_until(lambda: driver.find_elements(By.ID, "username"), timeout=20)
        driver.find_element(By.ID, "username").send_keys("m.khan")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-submit").click()
        wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#asks li"), timeout=20,
                   message="the request never showed on the room page")
        wait_until(lambda: "live" in (driver.find_element(By.ID, "conn").text or ""), timeout=20)
        driver.save_screenshot(str(out / "room-page.png"))
    finally:
        driver.quit()
        server.stop()
        store.close()
        shutil.rmtree(work, ignore_errors=True)


def block_page(out: Path) -> None:
    import urllib.request

    import websocket

    from agent.config import effective_policy, load_tree
    from agent.filter import browser
    from agent.filter.blockpage import BlockPage
    from datetime import datetime, timezone

    work = Path(tempfile.mkdtemp(prefix="doc-block-"))
    work.chmod(0o755)
    managed = Path("/etc/chromium/policies/managed")
    created = [p for p in (managed.parent, managed) if not p.exists()]
    managed.mkdir(parents=True, exist_ok=True)
    ours = managed / "classroom-safety-doc-images.json"
    page = BlockPage(work / "state", work / "blockpage", None, "/nonexistent")
    assert page.prepare(), page.error
    policy = effective_policy(load_tree(REPO / "config"), "1a-pi-01", datetime(2026, 11, 23, 10, tzinfo=timezone.utc))
    data = browser.chromium_policy(policy, extension=page.policy(policy.messages, "en", volume=0, sound=False),
                                   extension_urls=page.allow_url())
    data.update(DeveloperToolsAvailability=1, RemoteDebuggingAllowed=True)  # to drive it; pupils never get these
    browser.write_outside(ours, json.dumps(data))
    port = free_port()
    proc = spawn([shutil.which("chromium"), *CHROMIUM_FLAGS, "--window-size=1000,700", f"--user-data-dir={work / 'p'}",
                  f"--remote-debugging-port={port}", "--remote-allow-origins=*", "about:blank"],
                 log_path=work / "chromium.log")
    try:
        def targets():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                return json.load(r)
        ours_prefix = f"chrome-extension://{page.id}/"
        wait_until(lambda: any(t["url"].startswith(ours_prefix) for t in targets()), timeout=60,
                   message=lambda: "the extension was not installed: " + (work / "chromium.log").read_text()[-800:])
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/json/new?{ours_prefix}blocked.html%23tiktok.com", method="PUT"), timeout=5)
        target = wait_until(lambda: next((t for t in targets() if t["url"].startswith(ours_prefix + "blocked")), None),
                            timeout=20)
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], suppress_origin=True, timeout=20)
        counter = iter(range(1, 1000))

        def call(method, **params):
            n = next(counter)
            ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                answer = json.loads(ws.recv())
                if answer.get("id") == n:
                    return answer.get("result", {})
        wait_until(lambda: call("Runtime.evaluate", expression="document.getElementById('message').textContent",
                                returnByValue=True)["result"]["value"] == policy.messages["blocked"], timeout=20)
        time.sleep(0.5)  # the picture's first paint (a rendering settle, not a synchronisation)
        shot = call("Page.captureScreenshot", format="png")
        (out / "block-page.png").write_bytes(base64.b64decode(shot["data"]))
        ws.close()
    finally:
        terminate(proc)
        ours.unlink(missing_ok=True)
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)


def desktop(out: Path) -> None:
    from agent.config.words import BUILTIN
    from agent.desktop.base import Words
    from agent.desktop.button import WaylandButton
    from agent.desktop.wayland import WaylandBackend
    from wayland_fixtures import headless_sway, wayland_socket

    work = Path(tempfile.mkdtemp(prefix="doc-desktop-"))
    with headless_sway(work / "sway.log") as session:
        socket = wayland_socket(session)

        def grab(name: str) -> None:
            shot = socket.parent / name
            subprocess.run(["runuser", "-u", session.user, "--", "env", "-i", "PATH=/usr/bin:/bin",
                            f"XDG_RUNTIME_DIR={socket.parent}", f"WAYLAND_DISPLAY={socket.name}", "grim", str(shot)],
                           check=True, timeout=30)
            shutil.copy(shot, out / name)

        button = WaylandButton(session_fn=lambda: session)
        button.enable(Words(BUILTIN["en"]["screen_button"], "screen_button"), 600)
        wait_until(lambda: (button.drawn() or {}).get("shown"), timeout=30)
        time.sleep(0.5)  # first paint
        grab("screen-button.png")
        button.close()
        blank = WaylandBackend(session.user, None)
        blank.show(Words(BUILTIN["en"]["report_raised"], "report_raised"))
        wait_until(lambda: (blank.drawn() or {}).get("shown"), timeout=30)
        time.sleep(0.5)
        grab("report-screen.png")
        blank.hide()
        blank.close()
    shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    for make in (room_page, block_page, desktop):
        make(out)
        print("made", make.__name__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
