"""The filter against real dnsmasq: allowlist, NXDOMAIN, safe search, blocked events, overrides."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest

from agent.filter import dnsclient
from agent.protocol import CommandRefused
from filter_fixtures import (  # noqa: F401 - fixtures
    SCHOOL_TIME, filter_root, filter_runtime, filtering_for, make_filter, stub_upstream, with_domains,
)
from services import require_binary, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DFE_FIELDS = ("device", "device_name", "device_ip", "user", "ts", "domain", "profile", "count",
              "first_seen", "last_seen")


def ask(comp, name, qtype="A"):
    return dnsclient.query(name, qtype, server="127.0.0.1", port=comp.port, timeout=2)


def flood(port: int, name: str, times: int) -> None:
    """Send *times* queries as fast as a retrying page would, and read every answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
        for i in range(times):
            _, packet = dnsclient.build_query(name, "A", ident=i)
            s.send(packet)
            s.recv(512)


def test_allowlist_nxdomain_and_canary(make_filter):
    require_binary("dnsmasq")
    comp, rt = make_filter()
    assert ask(comp, "bbc.co.uk") == ("NOERROR", ["192.0.2.10"])
    assert ask(comp, "www.bbc.co.uk") == ("NOERROR", ["192.0.2.10"])      # subdomains included
    assert ask(comp, "dkfindout.com") == ("NOERROR", ["192.0.2.11"])      # ks2 profile
    assert ask(comp, "facebook.com") == ("NXDOMAIN", [])                   # upstream knows it; we refuse
    assert ask(comp, "nothing-here.example.com") == ("NXDOMAIN", [])
    assert ask(comp, "use-application-dns.net") == ("NXDOMAIN", [])       # Firefox DoH canary
    # Forwarding goes only to the configured upstream: the servers-file says so.
    servers = comp.paths.servers.read_text()
    assert f"server=/bbc.co.uk/127.0.0.1#{comp.upstream_port}" in servers
    assert "8.8.8.8" not in servers and "1.1.1.1" not in servers
    conf = comp.paths.conf.read_text()
    assert "address=/#/" in conf and "no-resolv" in conf and "log-queries" in conf


def test_safe_search_rewrites_only_allowed_engines(make_filter):
    comp, rt = make_filter()
    # ks2 does not allow google: it stays NXDOMAIN, no rewrite.
    assert ask(comp, "www.google.com") == ("NXDOMAIN", [])
    policy = with_domains(rt.policy, "google.com", "google.co.uk", "youtube.com", "bing.com", "duckduckgo.com",
                          "googleapis.com")
    rt.call(comp.on_policy, policy)
    wait_until(lambda: ask(comp, "www.google.com") == ("NOERROR", ["216.239.38.120"]), 10)
    assert ask(comp, "www.google.co.uk") == ("NOERROR", ["216.239.38.120"])
    assert ask(comp, "www.google.com", "AAAA") == ("NOERROR", ["2001:4860:4802:32::78"])
    assert ask(comp, "mail.google.com") == ("NOERROR", ["192.0.2.20"])    # the rest of google.com is untouched
    assert ask(comp, "www.youtube.com") == ("NOERROR", ["216.239.38.119"])  # strict
    assert ask(comp, "m.youtube.com") == ("NOERROR", ["216.239.38.119"])
    assert ask(comp, "youtubei.googleapis.com") == ("NOERROR", ["216.239.38.119"])
    assert ask(comp, "www.bing.com") == ("NOERROR", ["204.79.197.220"])
    assert ask(comp, "duckduckgo.com") == ("NOERROR", ["52.142.124.215"])
    # A forced name must not leak the real address through another record type.
    rcode, answers = ask(comp, "www.bing.com", "AAAA")
    assert answers == [] and rcode in ("NOERROR", "NXDOMAIN")
    # Moderate YouTube: the other endpoint.
    rt.call(comp.on_policy, with_domains(policy, youtube_restrict="moderate"))
    wait_until(lambda: ask(comp, "www.youtube.com") == ("NOERROR", ["216.239.38.118"]), 10)
    # Safe search off for a profile: plain forwarding again.
    rt.call(comp.on_policy, with_domains(policy, safe_search=False, youtube_restrict="off"))
    wait_until(lambda: ask(comp, "www.google.com") == ("NOERROR", ["192.0.2.20"]), 10)


def test_blocked_query_is_one_event_with_dfe_fields(make_filter):
    comp, rt = make_filter()
    assert ask(comp, "tiktok.com") == ("NXDOMAIN", [])
    wait_until(lambda: "tiktok.com" in comp.blocked.coalescer._open, 5)
    assert rt.of_type("blocked") == []          # settling: repeats may still come
    rt.clock.advance(1)                         # (the runtime clock drives the window)
    event = wait_until(lambda: rt.of_type("blocked"), 5)[0]
    for key in DFE_FIELDS:
        assert event.get(key) not in (None, ""), key
    assert event["device"] == "5b-pi-01" and event["device_name"] == rt.policy.seat
    assert event["domain"] == "tiktok.com" and event["profile"] == "ks2" and event["count"] == 1
    assert event["user"] == "pupil.5b.07" and event["device_ip"] == "127.0.0.1"
    assert len(rt.of_type("blocked")) == 1


def test_retried_blocked_domain_is_coalesced(make_filter):
    comp, rt = make_filter(settle_seconds=1.0)
    flood(comp.port, "facebook.com", 200)
    wait_until(lambda: comp.blocked.coalescer._open["facebook.com"].count == 200, 10)
    rt.clock.advance(1)
    events = wait_until(lambda: rt.of_type("blocked"), 10)
    assert len(events) == 1
    assert events[0]["domain"] == "facebook.com" and events[0]["count"] == 200
    # Later in the same window (clock still inside it): counted into one more event at window end.
    flood(comp.port, "facebook.com", 3)
    wait_until(lambda: comp.blocked.coalescer._open["facebook.com"].count == 3, 5)
    rt.clock.advance(1)
    rt.call(comp._tick)
    assert len(rt.of_type("blocked")) == 1      # already reported in this window: wait for its end
    rt.clock.advance(60)
    events = wait_until(lambda: rt.of_type("blocked")[1:], 5)
    assert events[0]["count"] == 3 and len(rt.of_type("blocked")) == 2


def test_evidence_lists_recent_domains(make_filter):
    comp, rt = make_filter()
    ask(comp, "bbc.co.uk")
    ask(comp, "facebook.com")
    rows = wait_until(lambda: {r["domain"]: r for r in rt.evidence_source(10)}
                      if {"bbc.co.uk", "facebook.com"} <= {r["domain"] for r in rt.evidence_source(10)} else None, 5)
    assert rows["facebook.com"]["blocked"] is True and rows["bbc.co.uk"]["blocked"] is False
    assert set(rows["bbc.co.uk"]) == {"domain", "ts", "first_seen", "count", "blocked"}  # domains and times only
    rt.clock.advance(11 * 60)
    assert rt.evidence_source(10) == []


def test_override_opens_and_closes_on_expiry(make_filter):
    comp, rt = make_filter()
    assert ask(comp, "override-me.org") == ("NXDOMAIN", [])
    handled = rt.call(comp.on_command, {"cmd": "allow", "domain": "override-me.org", "minutes": 20,
                                        "by": "a.teacher", "reason": "Volcano video"})
    assert handled is True
    wait_until(lambda: ask(comp, "www.override-me.org") == ("NOERROR", ["192.0.2.77"]), 1.0)
    opened = rt.of_type("override_opened")[0]
    assert opened["domain"] == "override-me.org" and opened["by"] == "a.teacher"
    assert opened["reason"] == "Volcano video"
    assert opened["expires"] == "2026-11-24T10:20:00.000Z"
    # Browser policy follows.
    chromium = json.loads((comp.chromium_dir / "classroom-safety.json").read_text())
    assert "override-me.org" in chromium["URLAllowlist"]
    rt.clock.advance(19 * 60)
    rt.call(comp._tick)
    assert ask(comp, "override-me.org")[0] == "NOERROR"
    rt.clock.advance(61)
    wait_until(lambda: rt.of_type("override_closed"), 5)
    closed = rt.of_type("override_closed")[0]
    assert closed["domain"] == "override-me.org" and closed["by"] == "a.teacher" and closed["why"] == "expired"
    assert ask(comp, "override-me.org") == ("NXDOMAIN", [])
    chromium = json.loads((comp.chromium_dir / "classroom-safety.json").read_text())
    assert "override-me.org" not in chromium["URLAllowlist"]


def test_override_survives_restart(make_filter, filter_root):
    comp, rt = make_filter()
    rt.call(comp.on_command, {"cmd": "allow", "domain": "override-me.org", "minutes": 30, "by": "a.teacher"})
    assert ask(comp, "override-me.org")[0] == "NOERROR"
    rt.call(comp.stop)
    rt.clock.advance(10 * 60)
    # A new component (agent restart) on the same state dir.
    comp2, _ = make_filter(runtime=rt)
    assert ask(comp2, "override-me.org") == ("NOERROR", ["192.0.2.77"])
    assert comp2.overrides.get("override-me.org").expires == SCHOOL_TIME + timedelta(minutes=30)
    rt.clock.advance(21 * 60)
    wait_until(lambda: rt.of_type("override_closed"), 5)
    assert ask(comp2, "override-me.org") == ("NXDOMAIN", [])


def test_override_default_ends_with_the_school_day(make_filter):
    comp, rt = make_filter()
    # 15:30 London: school ends at 16:00, sooner than the 60-minute default.
    rt.clock.set(SCHOOL_TIME.replace(hour=15, minute=30))
    from agent.config import effective_policy

    rt.policy = effective_policy(rt.tree, "5b-pi-01", rt.clock())
    rt.call(comp.on_policy, rt.policy)
    rt.call(comp.on_command, {"cmd": "allow", "domain": "override-me.org", "by": "a.teacher"})
    assert rt.of_type("override_opened")[0]["expires"] == "2026-11-24T16:00:00.000Z"


BAD_COMMANDS = [
    ({"cmd": "allow", "domain": "not a domain", "by": "a.teacher"}, "domain"),
    ({"cmd": "allow", "domain": "*.evil.com", "by": "a.teacher"}, "domain"),
    ({"cmd": "allow", "domain": "evil.com/\naddress=/#/1.2.3.4", "by": "a.teacher"}, "domain"),
    ({"cmd": "allow", "domain": "co.uk", "by": "a.teacher"}, "public suffix"),
    ({"cmd": "allow", "domain": "override-me.org", "by": "a.teacher", "minutes": 999}, "minutes"),
    ({"cmd": "allow", "domain": "override-me.org", "by": "a.teacher", "minutes": "ten"}, "minutes"),
    ({"cmd": "allow", "domain": "override-me.org", "by": "a.teacher", "minutes": 0}, "minutes"),
    ({"cmd": "allow", "domain": "override-me.org"}, "by"),
    ({"cmd": "allow", "domain": ["override-me.org"], "by": "a.teacher"}, "domain"),
]


def test_bad_override_commands_change_nothing(make_filter, caplog):
    comp, rt = make_filter()
    servers_before = comp.paths.servers.read_text()
    chromium_before = (comp.chromium_dir / "classroom-safety.json").read_text()
    for cmd, field in BAD_COMMANDS:
        caplog.clear()
        # Refused, and said so: the runtime's cmd_result carries the reason to the teacher.
        with pytest.raises(CommandRefused, match=field):
            rt.call(comp.on_command, cmd)
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(lines) == 1 and field in lines[0] and "\n" not in lines[0], (cmd, lines)
    assert comp.paths.servers.read_text() == servers_before
    assert (comp.chromium_dir / "classroom-safety.json").read_text() == chromium_before
    assert len(comp.overrides) == 0 and not comp.overrides.path.exists()
    assert ask(comp, "override-me.org") == ("NXDOMAIN", [])
    rejected = rt.of_type("override_rejected")
    assert len(rejected) == len(BAD_COMMANDS) and all(e["error"] for e in rejected)
    assert rt.of_type("override_opened") == []
    # Not ours: left for other components.
    assert rt.call(comp.on_command, {"cmd": "lock", "by": "a.teacher"}) is False


def test_bad_allowlist_keeps_the_current_filter(make_filter, caplog):
    comp, rt = make_filter()
    servers_before = comp.paths.servers.read_text()
    hosts_before = comp.paths.hosts.read_text()
    for bad in ("bad domain", "evil.com\nserver=/#/8.8.8.8", "*.wild.com", "UPPER.com"):
        caplog.clear()
        rt.call(comp.on_policy, with_domains(rt.policy, bad))
        assert any("keeping the filter as it was" in r.getMessage() for r in caplog.records)
        assert comp.paths.servers.read_text() == servers_before
        assert comp.paths.hosts.read_text() == hosts_before
    assert ask(comp, "bbc.co.uk") == ("NOERROR", ["192.0.2.10"])
    assert ask(comp, "facebook.com") == ("NXDOMAIN", [])
    rejected = rt.of_type("config_rejected")
    assert len(rejected) == 4 and "allow_domains" in rejected[0]["errors"][0]
    # A public resolver as upstream is refused too (the schema refuses it; the filter re-checks).
    from agent.filter.dnsmasq import FilterError, upstream_addresses

    with pytest.raises(FilterError, match="public resolver"):
        upstream_addresses(["8.8.8.8"])


def test_filter_disabled_without_dnsmasq(filter_root, caplog):
    from agent.filter.component import FilterComponent

    rt = filter_runtime(filter_root)
    try:
        comp = FilterComponent(filtering=filtering_for(), dnsmasq_binary=None, port=1)
        import agent.filter.component as component_module

        original = component_module.find_dnsmasq
        component_module.find_dnsmasq = lambda: None
        try:
            rt.call(comp.start, rt)
            rt.call(comp.on_policy, rt.policy)
        finally:
            component_module.find_dnsmasq = original
        assert not comp.dns_enabled
        assert any("dnsmasq is not installed" in r.getMessage() for r in caplog.records)
        # Browser policy still applied.
        assert (comp.chromium_dir / "classroom-safety.json").exists()
        rt.call(comp.stop)
    finally:
        rt.close()


def test_nftables_exempts_the_uid_dnsmasq_really_runs_as(make_filter, monkeypatch):
    """Never applied here (host!): the apply call is captured and syntax-checked with nft -c."""
    import pwd

    from agent.filter import nftables

    applied = []
    monkeypatch.setattr(nftables, "apply", lambda ruleset, argv_prefix=(): applied.append(ruleset))
    comp, rt = make_filter(apply_nftables=True)
    assert len(applied) == 1 and comp.nft_applied
    uid = int(open(f"/proc/{comp.dnsmasq.pid}/status").read().split("Uid:")[1].split()[1])
    assert f"meta skuid {uid} accept" in applied[0]
    if uid != 0:
        assert pwd.getpwuid(uid).pw_name in ("dnsmasq", "nobody")   # dropped root, never the pupil
    assert f"redirect to :{comp.port}" in applied[0]
    if nftables.find_nft():
        assert nftables.check(applied[0]) is None


def test_safe_search_fails_closed_while_the_upstream_is_down(make_filter, stub_upstream):
    comp, rt = make_filter()
    stub_upstream.stop()
    rt.call(comp.on_policy, with_domains(rt.policy, "google.com"))
    # The safe endpoint cannot be resolved: the search engine answers NXDOMAIN, never the real site.
    assert ask(comp, "www.google.com") == ("NXDOMAIN", [])
    assert "not resolved" in comp.paths.hosts.read_text()
    stub_upstream.start()
    wait_until(lambda: ask(comp, "www.google.com") == ("NOERROR", ["216.239.38.120"]), 15)


def test_query_log_rotation_with_real_dnsmasq(make_filter):
    comp, rt = make_filter(log_max_bytes=4000)
    for i in range(40):
        ask(comp, f"filler-{i}.bbc.co.uk")
    wait_until(lambda: (comp.paths.dir / "queries.log.1").exists(), 10)
    # dnsmasq (as its own user) reopened a fresh log: blocked attempts are still seen.
    ask(comp, "after-rotation.example.com")
    wait_until(lambda: "after-rotation.example.com" in comp.blocked.coalescer._open, 10)
    assert comp.paths.querylog.stat().st_size < 4000


def test_override_that_expired_while_the_agent_was_down_never_reopens(make_filter):
    comp, rt = make_filter()
    rt.call(comp.on_command, {"cmd": "allow", "domain": "override-me.org", "minutes": 5, "by": "a.teacher"})
    rt.call(comp.stop)
    rt.clock.advance(6 * 60)
    comp2, _ = make_filter(runtime=rt)     # start + first policy
    assert "override-me.org" not in comp2.paths.servers.read_text()
    assert ask(comp2, "override-me.org") == ("NXDOMAIN", [])
    [closed] = rt.of_type("override_closed")
    assert closed["domain"] == "override-me.org" and closed["why"] == "expired"


def test_a_dnsmasq_left_by_a_killed_agent_is_replaced(make_filter):
    comp, rt = make_filter()
    orphan = comp.dnsmasq.proc
    comp.dnsmasq.proc = None          # the agent "died" without stopping it
    comp.dnsmasq.start()              # a new agent start: same config, same port
    try:
        assert orphan.wait(5) is not None          # the leftover was ended (by pid file + cmdline)
        assert comp.dnsmasq.is_running and comp.dnsmasq.pid != orphan.pid
        assert ask(comp, "bbc.co.uk") == ("NOERROR", ["192.0.2.10"])
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_the_agent_can_still_resolve_its_broker_and_collector(make_filter):
    """nftables sends the agent's own look-ups to dnsmasq too: school hosts stay resolvable."""
    comp, rt = make_filter()
    servers = comp.paths.servers.read_text()
    # config/site.yaml: mqtts://classroom.penny-acres.sch.uk:8883 and https://classroom.penny-acres.sch.uk
    assert f"server=/classroom.penny-acres.sch.uk/127.0.0.1#{comp.upstream_port}" in servers
    assert "127.0.0.1:1" not in servers            # the bootstrap's IP-literal URLs need no DNS
    chromium = json.loads((comp.chromium_dir / "classroom-safety.json").read_text())
    assert not any("penny-acres" in u for u in chromium["URLAllowlist"])   # DNS only, not browsable


def test_one_page_visit_counts_once_not_per_record_type(make_filter):
    comp, rt = make_filter()
    for qtype in ("A", "AAAA", "HTTPS"):            # what a browser asks for one page
        assert ask(comp, "snapchat.com", qtype)[0] == "NXDOMAIN"
    # All three look-ups have reached the agent (evidence counts query lines)...
    wait_until(lambda: [r["count"] for r in rt.evidence_source(10) if r["domain"] == "snapchat.com"] == [3], 5)
    rt.call(lambda: None)                            # ...and the queue has handled them
    assert comp.blocked.coalescer._open["snapchat.com"].count == 1
    rt.clock.advance(2)
    [event] = wait_until(lambda: rt.of_type("blocked"), 5)
    assert event["domain"] == "snapchat.com" and event["count"] == 1
