#!/usr/bin/env python3
"""DNS overhead of the agent's filter (DESIGN.md "Performance targets").

In one run, on free loopback ports (tests/services.py), with dnsperf:

(a) the agent's dnsmasq, run by the REAL filter component (agent/filter) inside the
    REAL agent runtime (agent/core/runtime.py): allowlist servers-file, address=/#/,
    log-queries to the file the agent follows (the follower thread runs during the bench);
(b) a plain dnsmasq forwarder (no-resolv, server=<stub>, same cache size, no logging);

both forwarding to the same stub upstream (a third dnsmasq answering fixed records with a
300 s TTL, like a real resolver), with the same query file of allowed names.  Each
configuration gets a throughput run (dnsperf as fast as it can, 100 outstanding) and a
latency run at a fixed rate (--qps), interleaved over --rounds rounds (the order flips
each round); the ratios are the medians of the per-round agent/plain ratios, because the
2-core machine is shared and background load moves both numbers together.

(c) blocked query -> event STORED on the server: the agent's runtime publishes through its
    outbox to a local mosquitto; the server's real ingest worker (server/ingest/) writes a
    SQLite store; the bench polls the store.  One unique blocked name per sample, spaced
    apart; latency = stored (first seen by polling, 10 ms resolution) - query sent.  It
    includes the coalescing settle time (the filter waits ~1 s for repeats on purpose).

Last line: ``dns_overhead latency_ratio=… throughput_ratio=… blocked_event_p99_ms=…``
(targets: latency_ratio <= 1.1, throughput_ratio >= 0.9, blocked_event_p99_ms <= 2000).

    .venv/bin/python bench/dns_overhead.py [--seconds 3] [--rounds 5] [--qps 2000] [--blocked 40]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, percentile  # noqa: E402 - also puts the repo and tests/ on sys.path
from services import Dnsmasq, Mosquitto, free_port, require_binary  # noqa: E402

SITE, DEVICE = "penny-acres", "5b-pi-01"
STUB = """
local-ttl=300
address=/bbc.co.uk/192.0.2.10
address=/bbci.co.uk/192.0.2.11
address=/topmarks.co.uk/192.0.2.12
address=/phonicsplay.co.uk/192.0.2.13
address=/ictgames.com/192.0.2.14
address=/oxfordowl.co.uk/192.0.2.15
address=/purplemash.com/192.0.2.16
address=/mathsframe.co.uk/192.0.2.17
address=/natgeokids.com/192.0.2.18
address=/swiggle.org.uk/192.0.2.19
address=/dkfindout.com/192.0.2.20
address=/kiddle.co/192.0.2.21
address=/scratch.mit.edu/192.0.2.22
address=/code.org/192.0.2.23
address=/ttrockstars.com/192.0.2.24
"""
DOMAINS = re.findall(r"address=/([^/]+)/", STUB)


def dnsperf(port: int, qfile: Path, seconds: int, qps: int | None) -> tuple[float, float]:
    """(queries/s, median latency ms).  With a rate (-Q) each answer's latency is read
    (-v) and the median used: a mean is dominated by scheduling spikes on a shared box."""
    argv = [require_binary("dnsperf"), "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-l", str(seconds),
            "-q", "100", "-c", "1"]
    if qps:
        argv += ["-Q", str(qps), "-v"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    qps_m = re.search(r"Queries per second:\s+([\d.]+)", out)
    lat_m = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not qps_m or not lat_m:
        raise SystemExit(f"bench: cannot parse dnsperf output:\n{out}")
    if lost and int(lost.group(1)):
        print(f"  (dnsperf: {lost.group(1)} queries lost on port {port})")
    each = [float(m) for m in re.findall(r"^> NOERROR \S+ A ([\d.]+)$", out, re.M)]
    latency = statistics.median(each) if each else float(lat_m.group(1))
    return float(qps_m.group(1)), latency * 1000


def start_agent(tmp: Path, broker: Mosquitto, stub: Dnsmasq):
    from gpiozero.pins.mock import MockFactory

    from agent.config.schema import AgentBootstrap, Filtering
    from agent.filter.component import FilterComponent
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessScreen
    from agent.report.screen import Screen

    boot = AgentBootstrap(device=DEVICE, site=SITE, broker_url=f"mqtt://127.0.0.1:{broker.port}",
                          collector_url="http://127.0.0.1:9", credentials=str(tmp / "none.yaml"),
                          state_dir=str(tmp / "state"), control_socket=str(tmp / "control.sock"),
                          config_dir=str(ROOT / "config"), screen_backend="headless",
                          dnsmasq_dir=str(tmp / "dnsmasq"), chromium_policy_dir=str(tmp / "chromium" / "managed"),
                          firefox_policy_dir=str(tmp / "firefox" / "policies"), apply_nftables=False,
                          chromium_native_hosts_dir=str(tmp / "native-hosts"), blockpage_dir=str(tmp / "blockpage"))
    runtime = Runtime(boot, screen=Screen(HeadlessScreen()), pin_factory=MockFactory(), control=False)
    filt = FilterComponent(filtering=Filtering(upstream_dns=["127.0.0.1"]), port=free_port(),
                           filter_port=free_port(), upstream_port=stub.port)
    runtime.add_component(filt)
    runtime.start()
    deadline = time.monotonic() + 20
    while not (runtime.link is not None and runtime.link.connected.is_set() and filt.spec is not None):
        if time.monotonic() > deadline:
            raise SystemExit("bench: the agent did not connect / apply its filter")
        time.sleep(0.05)
    return runtime, filt


def measure_blocked(filt, store, samples: int, gap: float) -> list[float]:
    from agent.filter import dnsclient

    sent: dict[str, float] = {}
    stored: dict[str, float] = {}
    tag = os.urandom(3).hex()
    names = [f"blocked-{tag}-{i}.example.com" for i in range(samples)]
    done = threading.Event()

    def poll():
        while not done.is_set():
            for row in store.events(type="blocked", limit=5000):
                domain = row["data"].get("domain") if isinstance(row.get("data"), dict) else None
                if domain in sent and domain not in stored:
                    stored[domain] = time.time()
            if len(stored) == len(names):
                return
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    for name in names:
        sent[name] = time.time()
        rcode, _ = dnsclient.query(name, server="127.0.0.1", port=filt.port)
        assert rcode == "NXDOMAIN", rcode
        time.sleep(gap)
    poller.join(30)
    done.set()
    missing = [n for n in names if n not in stored]
    if missing:
        print(f"  {len(missing)} blocked event(s) not stored within 30 s")
    return [(stored[n] - sent[n]) * 1000 for n in names if n in stored]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3, help="length of each dnsperf run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--qps", type=int, default=2000, help="rate of the latency runs")
    ap.add_argument("--blocked", type=int, default=40, help="blocked-event samples")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("dnsmasq", "dnsperf", "mosquitto"):
        require_binary(name)

    from server.ingest import Ingest
    from server.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="dns-bench-", dir="/tmp"))
    os.chmod(tmp, 0o755)  # the agent's dnsmasq re-reads its files as the dnsmasq user
    stub = Dnsmasq(tmp / "stub", STUB).start()
    plain = Dnsmasq(tmp / "plain", f"server=127.0.0.1#{stub.port}\ncache-size=1000\n").start()
    broker = Mosquitto(tmp / "broker").start()
    store = Store.open(f"sqlite:///{tmp / 'server.db'}")
    ingest = Ingest(store, f"mqtt://127.0.0.1:{broker.port}").start()
    runtime = filt = None
    try:
        if not ingest.subscribed.wait(10):
            raise SystemExit("bench: server ingest did not subscribe")
        runtime, filt = start_agent(tmp, broker, stub)
        qfile = tmp / "queries.txt"
        names = [f"{p}{d}" for d in DOMAINS for p in ("", "www.", "static.", "files.", "m.", "img.", "api.")]
        qfile.write_text("".join(f"{n} A\n" for n in names))
        print(f"dns_overhead: {len(names)} allowed names, {args.rounds} round(s) x {args.seconds} s per run")
        # Warm both caches identically.
        for port in (plain.port, filt.port):
            dnsperf(port, qfile, 1, None)
        res: dict[str, dict[str, list[float]]] = {k: {"qps": [], "lat": []} for k in ("plain", "agent")}
        for r in range(args.rounds):
            for label, port in (("plain", plain.port), ("agent", filt.port)) if r % 2 == 0 else \
                    (("agent", filt.port), ("plain", plain.port)):
                qps, _ = dnsperf(port, qfile, args.seconds, None)
                _, lat = dnsperf(port, qfile, args.seconds, args.qps)
                res[label]["qps"].append(qps)
                res[label]["lat"].append(lat)
                print(f"  round {r + 1} {label:5}: {qps:9.0f} q/s max, {lat:.3f} ms median latency at {args.qps} q/s")
        med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in res.items()}
        # The machine is shared: compare the two runs of the same round (similar background
        # load) and take the median of those paired ratios.
        latency_ratio = statistics.median(a / p for a, p in zip(res["agent"]["lat"], res["plain"]["lat"]))
        throughput_ratio = statistics.median(a / p for a, p in zip(res["agent"]["qps"], res["plain"]["qps"]))
        print(f"  plain dnsmasq: {med['plain']['qps']:.0f} q/s, {med['plain']['lat']:.3f} ms")
        print(f"  agent dnsmasq: {med['agent']['qps']:.0f} q/s, {med['agent']['lat']:.3f} ms "
              f"(query log lines read by the agent: {filt.follower.lines_read if filt.follower else 0})")
        lat_ms = measure_blocked(filt, store, args.blocked, 0.05)
        p50 = percentile(lat_ms, 50)
        p99 = percentile(lat_ms, 99)
        print(f"  blocked query -> event stored on the server (SQLite): n={len(lat_ms)} p50={p50:.0f} ms "
              f"p99={p99:.0f} ms (includes the ~1 s coalescing settle)")
        print(f"dns_overhead latency_ratio={latency_ratio:.3f} throughput_ratio={throughput_ratio:.3f} "
              f"blocked_event_p99_ms={p99:.0f}")
        return 0
    finally:
        if runtime is not None:
            runtime.stop()
        ingest.stop()
        broker.stop()
        plain.stop()
        stub.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
