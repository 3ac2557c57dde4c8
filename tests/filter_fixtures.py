"""Fixtures for the filter tests: a stub upstream resolver, a fake runtime, a filter.

The stub upstream is a second, real dnsmasq on its own loopback port answering fixed
records (the school's filtered resolver stands in).  The runtime is tests/fake_runtime.py's
``FakeRuntime`` with a real queue thread (``filter_runtime``): the runtime contract of
docs/architecture.md, emit_event validating like the real one, a FakeClock, so the
filter can be driven precisely; one test also runs the filter inside the real agent Runtime.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.config.schema import Filtering
from fake_runtime import FakeRuntime

REPO = Path(__file__).resolve().parent.parent
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
address=/ceop.police.uk/192.0.2.90
address=/thinkuknow.co.uk/192.0.2.91
address=/childline.org.uk/192.0.2.92
address=/nspcc.org.uk/192.0.2.93
host-record=forcesafesearch.google.com,216.239.38.120,2001:4860:4802:32::78
host-record=restrict.youtube.com,216.239.38.119
host-record=restrictmoderate.youtube.com,216.239.38.118
host-record=strict.bing.com,204.79.197.220
host-record=safe.duckduckgo.com,52.142.124.215
"""


def filter_runtime(root: Path, **kw) -> FakeRuntime:
    """The filter's runtime: a real queue thread (the log follower and ticker post to it)."""
    return FakeRuntime(root, threaded=True, user="pupil.5b.07", **kw)


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
        rt = runtime or filter_runtime(filter_root)
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
