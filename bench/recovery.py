#!/usr/bin/env python3
"""Recovery bench (DESIGN.md "Performance targets": broker back -> agent reconnected,
backlog delivered, p95 <= 2 s; 0 presses lost, 0 order violations).

Starts, in a temporary directory:

* its own mosquitto on a free loopback port, anonymous, **without persistence**: each
  SIGKILL loses every retained message and session, the hardest case for late joiners;
* ``--devices`` real agents (``classroom-agent run --simulate``, the example tree's
  devices, default all 6), each in its own process with its own state directory;
* the real teacher client (server/alerts/client.AlertsClient) watching every room, which
  clears every alert it is shown (retrying until the device confirms), so each device's
  next press is a new report.

While every device presses whenever it has no open report (random pauses of 0.2-1 s), the
broker is killed with SIGKILL and started again ``--restarts`` times (up 2-4 s, down
0.5-2 s).  Then pressing stops and the bench waits for every report to reach the teacher
and be cleared.

* ``presses``: reports raised (one alert id each);
* ``lost``: reports the teacher never saw in any state;
* ``duplicated_at_teacher``: alert messages the teacher got more than once (QoS 1
  redelivery, retained copies on each resubscription, the devices' re-published latest
  transitions): the board ignores them, this counts them;
* ``reconnect_p95_ms``: from the broker listening again to each device's retained
  ``online`` status, which an agent publishes only after its backlog (its ``ts``, stamped
  by the agent on the same clock);
* ``order_violations``: at the teacher, a state of an alert after a later state of it, or
  a device's report after its next one.

Also printed: the teacher's own delay for reports pressed while the broker was down.

Last line: ``recovery presses=... lost=0 duplicated_at_teacher=... reconnect_p95_ms=... order_violations=0``

    .venv/bin/python bench/recovery.py [--devices 6] [--restarts 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ROOT, free_port, percentile, wait_for  # noqa: E402 - also puts the repo on sys.path

SITE, PREFIX = "penny-acres", "classroom/v1"
DEVICES = [("1a", "1a-pi-01"), ("1a", "1a-pc-01"), ("5b", "5b-pi-01"), ("5b", "5b-pi-02"),
           ("reception", "reception-pi-01"), ("reception", "reception-pi-02")]
RANK = {"raised": 0, "escalated": 1, "acknowledged": 2, "cleared": 3}
TARGET_P95_MS = 2000


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wall_ms(ts: str) -> float:
    from agent.protocol import parse_ts

    return parse_ts(ts).timestamp() * 1000


class Broker:
    def __init__(self, work: Path, port: int):
        self.port = port
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(self.binary):
            raise SystemExit("recovery: error: mosquitto is not installed")
        self.conf = work / "mosquitto.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             + ("user root\n" if os.geteuid() == 0 else ""))
        self.log = work / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start; return the wall time (ms) at which it first accepted a connection."""
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"recovery: error: mosquitto did not listen:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.002)
        return time.time() * 1000

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class Agent:
    def __init__(self, work: Path, tree: Path, port: int, room: str, device: str, binary: str):
        self.room, self.device = room, device
        self.dir = work / device
        self.dir.mkdir()
        self.sock = self.dir / "control.sock"
        self.log = self.dir / "agent.log"
        (self.dir / "agent.yaml").write_text("\n".join([
            f"device: {device}", f"site: {SITE}", f"broker_url: mqtt://127.0.0.1:{port}",
            "collector_url: http://127.0.0.1:9", f"credentials: {self.dir / 'none.yaml'}",
            f"state_dir: {self.dir / 'state'}", f"control_socket: {self.sock}", f"config_dir: {tree}",
            "screen_backend: headless"]) + "\n")
        env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([binary, "run", "--config", str(self.dir / "agent.yaml"), "--simulate"],
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env)
        self.pressed: list[tuple[str, float]] = []   # (alert id, wall ms) in press order

    def request(self, req: dict) -> dict:
        from agent.core.control import request

        if self.proc.poll() is not None:
            raise SystemExit(f"recovery: error: agent {self.device} exited:\n{self.log.read_text()[-2000:]}")
        return request(self.sock, req)

    def status(self) -> dict:
        return self.request({"op": "status"})["status"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Teacher:
    """The real classroom-alerts client for every room; records every alert and status it is given."""

    def __init__(self, port: int):
        from server.alerts.client import AlertsClient
        from server.alerts.view import TerminalView

        self.client = AlertsClient(broker=f"mqtt://127.0.0.1:{port}", username="bench.teacher", password="x",
                                   room="+", site=SITE, view=TerminalView(open(os.devnull, "w"), as_json=True),
                                   presence=False)
        self.lock = threading.Lock()
        self.alerts: list[tuple[float, bool, dict]] = []    # (wall ms received, retained, payload)
        self.online: dict[str, list[float]] = {}           # device -> online status ts (wall ms)
        handle = self.client.client.on_message

        def on_message(client, userdata, msg):
            now = time.time() * 1000
            kind = msg.topic.rsplit("/", 1)[1]
            try:
                payload = json.loads(msg.payload)
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                with self.lock:
                    if kind == "alert":
                        self.alerts.append((now, bool(msg.retain), payload))
                    elif kind == "status" and payload.get("state") == "online":
                        self.online.setdefault(msg.topic.split("/")[-2], []).append(wall_ms(payload["ts"]))
            handle(client, userdata, msg)

        self.client.client.on_message = on_message
        self.tries: dict[str, float] = {}
        self.pool = ThreadPoolExecutor(4)

    def start(self) -> None:
        self.client.start()

    def clear_open(self) -> None:
        """Clear what the board shows open (a real teacher would); again if the device did not answer."""
        now = time.monotonic()
        for alert in self.client.board.listing():
            if alert.is_open and now - self.tries.get(alert.id, 0) > 1.0:
                self.tries[alert.id] = now
                self.pool.submit(self._clear, alert)

    def _clear(self, alert) -> None:
        try:
            self.client.send("clear", alert, timeout=2)
        except Exception:  # noqa: BLE001 - the broker is down: the next sweep tries again
            pass

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def presser(agent: Agent, stop: threading.Event, rng: random.Random) -> None:
    while not stop.is_set():
        try:
            if agent.status()["alert"] is None:
                agent.request({"op": "press", "source": "key"})
                alert = agent.status()["alert"]
                if alert is not None and (not agent.pressed or agent.pressed[-1][0] != alert["id"]):
                    agent.pressed.append((alert["id"], time.time() * 1000))
        except (OSError, ValueError):
            pass
        stop.wait(rng.uniform(0.2, 1.0))


def late_joiner(agents: list[Agent], port: int) -> float:
    """Every device with a report open and delivered; a new teacher client connects: how long
    until its board shows them all (they come from the broker's retained alert topics)?"""
    from server.alerts.client import AlertsClient
    from server.alerts.view import TerminalView

    for agent in agents:
        agent.request({"op": "press", "source": "key"})
    wait_for(lambda: all(a.status()["alert"] and a.status()["outbox_pending"] == 0 for a in agents), 30,
             "the last reports to be delivered")
    open_ids = {a.status()["alert"]["id"] for a in agents}
    client = AlertsClient(broker=f"mqtt://127.0.0.1:{port}", username="bench.late", password="x", room="+",
                          site=SITE, view=TerminalView(open(os.devnull, "w"), as_json=True), presence=False)
    started = time.monotonic()
    client.start()
    try:
        wait_for(lambda: open_ids <= set(client.board.alerts), 10, "the late joiner to see every open report")
        return 1000 * (time.monotonic() - started)
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=len(DEVICES), help=f"agents, 1-{len(DEVICES)} (default all)")
    parser.add_argument("--restarts", type=int, default=20, help="broker kills and restarts (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (pauses and outage lengths)")
    args = parser.parse_args()
    if not 1 <= args.devices <= len(DEVICES) or args.restarts < 1:
        parser.error(f"--devices must be 1-{len(DEVICES)} and --restarts >= 1")
    rng = random.Random(args.seed)
    binary = str(ROOT / ".venv/bin/classroom-agent") if (ROOT / ".venv/bin/classroom-agent").exists() \
        else shutil.which("classroom-agent")
    if not binary:
        raise SystemExit("recovery: error: classroom-agent is not installed (pip install -e .)")

    with tempfile.TemporaryDirectory(prefix="recovery-") as tmp:
        work = Path(tmp)
        tree = work / "config"
        shutil.copytree(ROOT / "config", tree)
        port = free_port()
        broker = Broker(work, port)
        broker.start()
        agents = [Agent(work, tree, port, room, device, binary) for room, device in DEVICES[:args.devices]]
        teacher = Teacher(port)
        stop = threading.Event()
        threads: list[threading.Thread] = []
        ups: list[tuple[float, float]] = []     # (wall ms the broker was back, wall ms it was killed next)
        try:
            def connected(agent):
                try:
                    return agent.status()["connected"]
                except OSError:
                    return False  # not listening yet
            wait_for(lambda: all(connected(a) for a in agents), 60, "every agent to connect")
            teacher.start()
            for agent in agents:
                t = threading.Thread(target=presser, args=(agent, stop, random.Random(rng.random())), daemon=True)
                t.start()
                threads.append(t)
            sweeping = threading.Event()

            def sweeper():
                while not sweeping.is_set():
                    teacher.clear_open()
                    sweeping.wait(0.2)
            threading.Thread(target=sweeper, daemon=True).start()
            print(f"{len(agents)} agents and the teacher connected; killing the broker {args.restarts} times",
                  flush=True)
            for _ in range(args.restarts):
                time.sleep(rng.uniform(2.0, 4.0))    # the broker is up this long (pacing, not a sync)
                broker.kill()
                killed = time.time() * 1000
                if ups:
                    ups[-1] = (ups[-1][0], killed)
                time.sleep(rng.uniform(0.5, 2.0))    # ... and down this long
                ups.append((broker.start(), float("inf")))
            time.sleep(3.0)
            stop.set()
            for t in threads:
                t.join(10)
            pressed = {aid: (agent.device, at) for agent in agents for aid, at in agent.pressed}

            def settled():
                with teacher.lock:
                    seen = {p["id"] for _, _, p in teacher.alerts}
                return set(pressed) <= seen and all(a.status()["alert"] is None for a in agents)
            try:
                wait_for(settled, 60, "every report to reach the teacher and be cleared")
            except SystemExit as exc:
                print(f"recovery: {exc}", file=sys.stderr)
            sweeping.set()
            late_join_ms = late_joiner(agents, port)
        finally:
            stop.set()
            teacher.close()
            for agent in agents:
                agent.stop()
            broker.kill()

    with teacher.lock:
        received = list(teacher.alerts)
        online = {d: sorted(v) for d, v in teacher.online.items()}
    seen_ids = {p["id"] for _, _, p in received}
    lost = [aid for aid in pressed if aid not in seen_ids]
    counts: dict[tuple[str, str], int] = {}
    for _, _, p in received:
        counts[(p["id"], p["state"])] = counts.get((p["id"], p["state"]), 0) + 1
    duplicated = sum(n - 1 for n in counts.values())
    # Order at the teacher: per alert never back to an earlier state; per device never an
    # earlier report after a later one.
    violations, best = [], {}
    press_index = {aid: (device, i) for agent in agents for i, (aid, _) in enumerate(agent.pressed)
                   for device in [agent.device]}
    latest_report: dict[str, int] = {}
    for _, _, p in received:
        rank = RANK[p["state"]]
        if rank < best.get(p["id"], -1):
            violations.append(f"{p['device']} {p['id'][:8]}: {p['state']} after a later state")
        best[p["id"]] = max(rank, best.get(p["id"], -1))
        if p["id"] in press_index:
            device, i = press_index[p["id"]]
            if i < latest_report.get(device, -1):
                violations.append(f"{device}: report #{i} after report #{latest_report[device]}")
            latest_report[device] = max(i, latest_report.get(device, -1))
    # Reconnect: broker listening again -> each device's next online status (published after its backlog).
    reconnects, missing = [], 0
    for up, killed in ups:
        for agent in agents:
            after = [ts for ts in online.get(agent.device, []) if up <= ts < killed]
            if after:
                reconnects.append(after[0] - up)
            else:
                missing += 1
    # The teacher's view of reports pressed while the broker was down.
    first_seen = {}
    for at, _, p in received:
        first_seen.setdefault(p["id"], at)
    downtime_delays = []
    for aid, (device, at) in pressed.items():
        for i, (up, _) in enumerate(ups):
            down_from = ups[i - 1][1] if i else None
            if down_from is not None and down_from <= at < up and aid in first_seen:
                downtime_delays.append(first_seen[aid] - up)
    p95 = percentile(reconnects, 95)
    print(f"late joiner: a teacher client started with {len(agents)} reports open had them all "
          f"{late_join_ms:.0f} ms after it began connecting (target <= 1000)")
    print(f"restarts: {len(ups)}; devices: {len(agents)}; reconnections measured: {len(reconnects)}"
          + (f" ({missing} device-restarts without an online status before the next kill)" if missing else ""))
    print(f"reconnect ms: p50 {percentile(reconnects, 50):.0f}  p95 {p95:.0f}  max {max(reconnects, default=0):.0f}"
          f"  (target p95 <= {TARGET_P95_MS})")
    if downtime_delays:
        print(f"reports pressed while the broker was down: {len(downtime_delays)}; at the teacher after the broker "
              f"came back: p50 {percentile(downtime_delays, 50):.0f} ms, p95 {percentile(downtime_delays, 95):.0f} ms "
              "(the teacher client reconnects too)")
    for line in violations[:10]:
        print(f"order violation: {line}")
    if lost:
        print(f"lost: {', '.join(a[:8] for a in lost[:10])}")
    ok = not lost and not violations and p95 <= TARGET_P95_MS
    print(f"targets: lost 0, order violations 0, reconnect p95 <= {TARGET_P95_MS} ms: {'ok' if ok else 'MISSED'}")
    print(f"recovery presses={len(pressed)} lost={len(lost)} duplicated_at_teacher={duplicated} "
          f"reconnect_p95_ms={p95:.0f} order_violations={len(violations)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
