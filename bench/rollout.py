#!/usr/bin/env python3
"""A technician publishes a config -> applied on ``--devices`` devices (issue 17: 1,000,
target p95 <= 10 s).

One run, everything real and on loopback: mosquitto on a free port; the collector as
``classroom-server serve`` (its own process, SQLite store, MQTT ingest) with a config tree
of ``--devices`` devices in rooms of 30; each device enrolled with a one-time token
(server/devices.py), so it has its own password as a real one does.  The devices are the
agent's own runtime (agent/core/runtime.py with its config sync and MQTT link, headless,
no desktop components), many per process (``--procs`` processes) since 1,000 agent
processes do not fit on a 2-core machine: each connects to the broker with its own client,
fetches its config at start-up like a booting Pi, and on a rollout does what every agent
does: reload-config on its cmd topic -> ``GET /api/v1/devices/{id}/config`` with its own
credentials -> the real validation and policy switch -> ``config_applied`` with the
version, through its durable outbox.  Device state (outbox, cached config) lives in
/dev/shm when there is one: each Pi writes to its own SD card, and a thousand devices
fsyncing on this machine's one disk would measure the disk.

Measured: the technician's ``POST /api/v1/config/rollouts`` (the same call as
``classroom-server config publish``) -> each device's ``config_applied`` for the new
version *as the collector stored it* (``received_at`` of the event, the data the Rollout
view reads); afterwards the Rollout view (``GET /api/v1/config/status``) must say every
device is current, or the rest count as failed.

Last line: ``rollout devices=1000 p50_s=... p95_s=... failed=0``

    .venv/bin/python bench/rollout.py [--devices 1000] [--procs N] [--timeout 120]

``ROLLOUT_BENCH_KEEP=1`` keeps the collector's, the broker's and the devices' files and logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import ROOT, free_port, percentile, wait_for  # noqa: E402 - also puts the repo on sys.path

SITE = "penny-acres"
ROOM_SIZE = 30
# Devices per process: a few hundred threaded runtimes in one interpreter fight over its GIL
# (250 per process starved their own queue threads past the runtime's 10 s call timeout).
PER_PROC = 100
TECH, TECH_PASSWORD = "bench.tech", "bench technician password"


def device_ids(count: int) -> list[tuple[str, str]]:
    """[(room, device)]: rooms of ROOM_SIZE devices."""
    return [(f"bench-{i // ROOM_SIZE + 1:03d}", f"bench-pi-{i + 1:04d}") for i in range(count)]


def tree_files(count: int, allow: str | None = None) -> dict[str, str]:
    """The example tree's site.yaml and key stages, and only the bench's rooms (the Rollout view
    then lists exactly the simulated devices).  *allow*: one more allowed domain (a new version)."""
    files = {"site.yaml": (ROOT / "config" / "site.yaml").read_text()}
    for path in sorted((ROOT / "config" / "keystages").glob("*.yaml")):
        text = path.read_text()
        if allow and path.stem == "ks2":
            text = _add_allowed(text, allow)
        files[f"keystages/{path.name}"] = text
    rooms: dict[str, list[str]] = {}
    for room, device in device_ids(count):
        rooms.setdefault(room, []).append(device)
    for room, devices in rooms.items():
        lines = [f"room: {room}", f"name: Bench {room}", "key_stage: ks2", "alert_staff: [m.khan]", "devices:"]
        for i, device in enumerate(devices, 1):
            lines += [f"  - id: {device}", f"    seat: Table {i}", "    hardware: {button_pin: 17}"]
        files[f"rooms/{room}.yaml"] = "\n".join(lines) + "\n"
    return files


def _add_allowed(text: str, domain: str) -> str:
    """ks2.yaml with *domain* added to its allowlist (the change a technician would make)."""
    import yaml

    data = yaml.safe_load(text)
    data.setdefault("allow_domains", []).append(domain)
    return yaml.safe_dump(data, sort_keys=False)


# --------------------------------------------------------------------------- the devices


def devices_main(args) -> int:
    """One process of simulated devices: a real agent runtime per device, until SIGTERM."""
    import logging

    from gpiozero.pins.mock import MockFactory

    from agent.config.schema import AgentBootstrap
    from agent.core.heap import freeze_startup
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessScreen
    from agent.report.screen import Screen
    from agent.signals import StopSignals

    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.worker} %(name)s %(message)s")
    tmp, state_root = Path(args.tmp), Path(args.state)
    stop = StopSignals()
    runtimes = []
    for device in json.loads((tmp / f"devices-{args.worker}.json").read_text()):
        state = state_root / device
        boot = AgentBootstrap(device=device, site=SITE, broker_url=f"mqtt://127.0.0.1:{args.port}",
                              collector_url=f"http://127.0.0.1:{args.http}",
                              credentials=str(tmp / "credentials" / f"{device}.yaml"), state_dir=str(state),
                              control_socket=str(state / "control.sock"), screen_backend="headless")
        runtimes.append(Runtime(boot, screen=Screen(HeadlessScreen()), pin_factory=MockFactory(),
                                control=False).start())
    freeze_startup()
    try:
        stop.wait()
    finally:
        # Each stop says goodbye on MQTT and joins threads: in parallel, or hundreds take minutes.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda runtime: runtime.stop(), runtimes))
    return 0


# --------------------------------------------------------------------------- the bench


class Collector:
    """The collector's store, read as the Rollout view reads it (plus ``received_at``)."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def applied(self, version: str) -> dict[str, float]:
        """{device: epoch seconds} the collector stored its config_applied for *version*."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute("SELECT device, MIN(received_at) FROM events WHERE type = 'config_applied' "
                                "AND json_extract(data, '$.version') = ? GROUP BY device", (version,)).fetchall()
        finally:
            conn.close()
        return {device: datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() for device, at in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=None,
                        help=f"processes the simulated devices run in (default: one per {PER_PROC} devices)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for every device to apply")
    for hidden in ("--worker", "--port", "--http", "--tmp", "--state"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return devices_main(args)
    if args.procs is None:
        args.procs = -(-args.devices // PER_PROC)
    for flag, value in (("--devices", args.devices), ("--procs", args.procs), ("--timeout", args.timeout)):
        if value < 1:
            parser.error(f"{flag}: must be at least 1")

    import requests

    from agent.config import load_tree
    from server.devices import create_enrol_token, enrol
    from server.http.auth import hash_password
    from server.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    shm = Path("/dev/shm")
    state = Path(tempfile.mkdtemp(prefix="rollout-bench-", dir=shm if shm.is_dir() else tmp))
    config = tmp / "config"
    for rel, text in tree_files(args.devices).items():
        (config / rel).parent.mkdir(parents=True, exist_ok=True)
        (config / rel).write_text(text)
    devices = device_ids(args.devices)
    ids = [device for _, device in devices]

    port, http = free_port(), free_port()
    (tmp / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                        "max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else ""))
    procs: list[subprocess.Popen] = []
    mosquitto = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp / "mosquitto.conf")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        # The technician as `classroom-server user add` makes them; every device enrolled with
        # a one-time token (server/devices.py), its credentials file as `classroom-agent enrol` writes it.
        db = tmp / "server.db"
        store = Store.open(f"sqlite:///{db}")
        store.add_user(TECH, "technician", hash_password(TECH_PASSWORD), sites={SITE: "technician"})
        (tmp / "credentials").mkdir()
        started = time.monotonic()
        tree = load_tree(config)
        for _, device in devices:
            creds = enrol(store, create_enrol_token(store, device, TECH, tree)["token"], tree)
            (tmp / "credentials" / f"{device}.yaml").write_text(json.dumps(
                {k: creds[k] for k in ("username", "password", "site", "room")}))
        store.close()
        print(f"enrolled {args.devices} devices in {time.monotonic() - started:.1f} s")

        server = subprocess.Popen([*_classroom_server(), "serve", "--config", str(config),
                                   "--db", f"sqlite:///{db}", "--broker", f"mqtt://127.0.0.1:{port}",
                                   "--port", str(http), "--plain-http", "--reports-dir", str(tmp / "reports")],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"))
        base = f"http://127.0.0.1:{http}"
        wait_for(lambda: _up(base), 60, "the collector")
        tech = requests.Session()
        resp = tech.post(f"{base}/api/v1/login", json={"username": TECH, "password": TECH_PASSWORD}, timeout=30)
        resp.raise_for_status()
        tech.headers["Authorization"] = f"Bearer {resp.json()['token']}"

        # The first version: published, then the devices boot and fetch it.
        first = tech.post(f"{base}/api/v1/config/rollouts", timeout=60,
                          json={"files": tree_files(args.devices), "why": "bench: the school's config"})
        if first.status_code != 201:
            raise SystemExit(f"bench: first publish refused: HTTP {first.status_code} {first.text[:500]}")
        v0 = first.json()["version"]
        me = [sys.executable, str(Path(__file__).resolve())]
        share = -(-len(ids) // args.procs)
        for worker in range(args.procs):
            chunk = ids[worker * share:(worker + 1) * share]
            if not chunk:
                continue
            (tmp / f"devices-{worker}.json").write_text(json.dumps(chunk))
            procs.append(subprocess.Popen([*me, "--worker", str(worker), "--port", str(port), "--http", str(http),
                                           "--tmp", str(tmp), "--state", str(state)],
                                          stdout=subprocess.DEVNULL, stderr=open(tmp / f"devices-{worker}.log", "w")))
        collector = Collector(db)
        started = time.monotonic()
        wait_for(lambda: len(collector.applied(v0)) == args.devices or _dead(procs, server), 600,
                 f"{args.devices} devices to boot and apply the first version")
        if _dead(procs, server):
            raise SystemExit("bench: a device process or the collector died (ROLLOUT_BENCH_KEEP=1 keeps their logs)")
        print(f"{args.devices} devices booted on version {v0} in {time.monotonic() - started:.1f} s "
              f"({args.procs} processes)")
        wait_for(lambda: _all_online(tech, base, args.devices), 120, "every device's link to be up")

        # The rollout.
        files = tree_files(args.devices, allow="www.topmarks.co.uk")
        cpu = {"collector": [server.pid], "broker": [mosquitto.pid], "devices": [p.pid for p in procs]}
        cpu_before = {part: _cpu_seconds(pids) for part, pids in cpu.items()}
        t0 = time.time()
        resp = tech.post(f"{base}/api/v1/config/rollouts", json={"files": files, "why": "bench: allow topmarks"},
                         timeout=60)
        answered = time.time()
        if resp.status_code != 201:
            raise SystemExit(f"bench: publish refused: HTTP {resp.status_code} {resp.text[:500]}")
        v1 = resp.json()["version"]
        deadline = time.monotonic() + args.timeout
        got: dict[str, float] = {}
        while time.monotonic() < deadline and len(got) < args.devices:
            got = collector.applied(v1)
            time.sleep(0.2)
        spent = {part: _cpu_seconds(pids) - cpu_before[part] for part, pids in cpu.items()}
        status = tech.get(f"{base}/api/v1/config/status", timeout=60).json()
        counts = status.get("counts", {})
        current = {row["device"] for room in status.get("rooms", []) for row in room["devices"]
                   if row["state"] == "current"}
        failed = args.devices - len(current & set(got))
        latencies = [got[d] - t0 for d in ids if d in got]
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        print(f"publish answered in {answered - t0:.2f} s; {len(got)}/{args.devices} devices applied {v1} "
              f"(Rollout view: {counts})")
        if latencies:
            print(f"publish -> config_applied stored: p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(latencies):.2f} s "
                  f"(target p95 <= 10 s)")
        print("CPU seconds during the rollout: " + ", ".join(f"{part} {s:.1f}" for part, s in spent.items())
              + f" (this machine has {os.cpu_count()} cores; the simulated devices share them)")
        print(f"rollout devices={args.devices} p50_s={p50:.2f} p95_s={p95:.2f} failed={failed}")
        return 0 if failed == 0 else 1
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if server is not None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        mosquitto.terminate()
        mosquitto.wait(10)
        if os.environ.get("ROLLOUT_BENCH_KEEP"):
            print(f"kept {tmp} and {state}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)


def _classroom_server() -> list[str]:
    """The installed ``classroom-server`` next to this Python (the venv's), else the module."""
    script = Path(sys.executable).with_name("classroom-server")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from server.cli import main; main()"]


def _up(base: str) -> bool:
    import requests

    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code < 500
    except requests.RequestException:
        return False


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of *pids* so far (Linux /proc; 0 where it cannot be read)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _dead(procs: list[subprocess.Popen], server: subprocess.Popen) -> bool:
    return any(p.poll() is not None for p in [*procs, server])


def _all_online(tech, base: str, count: int) -> bool:
    rows = tech.get(f"{base}/api/v1/devices", timeout=60).json()
    rows = rows.get("devices", rows) if isinstance(rows, dict) else rows
    return sum(1 for d in rows if d.get("status") == "online") >= count


if __name__ == "__main__":
    sys.exit(main())
