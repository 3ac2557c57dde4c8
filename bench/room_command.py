#!/usr/bin/env python3
"""Teacher clicks "Eyes on me" in the browser -> every device of a 30-device room locked
(DESIGN.md "Performance targets": p99 <= 500 ms).

One run, everything real and on loopback: mosquitto on a free port; the collector (the API
that sends the room command, ingest, SQLite, the live stream; uvicorn in this process);
``--devices`` real agent runtimes (agent/core/runtime.py with the lock component on the
headless desktop, each in its own process as each Pi is its own machine) in a room
"bench" added to a copy of the example config; headless Chromium (Debian's chromium +
chromedriver via selenium) logged in as the room's teacher on the room page.

Each round the bench clicks **Eyes on me** (1 minute) and waits for every device's
``lock`` event, then clicks **End** and waits for every ``unlock``.  A listener on the
button (capture phase, so before the page's own handler) stamps the click with the page's
clock (``performance.timeOrigin + performance.now()``); each device stamps its ``lock``
event (``ts``) when its lock backend has locked.  Both are this machine's wall clock
(milliseconds).  Also printed: how long until the page itself shows every device obeyed.

Last line: ``room_command devices=30 p50_ms=... p99_ms=...``

    .venv/bin/python bench/room_command.py [--devices 30] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, free_port, percentile, wait_for  # noqa: E402 - also puts the repo on sys.path

PASSWORD = "bench teacher password"
SITE = "penny-acres"
ROOM = "bench"
STAMP = """
window.__clicks = [];
document.getElementById("eyes-on-me").addEventListener("click", function () {
  window.__clicks.push(performance.timeOrigin + performance.now());
}, true);
"""


def device_ids(count: int) -> list[str]:
    return [f"bench-pi-{i:02d}" for i in range(1, count + 1)]


def write_config(tmp: Path, count: int) -> Path:
    """The example tree plus room "bench" with *count* devices, the teacher in its alert_staff."""
    config = tmp / "config"
    shutil.copytree(ROOT / "config", config)
    lines = [f"room: {ROOM}", "name: Bench room", "key_stage: ks2", "alert_staff: [m.khan]", "devices:"]
    for i, device in enumerate(device_ids(count), 1):
        lines += [f"  - id: {device}", f"    seat: Table {i}", "    hardware: {button_pin: 17}"]
    (config / "rooms" / f"{ROOM}.yaml").write_text("\n".join(lines) + "\n")
    return config


# --------------------------------------------------------------------------- a device


def device_main(args) -> int:
    """One device's process: the real runtime, its lock on the headless desktop, until SIGTERM."""
    from gpiozero.pins.mock import MockFactory

    from agent.config.schema import AgentBootstrap
    from agent.core.heap import freeze_startup
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessLock, HeadlessScreen, NoIdle
    from agent.policy.lock import LockComponent
    from agent.report.screen import Screen
    from agent.signals import StopSignals

    tmp = Path(args.tmp)
    state = tmp / "state" / args.device
    boot = AgentBootstrap(device=args.device, site=SITE, broker_url=f"mqtt://127.0.0.1:{args.port}",
                          collector_url="http://127.0.0.1:9", credentials=str(tmp / "no-credentials.yaml"),
                          state_dir=str(state), control_socket=str(state / "control.sock"),
                          config_dir=str(tmp / "config"), screen_backend="headless")
    stop = StopSignals()
    runtime = Runtime(boot, screen=Screen(HeadlessScreen()), pin_factory=MockFactory(), control=False,
                      components=[LockComponent(backend=HeadlessLock(), idle=NoIdle())]).start()
    freeze_startup()  # as `classroom-agent run` does after start-up
    try:
        stop.wait()
    finally:
        runtime.stop()
    return 0


# --------------------------------------------------------------------------- the bench


class LockEvents:
    """Every device's lock/unlock events as the broker delivers them (a bench subscriber)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.events: list[dict] = []
        self.online: set[str] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="bench-watcher",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(f"classroom/v1/{SITE}/{ROOM}/+/event", 1), (f"classroom/v1/{SITE}/{ROOM}/+/status", 1)])
        wait_for(done.is_set, 10, "the bench's own subscription")

    def _on_message(self, client, userdata, msg) -> None:
        data = json.loads(msg.payload)
        with self._lock:
            if msg.topic.endswith("/status"):
                device = msg.topic.split("/")[-2]
                (self.online.add if data.get("state") == "online" else self.online.discard)(device)
            elif data.get("type") in ("lock", "unlock"):
                self.events.append(data)

    def since(self, kind: str, after_ms: float) -> dict[str, float]:
        """{device: ms} of the first *kind* event by the teacher at or after *after_ms* (epoch ms)."""
        from agent.protocol import parse_ts

        out: dict[str, float] = {}
        with self._lock:
            items = list(self.events)
        for event in items:
            if event["type"] != kind or event.get("by") != "m.khan":
                continue
            at = parse_ts(event["ts"]).timestamp() * 1000
            # Device ts has whole milliseconds; the click has fractions: 1 ms of slack.
            if at >= after_ms - 1 and event["device"] not in out:
                out[event["device"]] = at
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="rounds not counted (JIT, connections)")
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device:
        return device_main(args)

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from agent.config import load_tree
    from server.http.app import Settings, create_app
    from server.http.auth import hash_password
    from server.ingest import Ingest
    from server.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="room-command-bench-"))
    config = write_config(tmp, args.devices)
    port = free_port()
    (tmp / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                        "set_tcp_nodelay true\nmax_queued_messages 100000\n"
                                        + ("user root\n" if os.geteuid() == 0 else ""))
    mosquitto = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp / "mosquitto.conf")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    devices: list[subprocess.Popen] = []
    driver = ingest = server = store = watcher = None
    try:
        wait_for(lambda: _port_open(port), 10, "mosquitto")
        tree = load_tree(config)
        store = Store.open(f"sqlite:///{tmp}/server.db")
        store.add_user("m.khan", "teacher", hash_password(PASSWORD))
        ingest = Ingest(store, f"mqtt://127.0.0.1:{port}")
        app = create_app(Settings(db_url="unused", cookie_secure=False), store=store, tree=tree,
                         publisher=lambda t, p, q: ingest.publish(t, p, q), ingest=ingest)
        ingest.listeners.append(lambda kind, where, data: [f(kind, where, data) for f in app.state.listeners])
        ingest.start()
        wait_for(ingest.subscribed.is_set, 10, "ingest to subscribe")
        http_port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=http_port, log_level="warning",
                                               timeout_graceful_shutdown=1))
        threading.Thread(target=server.run, daemon=True).start()
        wait_for(lambda: server.started, 15, "uvicorn")

        watcher = LockEvents(port)
        me = [sys.executable, str(Path(__file__).resolve())]
        for device in device_ids(args.devices):
            devices.append(subprocess.Popen([*me, "--device", device, "--port", str(port), "--tmp", str(tmp)],
                                            stdout=subprocess.DEVNULL, stderr=open(tmp / f"{device}.log", "w")))
        wait_for(lambda: len(watcher.online) == args.devices, 120, f"{args.devices} devices online")

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                                  options=options)
        driver.get(f"http://127.0.0.1:{http_port}/login?next=/rooms/{ROOM}")
        driver.find_element(By.ID, "username").send_keys("m.khan")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-submit").click()
        wait_for(lambda: driver.current_url.endswith(f"/rooms/{ROOM}"), 30, "the room page")
        # find_elements, not find_element: on a busy machine the new page may not be there yet.
        wait_for(lambda: any(e.text == "live" for e in driver.find_elements(By.ID, "conn")), 30, "the event stream")
        driver.execute_script(STAMP)

        latencies: list[float] = []
        page: list[float] = []
        everyone = f"{args.devices} obeyed"
        for i in range(args.warmup + args.rounds):
            driver.find_element(By.ID, "eyes-on-me").click()
            clicked = wait_for(lambda: driver.execute_script("return window.__clicks[arguments[0]]", i), 10,
                               "the click's stamp")
            locked = wait_for(lambda: (lambda got: got if len(got) == args.devices else None)(
                watcher.since("lock", clicked)), 20, f"round {i}: every device locked")
            shown = wait_for(lambda: everyone in driver.find_element(By.ID, "command-status").text and time.time(),
                             20, f"round {i}: the page showing every device obeyed")
            if i >= args.warmup:
                latencies.extend(at - clicked for at in locked.values())
                page.append(shown * 1000 - clicked)
            ended = time.time() * 1000
            driver.find_element(By.ID, "eyes-end").click()
            wait_for(lambda: len(watcher.since("unlock", ended)) == args.devices, 20, f"round {i}: every device unlocked")
            wait_for(lambda: everyone in driver.find_element(By.ID, "command-status").text
                     and "Unlock" in driver.find_element(By.ID, "command-status").text, 20, f"round {i}: the page")
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(f"Eyes on me -> {args.devices} devices locked, {args.rounds} rounds ({len(latencies)} locks): "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms (target p99 <= 500 ms)")
        print(f"click -> the page shows all {args.devices} obeyed: p50 {percentile(page, 50):.1f} ms, "
              f"max {max(page):.1f} ms")
        print(f"room_command devices={args.devices} p50_ms={p50:.1f} p99_ms={p99:.1f}")
        return 0
    finally:
        if driver is not None:
            driver.get("about:blank")
            driver.quit()
        for proc in devices:
            proc.terminate()
        for proc in devices:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if watcher is not None:
            watcher.close()
        if server is not None:
            server.should_exit = True
        if ingest is not None:
            ingest.stop()
        if store is not None:
            store.close()
        mosquitto.terminate()
        mosquitto.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
