"""Fixtures for the filter tests: a stub upstream resolver, a recording runtime, a filter.

The stub upstream is a second, real dnsmasq on its own loopback port answering fixed
records (the school's filtered resolver stands in).  The recording runtime implements
the runtime contract of COMMON.md (emit_event validates like the real one, post runs on
a real queue thread, clock is a FakeClock) so the filter can be driven precisely; one
test also runs the filter inside the real agent Runtime.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent import protocol
from agent.clock import FakeClock
from agent.config import effective_policy, load_tree
from agent.config.schema import AgentBootstrap, Filtering

REPO = Path(__file__).resolve().parent.parent
DEVICE = "5b-pi-01"          # ks2, seat "Table 1" in config/rooms/5b.yaml
# Tuesday 24 Nov 2026, 10:00 London (= UTC): in term, in school hours.
SCHOOL_TIME = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)

STUB_RECORDS = """
address=/bbc.co.uk/192.0.2.10
address=/dkfindout.com/192.0.2.11
address=/swiggle.org.uk/192.0.2.12
address=/topmarks.co.uk/192.0.2.13
address=/purplemash.com/192.0.2.14
address=/google.com/192.0.2.20
address=/google.co.uk/192.0.2.21
address=/youtube.com/192.0.2.30
address=/googleapis.com/192.0.2.31
address=/bing.com/192.0.2.40
address=/duckduckgo.com/192.0.2.50
address=/facebook.com/192.0.2.66
address=/tiktok.com/192.0.2.67
address=/override-me.org/192.0.2.77
host-record=forcesafesearch.google.com,216.239.38.120,2001:4860:4802:32::78
host-record=restrict.youtube.com,216.239.38.119
host-record=restrictmoderate.youtube.com,216.239.38.118
host-record=strict.bing.com,204.79.197.220
host-record=safe.duckduckgo.com,52.142.124.215
"""


class RecordingRuntime:
    """The runtime contract, recording events instead of publishing them."""

    def __init__(self, root: Path, *, clock: FakeClock | None = None, device: str = DEVICE):
        self.tree = load_tree(REPO / "config")
        self.clock = clock or FakeClock(SCHOOL_TIME)
        self.state_dir = root / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap = AgentBootstrap(
            device=device, site="penny-acres", broker_url="mqtt://127.0.0.1:1", collector_url="http://127.0.0.1:1",
            state_dir=str(self.state_dir), dnsmasq_dir=str(root / "dnsmasq"),
            chromium_policy_dir=str(root / "chromium" / "managed"),
            firefox_policy_dir=str(root / "firefox" / "policies"), apply_nftables=False)
        self.policy = effective_policy(self.tree, device, self.clock())
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self.evidence_source = lambda minutes: []
        self.user = "pupil.5b.07"
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while True:
            fn, args, done = self._q.get()
            if fn is None:
                return
            try:
                done["result"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001
                done["error"] = exc
            finally:
                if "event" in done:
                    done["event"].set()

    def post(self, fn, *args):
        self._q.put((fn, args, {}))

    def call(self, fn, *args, timeout=10):
        """Run on the queue thread (as the real runtime does) and return the result."""
        done = {"event": threading.Event()}
        self._q.put((fn, args, done))
        assert done["event"].wait(timeout), "queue thread stuck"
        if "error" in done:
            raise done["error"]
        return done.get("result")

    def close(self):
        self._q.put((None, (), {}))
        self._thread.join(5)

    def current_user(self):
        return self.user

    def emit_event(self, type, **fields):  # noqa: A002
        event = {"id": protocol.new_id(), "type": type, "ts": protocol.now_ts(self.clock()),
                 "site": self.policy.site, "room": self.policy.room, "device": self.bootstrap.device, **fields}
        protocol.validate("event", event)
        protocol.encode(event)  # must be JSON
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()
        return event

    def of_type(self, kind: str) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e["type"] == kind]


def world_readable_dir(prefix: str) -> Path:
    """A temp dir dnsmasq can still read after dropping root (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    return d


@pytest.fixture
def filter_root():
    d = world_readable_dir("cs-filter-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def stub_upstream(dnsmasq_factory):
    """A real dnsmasq answering fixed records: the school's upstream resolver stand-in."""
    return dnsmasq_factory(STUB_RECORDS)


def filtering_for(**kw) -> Filtering:
    base = dict(upstream_dns=["127.0.0.1"], coalesce_seconds=60, override_default_minutes=60,
                override_max_minutes=240, evidence_minutes=10)
    base.update(kw)
    return Filtering(**base)


@pytest.fixture
def make_filter(filter_root, stub_upstream):
    """factory(**component kwargs) -> (component, runtime): started, first policy applied."""
    from agent.filter.component import FilterComponent
    from services import free_port

    made = []

    def factory(*, runtime=None, filtering=None, **kw):
        rt = runtime or RecordingRuntime(filter_root)
        kw.setdefault("port", free_port())
        kw.setdefault("filter_port", free_port())
        kw.setdefault("upstream_port", stub_upstream.port)
        kw.setdefault("settle_seconds", 0.3)
        comp = FilterComponent(filtering=filtering or filtering_for(), **kw)
        made.append((comp, rt))
        rt.call(comp.start, rt)
        rt.call(comp.on_policy, rt.policy)
        return comp, rt

    yield factory
    # Stop every component first (a restart test shares one runtime between two), then
    # close each runtime once: no dnsmasq may outlive its test.
    for comp, rt in made:
        try:
            rt.call(comp.stop)
        except Exception:  # noqa: BLE001
            comp.stop()
    for rt in {id(rt): rt for _, rt in made}.values():
        rt.close()


def with_domains(policy, *domains, **changes):
    return dataclasses.replace(policy, allow_domains=tuple(policy.allow_domains) + domains, **changes)
