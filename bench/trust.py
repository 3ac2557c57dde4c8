"""bench/trust.py: a trust of S schools x D devices, per-school brokers bridged to a central one.

Starts everything on this machine (tests/services.py: free loopback ports): PostgreSQL, a
central mosquitto, one mosquitto per school, and ``classroom-server serve --ingest-workers N``
on the central broker and PostgreSQL.  Every broker runs the files ``classroom-server
broker-config`` writes (server/broker_config.py, the same functions the command calls), from a
config tree per school (``--devices`` devices in rooms of 30, a teacher per room): device,
staff, bridge and collector accounts with their ACLs, the central broker on TLS (a CA made
here), each school's TLS bridge of its own topics to it with its queue.  Then:

1. **Devices**: S x D simulated devices, each its own MQTT connection to its school's broker,
   held by a few processes with a minimal MQTT 3.1.1 client (CONNECT with the device's own
   username and password, then a QoS 0 heartbeat at
   the real interval, ``--heartbeat`` seconds, spread evenly): what costs the brokers and the
   collector is the connections and the heartbeats, not the client library.
2. **Alert p99, in school**: while the heartbeats run, ``--presses`` alert presses, each from
   a device account to its school's broker and on to the room's teacher account subscribed on
   that same broker (the path that never leaves the building); p99 of press -> teacher.
3. **Ingest**: a burst of ``--burst`` blocked events sent into the school brokers (one
   ``mosquitto_pub`` per school, as one of its devices), over the bridges and the shared subscription into
   PostgreSQL; events/s from the first send to the last stored.  Twice: one event per
   message (live events), then the same number as the agent sends a backlog, ``--batch``
   (100) to a message (agent/protocol.py, "batches"): a trust's bursts are backlogs, every
   device of a school at once after its link, its broker or the collector comes back.  The
   second, against a raw ``COPY`` of the same rows (bench/ingest.py's loader), is ``pg_ratio``;
   the first's ratio is printed before the last line.
4. **Memory**: the resident memory of every broker and of ``serve`` with its workers, per
   1,000 devices (the simulated devices themselves are not counted).
5. **A year**: bench/year.py on the same PostgreSQL (``--year-events`` blocked attempts): the
   weekly and term reports (``report_year_s``: the slower) and the retention purge while ingest
   keeps storing (``purge_year_s``).

Last line::

    trust devices=N alert_p99_ms=... ingest_eps=... pg_ratio=... report_year_s=... purge_year_s=... rss_mb_per_1k_devices=...

Targets (issue 17): alert p99 <= 25 ms; pg_ratio >= 0.2; report_year_s <= 2; the purge does not
stop ingest.  Usage: ``python bench/trust.py [--schools S] [--devices D] [--workers N] ...``
(defaults 50 x 400).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, free_port, percentile, wait_for  # noqa: E402 - also puts the repo and tests/ on sys.path
from rawmqtt import mqtt_connect, mqtt_publish  # noqa: E402

from agent import protocol  # noqa: E402

PREFIX = protocol.DEFAULT_PREFIX
ROOM_SIZE = 30  # devices per room


def site_of(i: int) -> str:
    return f"school-{i:03d}"


def device_places(schools: int, devices: int, first: int = 0) -> list[tuple[int, str, str, str]]:
    """(school index, site, room, device) of every simulated device (schools *first* onwards)."""
    return [(s, site_of(s), room_of(d), f"s{s:03d}-pi-{d:04d}")
            for s in range(first, first + schools) for d in range(devices)]


def device_process(places: list, ports: dict, interval: float, connected, stop) -> None:
    """Hold one MQTT connection per device of *places* and send each one's heartbeat every
    *interval* seconds, spread evenly; whatever the brokers send (CONNACK) is read and dropped."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    socks = []
    for school, site, room, device in places:
        sock = socket.create_connection(("127.0.0.1", ports[school]), timeout=30)
        sock.sendall(mqtt_connect(device, int(interval * 3), username=device, password=password_of(device)))
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        socks.append((sock, protocol.topic(PREFIX, site, room, device, "heartbeat")))
        connected.value += 1
    start = time.monotonic()
    step = interval / max(1, len(socks))
    i = 0
    while not stop.is_set():
        due = start + i * step
        while True:
            wait = due - time.monotonic()
            for key, _ in sel.select(timeout=max(0.0, min(wait, 0.5))):
                try:
                    if not key.fileobj.recv(65536):
                        sel.unregister(key.fileobj)
                except (BlockingIOError, ConnectionError):
                    pass
            if wait <= 0 or stop.is_set():
                break
        sock, topic = socks[i % len(socks)]
        payload = protocol.encode({"ts": protocol.now_ts(), "cpu": 3.5, "mem": 41.0, "temp": 48.2,
                                   "uptime": time.monotonic() - start})
        try:
            sock.send(mqtt_publish(topic, payload))  # QoS 0, a heartbeat's
        except (BlockingIOError, ConnectionError):
            pass
        i += 1
    for sock, _ in socks:
        sock.close()


# --------------------------------------------------------------------------- the trust

def password_of(account: str) -> str:
    """Every simulated account's password (given to broker-config as its ``--users``)."""
    return f"bench-{account}-pw"


def room_of(d: int) -> str:
    return f"r{d // ROOM_SIZE}"


def press_device(site: str) -> str:
    """The device each school's presses and burst come from (in room r0; not one of the heartbeating ones)."""
    return f"{site}-press"


def teacher_of(site: str, room: str) -> str:
    return f"t-{site}-{room}"


def make_tree(folder: Path, index: int, devices: int) -> Path:
    """A school's config tree: the example's site.yaml and key stages under its own site id,
    *devices* devices (``device_places``' ids) in rooms of ROOM_SIZE, each room with its teacher."""
    site = site_of(index)
    folder.mkdir(parents=True)
    shutil.copytree(ROOT / "config" / "keystages", folder / "keystages")
    text = (ROOT / "config" / "site.yaml").read_text()
    (folder / "site.yaml").write_text(text.replace("site: penny-acres", f"site: {site}")
                                      .replace("school: Penny Acres Primary School", f"school: Bench School {index}"))
    (folder / "rooms").mkdir()
    rooms: dict[str, list[str]] = {"r0": [press_device(site)]}
    for _, _, room, device in device_places(1, devices, first=index):
        rooms.setdefault(room, []).append(device)
    for room, ids in rooms.items():
        lines = [f"room: {room}", f"name: Room {room}", "key_stage: ks2", f"alert_staff: [{teacher_of(site, room)}]",
                 "devices:"]
        lines += [f"  - id: {d}\n    seat: Seat {n + 1}" for n, d in enumerate(ids)]
        (folder / "rooms" / f"{room}.yaml").write_text("\n".join(lines) + "\n")
    return folder


def build_brokers(work: Path, schools: int, devices: int, workers: int) -> tuple:
    """broker-config's files for the central broker and every school, the brokers started:
    (central, [(index, school broker)], CA file, the collector's password file, {bridge account: password})."""
    from trust_fixtures import make_ca, start_generated

    from agent.config import load_tree
    from server import broker_config as bc

    run_as = "root" if os.geteuid() == 0 else None  # as the tests do: mosquitto would drop to its own user
    trees = [load_tree(make_tree(work / "config" / site_of(s), s, devices)) for s in range(schools)]
    tls = make_ca(work / "tls")
    central_out, central_port = work / "central", free_port()
    bc.generate_central(trees, central_out, users={bc.DEFAULT_SERVER_USER: password_of(bc.DEFAULT_SERVER_USER)},
                        ingest_workers=workers,
                        opts=bc.ListenerOptions(port=central_port, bind="127.0.0.1", certfile=str(tls["cert"]),
                                                keyfile=str(tls["key"]), run_as=run_as,
                                                log_file=str(central_out / "mosquitto.log")))
    central = start_generated(central_out, central_port)
    brokers, bridges = [], {}
    for s, tree in enumerate(trees):
        site, out = tree.site.site, work / f"school-{s}"
        users = {acc: password_of(acc) for acc, a in bc.build_accounts(tree).items()
                 if "device" in a.roles or "teacher" in a.roles}
        username, password = bc.load_bridge_credentials(central_out / "credentials" / f"{bc.bridge_user(site)}.yaml",
                                                        site)
        bridges[username] = password
        port = free_port()
        bc.generate(tree, out, users=users,
                    opts=bc.ListenerOptions(port=port, bind="127.0.0.1", run_as=run_as,
                                            log_file=str(out / "mosquitto.log")),
                    bridge=bc.BridgeOptions(f"mqtts://127.0.0.1:{central.port}", username, password, str(tls["ca"])))
        brokers.append((s, start_generated(out, port)))
    secret = work / "collector-password"
    secret.write_text(password_of(bc.DEFAULT_SERVER_USER) + "\n")
    secret.chmod(0o600)
    return central, brokers, tls["ca"], secret, bridges


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds each live process of *pids* has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return out


def cpu_used(before: dict[int, float], pids: list[int]) -> float:
    """CPU seconds used since *before* by the processes alive then and now (a PostgreSQL
    backend that ended meanwhile takes its count with it)."""
    now = cpu_seconds(pids)
    return sum(now[pid] - before[pid] for pid in now if pid in before)


def poll(predicate, timeout: float, what: str, every: float = 0.1):
    """common.wait_for, but at *every* seconds: a COUNT(*) every 2 ms would cost a core."""
    return wait_for(lambda: predicate() or time.sleep(every), timeout, what)


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(f"classroom_{name} "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def measure_presses(schools: list, presses: int) -> list[float]:
    """Press -> teacher milliseconds, each on one school's broker (in school)."""
    from services import close_client, mqtt_client

    latencies: list[float] = []
    sent: dict[str, float] = {}
    got = threading.Event()
    pairs = []
    for index, broker in schools:
        site = site_of(index)
        teacher_name = teacher_of(site, "r0")
        teacher = mqtt_client(broker, teacher_name, username=teacher_name, password=password_of(teacher_name))
        subscribed = threading.Event()
        teacher.on_subscribe = lambda *a, ev=subscribed: ev.set()

        def on_message(client, userdata, message):
            data = json.loads(message.payload)
            t0 = sent.pop(data["id"], None)
            if t0 is not None:
                latencies.append((time.perf_counter() - t0) * 1000)
                got.set()

        teacher.on_message = on_message
        teacher.subscribe(f"{PREFIX}/{site}/r0/+/alert", qos=1)  # the room teacher's ACL
        if not subscribed.wait(10):
            raise SystemExit(f"trust: the teacher client of {site} did not subscribe")
        device = mqtt_client(broker, press_device(site), username=press_device(site),
                             password=password_of(press_device(site)))
        pairs.append((site, teacher, device))
    try:
        for n in range(presses):
            site, _, device = pairs[n % len(pairs)]
            alert_id = str(uuid.uuid4())
            payload = protocol.encode({"id": alert_id, "state": "raised", "site": site, "room": "r0",
                                       "device": press_device(site), "seat": "Seat 1", "ts": protocol.now_ts(),
                                       "by": None})
            got.clear()
            sent[alert_id] = time.perf_counter()
            device.publish(protocol.topic(PREFIX, site, "r0", press_device(site), "alert"), payload, qos=1)
            got.wait(5)
            time.sleep(0.02)
    finally:
        for _, teacher, device in pairs:
            close_client(teacher)
            close_client(device)
    return latencies


def burst(school_brokers: list, total: int, work: Path, ca: Path | None = None,
          passwords: dict | None = None, batch: int = 1) -> tuple[int, list]:
    """One mosquitto_pub command per school sending its share of *total* blocked events (QoS 1,
    up to 1,000 in flight as the outbox allows) as the school's press device, with its input
    file written: (events, [(argv, path)]).  *batch* > 1: the events go as the agent sends a
    backlog, *batch* to a message (agent/protocol.py, encode_batch).  With *ca*, the brokers
    are the central one (TLS), and each school's share goes as its bridge account (the only
    account there that may; its password in *passwords*)."""
    passwords = passwords or {}
    from services import find_binary

    tool = find_binary("mosquitto_pub")
    if tool is None:
        raise SystemExit("trust: mosquitto_pub is not installed (apt install mosquitto-clients)")
    per = max(1, total // len(school_brokers))
    procs = []
    now = protocol.now_ts()
    for index, broker in school_brokers:
        site = site_of(index)
        device = press_device(site)
        account = f"bridge-{site}" if ca else device
        lines = [protocol.encode({"id": str(uuid.uuid4()), "type": "blocked", "ts": now, "site": site, "room": "r0",
                                  "device": device, "domain": f"site{i % 997}.example.com", "profile": "ks2",
                                  "user": f"pupil{i % 300}", "count": 1}) for i in range(per)]
        if batch > 1:
            lines = [protocol.encode_batch(lines[i:i + batch]) for i in range(0, len(lines), batch)]
        path = work / f"burst-{site}.txt"
        path.write_bytes(b"\n".join(lines) + b"\n")
        procs.append(([tool, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-V", "5", "-M", "1000",
                       "-u", account, "-P", passwords.get(account) or password_of(account), *(["--cafile", str(ca)] if ca else []),
                       "-t", protocol.topic(PREFIX, site, "r0", device, "event"), "-l"], path))
    return per * len(school_brokers), procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schools", type=int, default=50)
    parser.add_argument("--devices", type=int, default=400, help="devices per school")
    parser.add_argument("--workers", type=int, default=2, help="serve --ingest-workers (default 2: one per core)")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="heartbeat interval, s (the agent's default)")
    parser.add_argument("--device-procs", type=int, default=4, help="processes holding the device connections")
    parser.add_argument("--presses", type=int, default=400)
    parser.add_argument("--press-schools", type=int, default=10, help="schools the presses are spread over")
    parser.add_argument("--burst", type=int, default=100_000, help="events in the ingest burst")
    parser.add_argument("--batch", type=int, default=protocol.BATCH_MAX,
                        help="events per message in the backlog burst (site.yaml broker.batch_events)")
    parser.add_argument("--burst-direct", action="store_true",
                        help="send the burst straight to the central broker (no bridges): what the bridges cost")
    parser.add_argument("--year-events", type=int, default=5_000_000, help="blocked attempts in bench/year.py's year")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import year
    from ingest import raw_pg, rows_for

    from server.store import Store
    from services import Postgres, spawn, terminate

    work = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    total_devices = args.schools * args.devices
    cleanup = []
    serve = None
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    sims = []
    try:
        pg = Postgres().start()
        cleanup.append(pg.cleanup)
        central, schools, ca, secret, bridge_passwords = build_brokers(work, args.schools, args.devices, args.workers)
        cleanup.append(central.stop)
        cleanup += [b.stop for _, b in schools]
        dsn = pg.new_database("trust")
        Store.open(dsn).close()
        port = free_port()
        cli = str(Path(sys.executable).parent / "classroom-server")
        serve = spawn([cli, "serve", "--db", dsn, "--broker", f"mqtts://127.0.0.1:{central.port}", "--ca-file", str(ca),
                       "--mqtt-password-file", str(secret), "--port", str(port),
                       "--ingest-workers", str(args.workers), "--ingest-id", "trust",
                       "--reports-dir", str(work / "reports")], log_path=work / "serve.log", cwd=str(ROOT))
        wait_for(lambda: metric(port, "ingest_workers_connected") == args.workers, 60, "serve's ingest workers")
        wait_for(lambda: central.log_path.read_text().count(" as bridge-") >= args.schools, 60,
                 "every school's bridge to connect")

        # 1. Devices.
        places = device_places(args.schools, args.devices)
        ports = {s: b.port for s, b in schools}
        share = [places[i::args.device_procs] for i in range(args.device_procs)]
        counters = [ctx.Value("q", 0, lock=False) for _ in share]
        started = time.monotonic()
        sims = [ctx.Process(target=device_process, args=(part, ports, args.heartbeat, counters[i], stop), daemon=True)
                for i, part in enumerate(share) if part]
        for p in sims:
            p.start()
        wait_for(lambda: sum(c.value for c in counters) == total_devices or any(not p.is_alive() for p in sims),
                 600, "the devices to connect")
        if sum(c.value for c in counters) != total_devices:
            raise SystemExit(f"trust: only {sum(c.value for c in counters)} of {total_devices} devices connected")
        connect_s = time.monotonic() - started
        print(f"trust: {total_devices:,} devices connected to {args.schools} school brokers in {connect_s:.1f}s",
              flush=True)
        store = Store.open(dsn)
        # One full heartbeat round through the bridges into PostgreSQL.
        poll(lambda: store.count("heartbeats") >= total_devices, args.heartbeat * 4 + 60,
                 "a heartbeat from every device to be stored")
        before, t0 = store.count("heartbeats"), time.monotonic()

        # 2. Presses, in school, under the heartbeat load.
        latencies = measure_presses(schools[:args.press_schools], args.presses)
        if len(latencies) < args.presses:
            raise SystemExit(f"trust: only {len(latencies)} of {args.presses} presses reached the teacher")
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        hb_rate = (store.count("heartbeats") - before) / (time.monotonic() - t0)
        print(f"trust: press -> teacher p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(latencies)} presses over "
              f"{min(args.press_schools, args.schools)} schools); heartbeats stored {hb_rate:,.0f}/s "
              f"(expected {total_devices / args.heartbeat:,.0f}/s)", flush=True)

        # 4. Memory, with every device connected (before the burst fills queues).
        pids = [b.proc.pid for _, b in schools] + [central.proc.pid, serve.pid] + children(serve.pid)
        rss = rss_mb(pids)
        print(f"trust: {rss:,.0f} MB resident in {args.schools + 1} brokers and serve ({args.workers} ingest "
              "workers)", flush=True)

        # 3. The ingest bursts over the bridges: live events (one per message), then backlogs
        # (every school's events at once, as the agent sends a backlog: batches).
        pg_pids = [p for p in children(pg.proc.pid)] + [pg.proc.pid]
        groups = {"school brokers": [b.proc.pid for _, b in schools], "central broker": [central.proc.pid],
                  "serve and its workers": [serve.pid] + children(serve.pid), "postgresql": pg_pids}
        targets = [(s, central) for s, _ in schools] if args.burst_direct else schools

        def ingest_burst(batch: int) -> tuple[int, float]:
            # Counted by serve's own /metrics (every worker's, summed), not COUNT(*) on the table,
            # which would compete with the workers for the two cores.
            events_before = metric(port, "ingest_events_stored_total") or 0
            cpu_before = {name: cpu_seconds(pids) for name, pids in groups.items()}
            rows_before = store.count("events")
            total, commands = burst(targets, args.burst, work, ca if args.burst_direct else None, bridge_passwords,
                                    batch)
            start = time.perf_counter()
            pubs = [subprocess.Popen(argv, stdin=open(path, "rb")) for argv, path in commands]
            poll(lambda: (metric(port, "ingest_events_stored_total") or 0) - events_before >= total, 600,
                 "the burst to be stored", every=0.05)
            elapsed = time.perf_counter() - start
            for p in pubs:
                p.wait(30)
            # Where the two cores went during the burst (the publishers had the rest).
            used = {name: cpu_used(cpu_before[name], pids) for name, pids in groups.items()}
            how = f"in batches of {batch}" if batch > 1 else "one per message"
            print(f"trust: CPU during the burst ({how}): " + ", ".join(f"{name} {100 * s / elapsed:.0f}%"
                                                                        for name, s in used.items()), flush=True)
            if store.count("events") - rows_before != total:
                raise SystemExit(f"trust: {store.count('events') - rows_before} rows stored for {total} events")
            return total, total / elapsed

        total, single_eps = ingest_burst(1)
        total, eps = ingest_burst(args.batch)
        raw = raw_pg(rows_for(total, 8), pg.new_database("raw"))
        via = "straight to the central broker" if args.burst_direct else f"over {args.schools} bridges"
        print(f"trust: ingest {via} and {args.workers} workers ({total:,} events each): {single_eps:,.0f} events/s "
              f"one per message (ratio {single_eps / raw:.3f}), {eps:,.0f} events/s as backlogs in batches of "
              f"{args.batch}; raw COPY {raw:,.0f} rows/s", flush=True)
        store.close()

        stop.set()
        for p in sims:
            p.join(30)
        terminate(serve)
        serve = None

        # 5. A year.
        # A broker of its own: the stopped serve's sessions still hold their share of the central one's group.
        y = year.run(args.year_events, 50, 8, 200, pg=pg)
        if y["stored_during_purge"] != y["sent_during_purge"]:
            raise SystemExit(f"trust: ingest stored {y['stored_during_purge']} of {y['sent_during_purge']} events "
                             "sent during the purge")
        report_s = max(y["report_week_s"], y["report_term_s"])
        print(f"trust devices={total_devices} alert_p99_ms={p99:.1f} ingest_eps={eps:.0f} pg_ratio={eps / raw:.3f} "
              f"report_year_s={report_s:.2f} purge_year_s={y['purge_year_s']:.1f} "
              f"rss_mb_per_1k_devices={rss / (total_devices / 1000):.1f}")
    finally:
        stop.set()
        for p in sims:
            p.join(10)
            if p.is_alive():
                p.kill()
        if serve is not None:
            terminate(serve)
        for fn in reversed(cleanup):
            fn()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
