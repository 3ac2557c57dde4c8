#!/usr/bin/env python3
"""Report-button latency bench (DESIGN.md "Performance targets").

Measures, in one run against its own mosquitto on a free loopback port:

(a) button edge -> blank issued: a gpiozero MockFactory pin drives the REAL agent
    (agent/core/runtime.py: ReportButton -> Report.press -> Screen.blank, headless backend);
    t0 = just before ``pin.drive_low()``, t1 = ``Screen.blank_issued_at``.  The agent
    runs in its own process, as it does on a device: the bench's own threads (reading
    the teacher's lines, polling) would otherwise compete with it for the GIL.  Its
    "button thread" is a thread that waits on a pipe for the bench's "press" and then
    drives the pin, as gpiozero's pin thread waits on the GPIO chip.
(b) press -> the teacher's client has the alert, with N background devices (default 1,000)
    connected, subscribed to their cmd topic, holding a retained status and sending
    heartbeats of the real payload shape; a collector-like subscriber reads everything.
    The press goes through the real agent (outbox + Link, MQTT v5, QoS 1); the teacher
    is the real classroom-alerts client (server/alerts/client.AlertsClient) in its own
    process, which clears each alert so the next press raises a new one.  "Has it" is
    the moment the client has parsed the alert, checked it against the contract and put
    it on its board: the same point at which mosquitto_sub stamps %U for the baseline
    (in its message callback, before writing its output).  The time until the client
    has also written it to its view is printed too.
    Times are CLOCK_REALTIME (time.time_ns) in both processes.
(c) baseline: ``mosquitto_pub -l`` -> ``mosquitto_sub -F '%U %p'`` on the same broker under
    the same load, one message at a time, each payload carrying its send time.  Presses
    and baseline messages take turns, each after the agent has settled and a pause of
    --gap-ms, so both are measured on the same machine at the same moments.

The background devices are raw MQTT 3.1.1 sockets in a few worker processes (~250 each),
so 1,000 connections cost a few MB rather than 1,000 paho threads.

Last line: ``alert_latency p50_ms=... p99_ms=... baseline_p99_ms=... ratio=... blank_p99_ms=...``
(targets: p99 <= 10 ms with 1,000 devices, ratio <= 3, blank p99 <= 5 ms).

    .venv/bin/python bench/alert_latency.py [--devices 1000] [--presses 1000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, free_port, percentile, wait_for  # noqa: E402 - also puts the repo on sys.path
from rawmqtt import mqtt_connect, mqtt_publish, mqtt_subscribe  # noqa: E402

PREFIX = "classroom/v1"
SITE = "penny-acres"
DEVICE = "5b-pi-01"      # the measured agent (config/rooms/5b.yaml: button pin 17)
ROOM = "5b"
TEACHER = "m.khan"


def _now_ts() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _connack(s: socket.socket, who: str) -> None:
    """Read the CONNACK (always the broker's first packet) and insist on success."""
    data = b""
    while len(data) < 4:
        chunk = s.recv(4 - len(data))
        if not chunk:
            raise SystemExit(f"alert_latency worker: broker closed the connection of {who}")
        data += chunk
    if data[0] != 0x20 or data[3] != 0:
        raise SystemExit(f"alert_latency worker: broker refused {who} (CONNACK {data.hex()})")


def worker(args) -> int:
    """Hold args.count device connections (+ optionally the collector) until stdin closes."""
    sel = selectors.DefaultSelector()
    socks = []
    rng = random.Random(args.first)
    version = "bench0000000"
    password = os.environ.get("BENCH_MQTT_PASSWORD")  # not on argv: `ps` shows argv
    started = time.monotonic()
    for i in range(args.first, args.first + args.count):
        room, dev = bench_room(i)
        base = f"{PREFIX}/{SITE}/{room}/{dev}"
        offline = json.dumps({"state": "offline", "ts": _now_ts(), "agent_version": "0.1.0",
                              "config_version": version}).encode()
        s = socket.create_connection(("127.0.0.1", args.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(mqtt_connect(dev, 120, (f"{base}/status", offline), dev if password else None, password))
        _connack(s, dev)
        s.sendall(mqtt_subscribe(f"{base}/cmd", 1, 1))
        online = json.dumps({"state": "online", "ts": _now_ts(), "agent_version": "0.1.0",
                             "config_version": version}).encode()
        s.sendall(mqtt_publish(f"{base}/status", online, qos=1, retain=True, mid=2))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append((s, base, started + rng.uniform(0, args.heartbeat)))
    if args.collector:
        s = socket.create_connection(("127.0.0.1", args.port))
        s.sendall(mqtt_connect("bench-collector", 120, None, "classroom-server" if password else None, password))
        _connack(s, "the collector")
        s.sendall(mqtt_subscribe(f"$share/collectors/{PREFIX}/#", 1, 1))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    print(f"ready {args.count}", flush=True)
    deadline = started + args.duration
    sent = received = 0
    due = [(t, k) for k, (_, _, t) in enumerate(socks)]
    due.sort()
    while time.monotonic() < deadline:
        now = time.monotonic()
        while due and due[0][0] <= now:
            t, k = due.pop(0)
            s, base, _ = socks[k]
            hb = {"ts": _now_ts(), "cpu": round(rng.uniform(1, 20), 1), "mem": round(rng.uniform(20, 60), 1),
                  "temp": round(rng.uniform(40, 60), 1), "disk": 31.0, "uptime": int(now - started) + 3600,
                  "user": "pupil", "config_version": version}
            try:
                s.send(mqtt_publish(f"{base}/heartbeat", json.dumps(hb).encode()))
                sent += 1
            except BlockingIOError:
                pass
            # keep the list sorted: next heartbeat one interval later
            nxt = (t + args.heartbeat, k)
            lo, hi = 0, len(due)
            while lo < hi:
                mid = (lo + hi) // 2
                if due[mid] < nxt:
                    lo = mid + 1
                else:
                    hi = mid
            due.insert(lo, nxt)
        timeout = max(0.0, min(0.05, (due[0][0] - time.monotonic()) if due else 0.05))
        for key, _ in sel.select(timeout):
            if key.fileobj is sys.stdin:
                if not sys.stdin.readline():
                    deadline = 0
                continue
            try:
                data = key.fileobj.recv(65536)
                received += len(data)
            except (BlockingIOError, ConnectionError):
                pass
    for s, _, _ in socks:
        s.close()
    print(f"done sent={sent} received_bytes={received}", flush=True)
    return 0


# --------------------------------------------------------------------------- teacher process


def teacher(args) -> int:
    """The real classroom-alerts client; prints one JSON line per alert with its receive time,
    and clears each raised alert (as a teacher would) so the next press is a new report."""
    from server.alerts.client import AlertsClient
    from server.alerts.view import TerminalView

    out_lock = threading.Lock()
    client = AlertsClient(broker=f"mqtt://127.0.0.1:{args.port}", username=TEACHER,
                          password=os.environ.get("BENCH_MQTT_PASSWORD") or "x",
                          room=ROOM, site=SITE, view=TerminalView(open(os.devnull, "w"), as_json=True))

    arrived = {}
    on_message = client.client.on_message

    def timed_on_message(c, userdata, msg):
        arrived["ns"] = time.time_ns()  # paho has the PUBLISH; before the client parses it
        on_message(c, userdata, msg)

    client.client.on_message = timed_on_message
    apply_alert = client.board.apply_alert

    def timed_apply_alert(data):
        result = apply_alert(data)
        # Parsed, checked against the contract and on the teacher's board: the client has
        # it.  mosquitto_sub's %U is stamped at the same point (in its message callback,
        # before it writes its output), so this is the time the ratio compares.
        arrived["board"] = time.time_ns()
        return result

    client.board.apply_alert = timed_apply_alert

    def on_alert(alert):
        shown = time.time_ns()  # and written to the teacher's view
        with out_lock:
            print(json.dumps({"id": alert.id, "state": alert.state, "recv_ns": arrived.get("board", shown),
                              "shown_ns": shown, "arrived_ns": arrived.get("ns", shown)}), flush=True)
        if alert.state == "raised":
            threading.Thread(target=client.send, args=("clear", alert), daemon=True).start()

    client.on_alert = on_alert
    client.start()
    gc.collect()  # as classroom-alerts does once it is listening (server/alerts/cli.py)
    gc.freeze()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    client.close()
    return 0


# --------------------------------------------------------------------------- helpers


def raise_nofile(n: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n)) if hard != resource.RLIM_INFINITY else max(soft, n)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class LineReader(threading.Thread):
    """Reads a child's stdout lines into a list, with a Condition to wait on."""

    def __init__(self, stream, parse=lambda s: s):
        super().__init__(daemon=True)
        self.stream, self.parse = stream, parse
        self.lines: list = []
        self.cond = threading.Condition()
        self.start()

    def run(self) -> None:
        for raw in self.stream:
            item = self.parse(raw)
            with self.cond:
                self.lines.append(item)
                self.cond.notify_all()

    def count_raised(self) -> int:
        with self.cond:
            return sum(1 for x in self.lines if isinstance(x, dict) and x.get("state") == "raised")

    def raised(self, after: int):
        """The (after+1)-th "raised" line, if it has arrived (call with the lock held)."""
        found = [x for x in self.lines if isinstance(x, dict) and x.get("state") == "raised"]
        return found[after] if len(found) > after else None

    def wait(self, predicate, timeout: float, what: str):
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.lines), timeout):
                raise SystemExit(f"alert_latency: timed out waiting for {what}")
            return predicate(self.lines)


# --------------------------------------------------------------------------- the bench


def bench_room(i: int) -> tuple[str, str]:
    room = f"bench-{i // 25:03d}"
    return room, f"{room}-dev-{i % 25:02d}"


def secure_files(tmp: Path, devices: int, password: str) -> str:
    """passwd + ACL as `classroom-server broker-config` makes them (the example tree's accounts),
    plus the same per-device rules for every background device and a baseline device/teacher."""
    from agent.config import load_tree
    from server.broker_config import (Account, build_accounts, device_rules, render_acl, teacher_rules,
                                      write_password_file)

    accounts = build_accounts(load_tree(ROOT / "config"))
    extra = [bench_room(i) for i in range(devices)] + [("baseline", "baseline-01")]
    for room, dev in extra:
        accounts[dev] = Account(dev, ["device"], device_rules(PREFIX, SITE, room, dev))
    accounts["bench.teacher"] = Account("bench.teacher", ["teacher"], teacher_rules(PREFIX, SITE, "baseline",
                                                                                    "bench.teacher"))
    write_password_file(tmp / "passwd", {name: password for name in accounts})
    (tmp / "acl").write_text(render_acl(accounts))
    # mosquitto_pub/sub read default options from $XDG_CONFIG_HOME: keeps -P off argv.
    xdg = tmp / "xdg"
    xdg.mkdir(mode=0o700)
    (xdg / "mosquitto_pub").write_text(f"-u baseline-01\n-P {password}\n")
    (xdg / "mosquitto_sub").write_text(f"-u bench.teacher\n-P {password}\n")
    return (f"allow_anonymous false\npassword_file {tmp / 'passwd'}\nacl_file {tmp / 'acl'}\n")


def start_broker(tmp: Path, port: int, auth: str) -> subprocess.Popen:
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = tmp / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", auth or "allow_anonymous true", "persistence false",
             "max_connections -1", "set_tcp_nodelay true", f"log_dest file {tmp / 'mosquitto.log'}",
             "log_type error", "log_type warning"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([mosq, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _port_open(port), 10, "mosquitto to listen")
    return proc


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_agent(tmp: Path, port: int, password: str | None):
    """The real agent runtime for DEVICE, headless screen, MockFactory pins."""
    from gpiozero.pins.mock import MockFactory

    from agent.config.schema import AgentBootstrap
    from agent.core.heap import freeze_startup
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessScreen
    from agent.report.screen import Screen

    state = Path(tempfile.mkdtemp(prefix="alert-bench-", dir="/var/tmp"))
    if password:
        cred = tmp / "credentials.yaml"
        cred.touch(mode=0o600)
        cred.write_text(json.dumps({"username": DEVICE, "password": password}))  # JSON is YAML
    boot = AgentBootstrap(device=DEVICE, site=SITE, broker_url=f"mqtt://127.0.0.1:{port}",
                          collector_url="http://127.0.0.1:9",
                          credentials=str(tmp / ("credentials.yaml" if password else "no-credentials.yaml")),
                          state_dir=str(state), control_socket=str(tmp / "control.sock"),
                          config_dir=str(ROOT / "config"), screen_backend="headless")
    factory = MockFactory()
    screen = Screen(HeadlessScreen())
    runtime = Runtime(boot, screen=screen, pin_factory=factory, control=False).start()
    wait_for(lambda: runtime.link is not None and runtime.link.connected.is_set(), 15, "the agent to connect")
    freeze_startup()  # as `classroom-agent run` does after start-up
    return runtime, factory, screen, state


def agent(args) -> int:
    """The measured agent's process: presses its MockFactory pin on each "press" line.
    It says nothing until "report": a line to the bench at the moment of the press would
    wake the bench's process just when the broker and the teacher need the CPUs."""
    runtime, factory, screen, state = start_agent(Path(args.tmp), args.port, os.environ.get("BENCH_MQTT_PASSWORD"))
    # Where the time goes: note when the agent hands the raised alert to paho.
    handed: dict[str, int] = {}
    publish = runtime.link.client.publish

    def timed_publish(topic, payload=None, *a, **kw):
        if topic.endswith("/alert") and payload and b'"raised"' in payload:
            handed[json.loads(payload)["id"]] = time.time_ns()
        return publish(topic, payload, *a, **kw)

    runtime.link.client.publish = timed_publish
    pin = factory.pin(runtime.policy.hardware.button_pin)
    bounce = runtime.policy.hardware.button_bounce_ms / 1000
    gap = args.gap_ms / 1000
    presses = []
    try:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() == "report":
                print(json.dumps({"presses": presses, "handed": handed}), flush=True)
                continue
            # A pupil presses on an idle device: the last alert cleared, its follow-ups
            # (evidence, the outbox's settling) done, every message acknowledged.
            wait_for(lambda: not runtime.report.is_open and not screen.is_blank and runtime.is_idle
                     and runtime.outbox.count() == 0, 10, "the agent to settle after the previous alert")
            if line.strip() == "settle":
                print(json.dumps({"settled": len(presses)}), flush=True)
                continue
            pin.drive_high()  # the pupil let go (long ago, at this pace)
            time.sleep(max(gap, bounce * 1.5))  # pacing + let the debounce window pass
            before = screen.blank_issued_at
            t_wall = time.time_ns()
            t0 = time.perf_counter_ns()
            pin.drive_low()
            t1 = screen.blank_issued_at
            if t1 is None or t1 == before:
                raise SystemExit("alert_latency: the press did not blank the screen")
            presses.append({"t_wall": t_wall, "blank_ms": (t1 - t0) / 1e6})
    finally:
        runtime.stop()
        shutil.rmtree(state, ignore_errors=True)
    return 0


def _ask(proc, lines: LineReader, command: str, what: str):
    done = len(lines.lines)
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return lines.wait(lambda got: len(got) > done and got[done], 15, what)


def measure(agent_proc, agent_lines: LineReader, teacher_lines: LineReader, baseline: "Baseline",
            presses: int, gap: float):
    """Presses and baseline messages taken turn about, each on a quiet system (the agent
    settled, a pause of *gap*), so that both see the same machine: its speed drifts over
    a run, and a baseline measured after the presses would see a different one."""
    received, baseline_ms = [], []
    for i in range(presses + 5):  # the first 5 warm up caches and connections
        seen = teacher_lines.count_raised()
        agent_proc.stdin.write("press\n")
        agent_proc.stdin.flush()
        # Presses are one at a time, so the next new "raised" the teacher sees is this press's.
        received.append(teacher_lines.wait(lambda lines: teacher_lines.raised(seen), 10,
                                           "the teacher to receive the alert"))
        _ask(agent_proc, agent_lines, "settle", "the agent to settle")
        latency = baseline.one(gap)
        if i >= 5:
            baseline_ms.append(latency)
    report = _ask(agent_proc, agent_lines, "report", "the agent's timings")
    handed = report["handed"]
    blank_ms, press_ms, shown_ms, timings = [], [], [], []
    for pressed, got in list(zip(report["presses"], received))[5:]:
        blank_ms.append(pressed["blank_ms"])
        press_ms.append((got["recv_ns"] - pressed["t_wall"]) / 1e6)
        shown_ms.append((got["shown_ns"] - pressed["t_wall"]) / 1e6)
        timings.append((pressed["t_wall"], got))
    agent_ms, wire_ms, client_ms = [], [], []
    for t_wall, got in timings:
        if got["id"] in handed:
            agent_ms.append((handed[got["id"]] - t_wall) / 1e6)
            wire_ms.append((got["arrived_ns"] - handed[got["id"]]) / 1e6)
            client_ms.append((got["recv_ns"] - got["arrived_ns"]) / 1e6)
    return blank_ms, press_ms, shown_ms, agent_ms, wire_ms, client_ms, baseline_ms


class Baseline:
    """``mosquitto_pub -l`` -> ``mosquitto_sub -F '%U %p'``: one message per ``one()``."""

    def __init__(self, port: int, tmp: Path):
        topic = f"{PREFIX}/{SITE}/baseline/baseline-01/alert"
        env = dict(os.environ, XDG_CONFIG_HOME=str(tmp / "xdg"))
        self.sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic,
                                     "-F", "%U %p"], stdout=subprocess.PIPE, text=True, env=env)
        self.pub = subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic,
                                     "-l"], stdin=subprocess.PIPE, text=True, env=env)
        self.reader = LineReader(self.sub.stdout, self._parse)
        # mosquitto_sub's SUBACK is not observable: publish until the first message arrives.
        deadline = time.monotonic() + 10
        while not self.reader.lines:
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit("alert_latency: mosquitto_sub never received the baseline messages")
            self._send(time.time_ns())
            time.sleep(0.05)

    @staticmethod
    def _parse(line: str):
        recv, _, sent = line.strip().partition(" ")
        sec, _, frac = recv.partition(".")
        return int(sec) * 10**9 + int(frac.ljust(9, "0")[:9]), int(sent)

    def _send(self, stamp: int) -> None:
        self.pub.stdin.write(f"{stamp}\n")
        self.pub.stdin.flush()

    def one(self, gap: float) -> float:
        time.sleep(gap)
        count = len(self.reader.lines)
        sent = time.time_ns()
        self._send(sent)
        recv, echoed = self.reader.wait(lambda lines: len(lines) > count and lines[-1], 10, "a baseline message")
        if echoed != sent:
            self.reader.wait(lambda lines: any(x[1] == sent for x in lines), 10, "the baseline message")
            recv = next(x[0] for x in self.reader.lines if x[1] == sent)
        return (recv - sent) / 1e6

    def close(self) -> None:
        self.pub.stdin.close()
        self.pub.wait(5)
        self.sub.terminate()
        self.sub.wait(5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000, help="background devices (default 1000)")
    p.add_argument("--per-worker", type=int, default=250)
    p.add_argument("--presses", type=int, default=1000)
    p.add_argument("--gap-ms", type=float, default=20, help="pause between presses / baseline messages")
    p.add_argument("--heartbeat", type=float, default=None,
                   help="background heartbeat interval, seconds (default: site.yaml heartbeat_seconds)")
    p.add_argument("--anonymous", action="store_true",
                   help="no passwords/ACL (default: the generated password file and ACL, as deployed)")
    p.add_argument("--max-seconds", type=float, default=420, help="hard bound on the run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--teacher", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=420, help=argparse.SUPPRESS)
    p.add_argument("--collector", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        raise_nofile(args.count + 64)
        return worker(args)
    if args.teacher:
        return teacher(args)
    if args.agent:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        return agent(args)
    return run(args)


def run(args) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    from agent.config import load_tree

    if args.heartbeat is None:
        args.heartbeat = float(load_tree(ROOT / "config").site.heartbeat_seconds)
    import signal

    def overtime(signum, frame):
        raise SystemExit(f"alert_latency: gave up after --max-seconds {args.max_seconds:g}")

    signal.signal(signal.SIGALRM, overtime)  # bounded run: the finally below still cleans up
    signal.alarm(max(1, int(args.max_seconds)))
    limit = raise_nofile(args.devices + 256)
    if limit < args.devices + 64:
        raise SystemExit(f"alert_latency: open-file limit {limit} is too low for {args.devices} devices")
    tmp = Path(tempfile.mkdtemp(prefix="alert-latency-"))
    port = free_port()
    started = time.monotonic()
    children: list[subprocess.Popen] = []
    password = None if args.anonymous else secrets.token_urlsafe(16)
    if password:
        os.environ["BENCH_MQTT_PASSWORD"] = password  # inherited by the worker and teacher processes
    (tmp / "xdg").mkdir(exist_ok=True) if not password else None
    broker = start_broker(tmp, port, secure_files(tmp, args.devices, password) if password else "")
    children.append(broker)
    workers: list[subprocess.Popen] = []
    load = {"heartbeats": 0, "collector_bytes": 0}
    try:
        me = [sys.executable, str(Path(__file__).resolve())]
        for first in range(0, args.devices, args.per_worker):
            count = min(args.per_worker, args.devices - first)
            w = subprocess.Popen(me + ["--worker", "--port", str(port), "--first", str(first), "--count", str(count),
                                       "--heartbeat", str(args.heartbeat), "--duration", str(args.max_seconds)]
                                 + (["--collector"] if first == 0 else []),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            children.append(w)
            workers.append(w)
        if not workers:  # --devices 0: still run a collector-like subscriber
            w = subprocess.Popen(me + ["--worker", "--port", str(port), "--count", "0", "--collector",
                                       "--heartbeat", str(args.heartbeat), "--duration", str(args.max_seconds)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            children.append(w)
            workers.append(w)
        for w in workers:
            line = w.stdout.readline()
            if not line.startswith("ready"):
                raise SystemExit(f"alert_latency: a device worker failed to start ({line.strip()!r})")
        t_connected = time.monotonic() - started
        teacher_proc = subprocess.Popen(me + ["--teacher", "--port", str(port)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        children.append(teacher_proc)
        teacher_lines = LineReader(teacher_proc.stdout, json.loads)
        teacher_lines.wait(lambda lines: any(x.get("ready") for x in lines), 15, "the teacher client")

        agent_proc = subprocess.Popen(me + ["--agent", "--port", str(port), "--tmp", str(tmp),
                                            "--gap-ms", str(args.gap_ms)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(agent_proc)
        agent_lines = LineReader(agent_proc.stdout, json.loads)
        agent_lines.wait(lambda lines: any(x.get("ready") for x in lines), 30, "the agent to connect")
        baseline = Baseline(port, tmp)
        try:
            blank_ms, press_ms, shown_ms, agent_ms, wire_ms, client_ms, baseline_ms = measure(
                agent_proc, agent_lines, teacher_lines, baseline, args.presses, args.gap_ms / 1000)
        finally:
            baseline.close()
        elapsed = time.monotonic() - started
        signal.alarm(0)
    finally:
        for c in children[1:]:
            try:
                if c.stdin:
                    c.stdin.close()
            except OSError:
                pass
        for c in children[1:]:
            try:
                c.wait(10)
            except subprocess.TimeoutExpired:
                c.kill()
        for w in workers:
            for line in w.stdout:
                if line.startswith("done"):
                    fields = dict(kv.split("=") for kv in line.split()[1:])
                    load["heartbeats"] += int(fields["sent"])
                    load["collector_bytes"] += int(fields["received_bytes"])
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    p50, p99 = percentile(press_ms, 50), percentile(press_ms, 99)
    b50, b99 = percentile(baseline_ms, 50), percentile(baseline_ms, 99)
    k50, k99 = percentile(blank_ms, 50), percentile(blank_ms, 99)
    ratio = p99 / b99 if b99 > 0 else float("inf")
    print(f"broker: mosquitto on 127.0.0.1:{port}, "
          + ("anonymous, no ACL" if args.anonymous else "password file + generated ACL (as deployed)"))
    print(f"background: {args.devices} devices connected in {t_connected:.1f}s "
          f"(heartbeat every {args.heartbeat:g}s, ~{args.devices / args.heartbeat:.0f} msg/s, "
          f"retained status, cmd subscriptions, a $share collector subscriber); during the run "
          f"{load['heartbeats']} heartbeats were sent and the collector received {load['collector_bytes']} bytes")
    print(f"(a) button edge -> blank issued (real agent: ReportButton -> Report -> Screen, headless, "
          f"MockFactory): n={len(blank_ms)} p50={k50:.3f} ms p99={k99:.3f} ms max={max(blank_ms):.3f} ms "
          f"[target p99 <= 5 ms]")
    print(f"(b) press -> teacher's client has it (real agent: outbox + Link -> mosquitto -> classroom-alerts client; "
          f"parsed, checked and on its board, where mosquitto_sub stamps %U): "
          f"n={len(press_ms)} p50={p50:.2f} ms p99={p99:.2f} ms max={max(press_ms):.2f} ms [target p99 <= 10 ms]")
    print(f"    ... and written to the teacher's view: p50={percentile(shown_ms, 50):.2f} ms "
          f"p99={percentile(shown_ms, 99):.2f} ms")
    print(f"    of which: press -> agent hands the alert to paho (blank, alert state + outbox commit): "
          f"p50={percentile(agent_ms, 50):.2f} ms p99={percentile(agent_ms, 99):.2f} ms;\n"
          f"              agent's paho -> broker -> teacher's paho: p50={percentile(wire_ms, 50):.2f} ms "
          f"p99={percentile(wire_ms, 99):.2f} ms; teacher client parses/checks/boards it: "
          f"p50={percentile(client_ms, 50):.3f} ms p99={percentile(client_ms, 99):.3f} ms")
    print(f"(c) baseline mosquitto_pub -> mosquitto_sub, same broker and load: n={len(baseline_ms)} "
          f"p50={b50:.2f} ms p99={b99:.2f} ms [target ratio p99/baseline p99 <= 3]")
    print(f"run took {elapsed:.1f}s")
    print(f"alert_latency p50_ms={p50:.2f} p99_ms={p99:.2f} baseline_p99_ms={b99:.2f} ratio={ratio:.2f} "
          f"blank_p99_ms={k99:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
