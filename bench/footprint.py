#!/usr/bin/env python3
"""Agent steady-state footprint bench (DESIGN.md "Performance targets": RSS <= 50 MB,
idle CPU <= 0.5 % of a core, against a bare ``python -c`` process).

Starts, in a temporary directory:

* its own mosquitto on a free loopback port (anonymous, no persistence);
* the real agent, ``classroom-agent run``, from the venv, with a local copy of the
  example config tree (device 5b-pi-01), the gpiozero mock pin factory and the headless
  screen, and every component the runtime registers (report, lock, sessions, guard,
  filter when installed, heartbeats...).  No nftables (not our network namespace);
* a bare ``python -c "import time; time.sleep(...)"`` process for the baseline.

Start -> READY: the agent is started with ``NOTIFY_SOCKET`` pointing at a datagram socket of
the bench's, as systemd's ``Type=notify`` does; ``ready_ms`` is the time from spawning the
process to its ``READY=1`` (the button armed, dnsmasq up and closed: docs/architecture.md).

Waits until the agent says ``online`` on its retained status topic, lets it settle
(``--warmup``), then samples both processes once a second for ``--seconds`` (60 by
default) with psutil: CPU is (user+system time used) / wall time over the window, RSS is
the largest resident set seen.  Children (dnsmasq, helpers) are reported separately.

Last line: ``footprint rss_mb=... idle_cpu_pct=... bare_rss_mb=... ready_ms=...``

    .venv/bin/python bench/footprint.py [--seconds 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from common import ROOT, free_port  # noqa: E402 - also puts the repo on sys.path

DEVICE, SITE, ROOM, PREFIX = "5b-pi-01", "penny-acres", "5b", "classroom/v1"
TARGET_RSS_MB, TARGET_CPU_PCT = 50.0, 0.5


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"footprint: error: mosquitto did not listen on {port}")


def wait_online(port: int, timeout: float) -> None:
    import paho.mqtt.client as mqtt

    online = threading.Event()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)

    def on_connect(c, userdata, flags, rc, props):
        c.subscribe(f"{PREFIX}/{SITE}/{ROOM}/{DEVICE}/status", qos=1)

    def on_message(c, userdata, msg):
        if b'"online"' in msg.payload:
            online.set()
    client.on_connect, client.on_message = on_connect, on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not online.wait(timeout):
            raise SystemExit("footprint: error: the agent never said online (see its log above)")
    finally:
        client.disconnect()
        client.loop_stop()


def agent_binary() -> str:
    for candidate in (ROOT / ".venv/bin/classroom-agent", Path(sys.executable).parent / "classroom-agent"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("classroom-agent")
    if not found:
        raise SystemExit("footprint: error: classroom-agent is not installed (pip install -e .)")
    return found


def write_setup(work: Path, port: int) -> Path:
    tree = work / "config"
    shutil.copytree(ROOT / "config", tree)
    agent_yaml = work / "agent.yaml"
    agent_yaml.write_text("\n".join([
        f"device: {DEVICE}",
        f"site: {SITE}",
        f"broker_url: mqtt://127.0.0.1:{port}",
        "collector_url: http://127.0.0.1:9",
        f"credentials: {work / 'no-credentials.yaml'}",
        f"state_dir: {work / 'state'}",
        f"control_socket: {work / 'control.sock'}",
        f"config_dir: {tree}",
        "pin_factory: mock",
        "screen_backend: headless",
        f"chromium_policy_dir: {work / 'chromium'}",
        f"firefox_policy_dir: {work / 'firefox'}",
        # Every machine-wide path in the bench's own folder: a bench never writes /etc or /var.
        f"chromium_native_hosts_dir: {work / 'native-hosts'}",
        f"blockpage_dir: {work / 'blockpage'}",
        f"dnsmasq_dir: {work / 'dnsmasq'}",
        "apply_nftables: false",
    ]) + "\n")
    return agent_yaml


class Sampler:
    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.rss_max = 0
        self.children_rss_max = 0
        self.cpu_start = None
        self.wall_start = None

    def start(self) -> None:
        t = self.proc.cpu_times()
        self.cpu_start = t.user + t.system
        self.wall_start = time.monotonic()

    def sample(self) -> None:
        self.rss_max = max(self.rss_max, self.proc.memory_info().rss)
        total = 0
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        self.children_rss_max = max(self.children_rss_max, total)

    def cpu_pct(self) -> float:
        t = self.proc.cpu_times()
        return 100.0 * (t.user + t.system - self.cpu_start) / (time.monotonic() - self.wall_start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring window (default 60)")
    parser.add_argument("--warmup", type=float, default=10.0, help="settle time after online (default 10)")
    parser.add_argument("--simulate", action="store_true",
                        help="measure `run --simulate` (report path only, no filter/lock/guard) for comparison")
    args = parser.parse_args()
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be > 0 and --warmup >= 0")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(mosquitto):
        raise SystemExit("footprint: error: mosquitto is not installed")

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        work = Path(tmp)
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))
        try:
            broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            procs.append(broker)
            wait_port(port)
            agent_yaml = write_setup(work, port)
            log = open(work / "agent.log", "wb")
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(str(work / "notify.sock"))
            notify.settimeout(60)
            env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1",
                       NOTIFY_SOCKET=str(work / "notify.sock"))
            spawned = time.monotonic()
            agent = subprocess.Popen([agent_binary(), "run", "--config", str(agent_yaml),
                                      *(["--simulate"] if args.simulate else [])],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
            procs.append(agent)
            try:
                while not notify.recv(4096).startswith(b"READY=1"):
                    pass
            except OSError:
                sys.stderr.write((work / "agent.log").read_text()[-3000:])
                raise SystemExit("footprint: error: the agent never said READY=1") from None
            ready_ms = 1000 * (time.monotonic() - spawned)
            notify.close()
            print(f"agent READY=1 {ready_ms:.0f} ms after it was started", flush=True)
            bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1e6)"])
            procs.append(bare)
            try:
                wait_online(port, timeout=30)
            except SystemExit:
                sys.stderr.write((work / "agent.log").read_text()[-3000:])
                raise
            print(f"agent pid {agent.pid} ({'report path only' if args.simulate else 'all components'}) online; settling {args.warmup:.0f} s, then measuring "
                  f"{args.seconds:.0f} s", flush=True)
            time.sleep(args.warmup)
            a, b = Sampler(agent.pid), Sampler(bare.pid)
            a.start()
            b.start()
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                if agent.poll() is not None:
                    sys.stderr.write((work / "agent.log").read_text()[-3000:])
                    raise SystemExit(f"footprint: error: the agent exited ({agent.returncode}) while measured")
                a.sample()
                b.sample()
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            a.sample()
            b.sample()
            cpu, bare_cpu = a.cpu_pct(), b.cpu_pct()
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
    rss_mb, bare_mb, kids_mb = a.rss_max / 2**20, b.rss_max / 2**20, a.children_rss_max / 2**20
    print(f"agent:  rss {rss_mb:.1f} MB (children {kids_mb:.1f} MB), cpu {cpu:.3f} % of a core")
    print(f"bare:   rss {bare_mb:.1f} MB, cpu {bare_cpu:.3f} %")
    print(f"targets: rss <= {TARGET_RSS_MB:.0f} MB {'ok' if rss_mb <= TARGET_RSS_MB else 'OVER'}; "
          f"idle cpu <= {TARGET_CPU_PCT} % {'ok' if cpu <= TARGET_CPU_PCT else 'OVER'}; "
          f"rss vs bare python {rss_mb / bare_mb:.1f}x")
    print(f"footprint rss_mb={rss_mb:.1f} idle_cpu_pct={cpu:.3f} bare_rss_mb={bare_mb:.1f} ready_ms={ready_ms:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
