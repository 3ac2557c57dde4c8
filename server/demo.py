"""``classroom-server demo``: the whole product on one machine, with real processes.

It starts Mosquitto (with generated passwords and ACL), the collector on SQLite,
simulated classroom devices (mock GPIO pin, headless screen) and a teacher's alert
client, then walks through a press: blank, alert, "I'm coming", clear, and the DSL's
incident timeline.  Every step drives the same commands a school would run, so the demo
doubles as a smoke test of the install (tests/test_demo.py runs it).
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from agent.config import load_tree
from agent.protocol import parse_ts
from agent.errors import UserError

from .starter import copy_tree, starter_tree

BIN = Path(sys.executable).parent
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"
STAFF = {"m.khan": "teacher", "s.patel": "dsl", "tech": "technician", "admin": "admin"}
DEMO_PASSWORD = "demo-password"  # printed for the demo's own throw-away accounts only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - not ready yet
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise UserError(f"demo: timed out waiting for {what}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise UserError("mosquitto is not installed (run ./scripts/setup.sh)")


class Demo:
    def __init__(self, workdir: Path, rooms: list[str], say=print):
        self.dir = workdir
        self.rooms = rooms
        self.say = say
        self.procs: list[subprocess.Popen] = []
        self.mqtt_port = _free_port()
        self.http_port = _free_port()

    # ---------------------------------------------------------------- plumbing
    def spawn(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        log = open(self.dir / "logs" / f"{name}.log", "ab")
        kw.setdefault("stdout", log)
        proc = subprocess.Popen(argv, stderr=log, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], *, stdin: str | None = None) -> str:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise UserError(f"demo: {' '.join(Path(a).name if i == 0 else a for i, a in enumerate(argv))} failed: "
                            f"{result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    # ---------------------------------------------------------------- steps
    def prepare(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "logs").mkdir(parents=True)
        source = REPO_CONFIG if (REPO_CONFIG / "site.yaml").exists() else starter_tree()
        copy_tree(source, self.dir / "config", ignore=("agent.example.yaml",))
        site_file = self.dir / "config" / "site.yaml"
        site = yaml.safe_load(site_file.read_text())
        site["broker"]["url"] = f"mqtt://127.0.0.1:{self.mqtt_port}"
        site["collector"]["url"] = f"http://127.0.0.1:{self.http_port}"
        site_file.write_text(yaml.safe_dump(site, sort_keys=False))
        self.tree = load_tree(self.dir / "config")
        self.say(f"config   {len(self.tree.rooms)} rooms, {len(self.tree.device_ids())} devices, "
                 f"version {self.tree.version} (classroom-server config validate: ok)")

    def start_broker(self) -> None:
        users = self.dir / "users.yaml"
        # Broker accounts for the staff who get alerts; dashboard-only staff need none.
        on_broker = {s for r in self.tree.rooms.values() for s in r.alert_staff} | \
                    {c.staff for c in self.tree.site.escalation.contacts if c.staff}
        users.write_text(yaml.safe_dump({name: DEMO_PASSWORD for name in STAFF if name in on_broker}))
        self.run([str(BIN / "classroom-server"), "broker-config", "--config", str(self.dir / "config"),
                  "--out", str(self.dir / "broker"), "--users", str(users), "--port", str(self.mqtt_port),
                  "--bind", "127.0.0.1", "--log-file", str(self.dir / "logs" / "mosquitto.log"),
                  # Run as whoever runs the demo, so mosquitto can read the files it just got.
                  "--run-as", pwd.getpwuid(os.getuid()).pw_name])
        self.spawn("mosquitto-stdout", [_mosquitto(), "-c", str(self.dir / "broker" / "mosquitto.conf")])
        _wait(lambda: _port_open(self.mqtt_port), 15, "mosquitto")
        self.say(f"broker   mosquitto on 127.0.0.1:{self.mqtt_port} (passwords + ACL from the room files)")

    def start_server(self) -> None:
        db = f"sqlite:///{self.dir / 'server.db'}"
        for name, role in STAFF.items():
            self.run([str(BIN / "classroom-server"), "user", "add", name, "--role", role, "--db", db],
                     stdin=DEMO_PASSWORD + "\n")
        self.spawn("classroom-server", [
            str(BIN / "classroom-server"), "serve", "--config", str(self.dir / "config"), "--db", db,
            "--broker", f"mqtt://127.0.0.1:{self.mqtt_port}", "--port", str(self.http_port), "--plain-http",
            "--mqtt-password-file", str(self.dir / "broker" / "credentials" / "classroom-server.yaml"),
            "--reports-dir", str(self.dir / "reports")])
        import requests

        _wait(lambda: requests.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1).ok, 30, "the collector")
        self.say(f"server   classroom-server on http://127.0.0.1:{self.http_port} (SQLite {self.dir / 'server.db'})")

    def agent_file(self, device: str) -> Path:
        return self.dir / "agents" / device / "agent.yaml"

    def start_agents(self) -> None:
        devices = [d.id for room in self.rooms for d in self.tree.rooms[room].devices]
        for device in devices:
            home = self.dir / "agents" / device
            home.mkdir(parents=True)
            self.agent_file(device).write_text(yaml.safe_dump({
                "device": device, "site": self.tree.site.site,
                "broker_url": f"mqtt://127.0.0.1:{self.mqtt_port}",
                "collector_url": f"http://127.0.0.1:{self.http_port}",
                "credentials": str(self.dir / "broker" / "credentials" / f"{device}.yaml"),
                "state_dir": str(home / "state"), "control_socket": str(home / "control.sock"),
                "config_dir": str(self.dir / "config"), "pin_factory": "mock", "screen_backend": "headless",
            }, sort_keys=False))
            self.spawn(f"agent-{device}", [str(BIN / "classroom-agent"), "run", "--config",
                                            str(self.agent_file(device)), "--simulate"])
        for device in devices:
            _wait(lambda: self.status(device).get("connected"), 30, f"{device} to connect")
        self.say(f"devices  {len(devices)} simulated agents online (mock GPIO button, headless screen): "
                 f"{', '.join(devices)}")
        self.devices = devices

    def status(self, device: str) -> dict:
        out = self.run([str(BIN / "classroom-agent"), "status", "--config", str(self.agent_file(device))])
        return json.loads(out)

    def alerts_argv(self, room: str, teacher: str) -> list[str]:
        return [str(BIN / "classroom-alerts"), "--site", self.tree.site.site, "--room", room, "--broker", f"mqtt://127.0.0.1:{self.mqtt_port}",
                "--username", teacher, "--password-file", str(self.dir / "broker" / "credentials" / f"{teacher}.yaml"),
                "--no-notify"]

    def walk_through(self) -> dict:
        room = self.rooms[0]
        device = self.tree.rooms[room].devices[0]
        teacher = self.tree.rooms[room].alert_staff[0]
        watcher = self.spawn("teacher", self.alerts_argv(room, teacher) + ["--json"], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
        self._next_line(watcher, lambda d: d.get("event") == "ready", "the teacher client to subscribe")

        self.say(f"\n1. A pupil at '{device.seat}' ({device.id}) presses the 'I saw something' button.")
        self.run([str(BIN / "classroom-agent"), "press", "--config", str(self.agent_file(device.id))])
        screen = self.status(device.id)["screen"]
        self.say(f"   screen blank: {screen['blank']}; it says: \"{screen['message']}\"")

        alert = self._next_alert(watcher, "raised")
        delay_ms = (alert["_arrived"] - parse_ts(alert["ts"])).total_seconds() * 1000
        self.say(f"2. {teacher}'s alert client shows: {alert['state'].upper()} in room {alert['room']}, "
                 f"seat '{alert['seat']}' (on screen {delay_ms:.0f} ms after the agent raised it)")

        self.run(self.alerts_argv(room, teacher) + ["--ack", alert["id"], "--device", device.id])
        _wait(lambda: self.status(device.id)["alert"]["state"] == "acknowledged", 10, "the acknowledgement")
        self.say(f"3. {teacher} taps \"I'm coming\"; the pupil now sees: "
                 f"\"{self.status(device.id)['screen']['message']}\"")

        self.run(self.alerts_argv(room, teacher) + ["--clear", alert["id"], "--device", device.id])
        _wait(lambda: not self.status(device.id)["screen"]["blank"], 10, "the screen to clear")
        self.say(f"4. {teacher} checks on the pupil and clears the screen; blank: "
                 f"{self.status(device.id)['screen']['blank']}")

        timeline = self._incident_timeline(alert["id"])
        self.say("5. The DSL's incident record (evidence is the domains the device looked up, with times):")
        for step in timeline:
            self.say(f"     {step}")
        return alert

    def _next_alert(self, watcher: subprocess.Popen, state: str) -> dict:
        return self._next_line(watcher, lambda d: d.get("event") == "alert" and d.get("state") == state,
                               f"a '{state}' alert at the teacher client")

    def _next_line(self, watcher: subprocess.Popen, match, what: str) -> dict:
        """Next JSON line from the teacher client that *match*es (it prints one per change).

        A reader thread feeds a queue: select() on a buffered text pipe misses lines
        that were already read into the buffer."""
        if not hasattr(watcher, "lines"):
            watcher.lines = queue.Queue()

            def pump():
                for line in watcher.stdout:
                    watcher.lines.put((datetime.now(timezone.utc), line))

            threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 15
        while (left := deadline - time.monotonic()) > 0:
            try:
                arrived, line = watcher.lines.get(timeout=left)
            except queue.Empty:
                break
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if match(data):
                return {**data, "_arrived": arrived}
        raise UserError(f"demo: timed out waiting for {what}")

    def _incident_timeline(self, alert_id: str) -> list[str]:
        import requests

        base = f"http://127.0.0.1:{self.http_port}/api/v1"
        token = requests.post(f"{base}/login", json={"username": "s.patel", "password": DEMO_PASSWORD},
                              timeout=5).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}

        def cleared():
            for incident in requests.get(f"{base}/incidents", headers=headers, timeout=5).json():
                states = [t.get("state") for t in incident.get("timeline", [])]
                if incident.get("id") == alert_id and "cleared" in states:
                    return incident
            return None

        incident = _wait(cleared, 15, "the incident to reach the collector")
        return [f"{t.get('ts')}  {t.get('state'):<12} by {t.get('by') or '-'}" for t in incident["timeline"]]


def run_demo(workdir: str, rooms: list[str], keep_running: bool) -> int:
    demo = Demo(Path(workdir).resolve(), rooms)
    try:
        demo.prepare()
        unknown = [r for r in rooms if r not in demo.tree.rooms]
        if unknown:
            raise UserError(f"--room: unknown room {unknown[0]!r}; known: {', '.join(sorted(demo.tree.rooms))}")
        demo.start_broker()
        demo.start_server()
        demo.start_agents()
        demo.walk_through()
        print(f"\nDashboard: http://127.0.0.1:{demo.http_port}/  (logins: "
              + ", ".join(f"{n} ({r})" for n, r in STAFF.items()) + f"; password '{DEMO_PASSWORD}')")
        print(f"Logs: {demo.dir / 'logs'}")
        if keep_running:
            print("Press Ctrl+C to stop. Try: classroom-agent press --config "
                  f"{demo.agent_file(demo.devices[-1])}")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        print("demo: ok")
        return 0
    finally:
        demo.stop()


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="run broker, collector and simulated devices on this machine and walk through a press")
    p.add_argument("--dir", default="demo-state", metavar="DIR", help="working folder (wiped first; default ./demo-state)")
    p.add_argument("--room", action="append", dest="rooms", metavar="ROOM",
                   help="rooms to simulate (default: 5b); repeat for more")
    p.add_argument("--keep-running", action="store_true", help="leave everything running until Ctrl+C")
    p.set_defaults(func=lambda args: run_demo(args.dir, args.rooms or ["5b"], args.keep_running))
