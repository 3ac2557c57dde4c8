"""Devices off the school network (issue 17 item 4; agent/uplink/location.py), the fast parts:
the switching rule with a fake clock, the component driving the runtime, the filter forwarding
to the off-site resolver (still allowlist-only), nftables letting dnsmasq reach only the
resolver in use, the contract's new event and field, a report made off-site reaching the
remote-learning contact through server/notify (a real SMTP server), and the malformed
``offsite`` settings.  The whole move, school -> home -> school, in network namespaces with
the real runtime, dnsmasq, nftables and brokers, is tests/test_offsite_netns.py.
"""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from agent import protocol
from agent.config import ConfigInvalid, load_tree
from agent.config.schema import Offsite
from agent.uplink.location import OFFSITE, SCHOOL, LocationRule, NetworkLocation, Probe
from filter_fixtures import filter_root, filter_runtime, filtering_for, make_filter, stub_upstream  # noqa: F401
from notify_fixtures import *  # noqa: F401,F403
from notify_fixtures import CONTACT_EMAILS, write_notify_file
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import REPO, make_alert
from services import wait_until

REMOTE = "remote@penny-acres.test"


# --------------------------------------------------------------------------- the rule


def test_rule_leaves_school_only_after_the_network_is_gone_long_enough_and_home_answers():
    rule = LocationRule(leave_after=30, return_after=10)
    assert rule.observe(0, school_present=False, offsite_answers=True) is None     # one miss: a blip
    assert rule.observe(20, school_present=False, offsite_answers=True) is None
    assert rule.observe(25, school_present=True, offsite_answers=False) is None    # back: streak reset
    assert rule.observe(40, school_present=False, offsite_answers=True) is None
    assert rule.observe(69, school_present=False, offsite_answers=True) is None    # 29 s absent
    # Gone long enough but nothing answers off-site either (no network at all): stay.
    assert rule.observe(75, school_present=False, offsite_answers=False) is None
    assert rule.location == SCHOOL
    assert rule.observe(80, school_present=False, offsite_answers=True) == OFFSITE
    assert rule.location == OFFSITE


def test_rule_comes_back_only_after_the_school_network_is_steady():
    rule = LocationRule(leave_after=30, return_after=10, location=OFFSITE)
    assert rule.observe(0, school_present=True, offsite_answers=False) is None
    assert rule.observe(5, school_present=False, offsite_answers=True) is None      # flapped: reset
    assert rule.observe(6, school_present=True, offsite_answers=False) is None
    assert rule.observe(15, school_present=True, offsite_answers=False) is None     # 9 s
    assert rule.observe(16, school_present=True, offsite_answers=False) == SCHOOL
    # And a fresh streak is needed to leave again.
    assert rule.observe(17, school_present=False, offsite_answers=True) is None
    assert rule.location == SCHOOL


def test_probe_counts_only_the_configured_signs_of_the_school_network():
    probe = Probe(school_resolver=False, school_broker=True, offsite_resolver=True)
    assert probe.school_present(["resolver", "broker"])
    assert not probe.school_present(["resolver"])        # a school broker reachable from the internet
    assert Probe(True, False, False).school_present(["resolver"])


# --------------------------------------------------------------------------- the component


def offsite_tree(tree, **offsite):
    """*tree* with site.offsite set (and a remote-learning contact, as the tree check wants)."""
    settings = Offsite(**{"upstream_dns": ["127.0.0.1"], "leave_after_seconds": 30, "return_after_seconds": 10,
                          **offsite})
    contacts = [*tree.site.escalation.contacts,
                tree.site.escalation.contacts[0].model_copy(update={"role": "remote-learning", "name": "Remote"})]
    site = tree.site.model_copy(update={"offsite": settings, "escalation": tree.site.escalation.model_copy(
        update={"contacts": contacts})})
    return dataclasses.replace(tree, site=site)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_component_moves_the_runtime_off_site_and_back_with_an_event_each_way(tmp_path):
    rt = filter_runtime(tmp_path)
    try:
        rt.tree = offsite_tree(rt.tree)
        clock = Clock()
        component = NetworkLocation(monotonic=clock, probe=lambda offsite, url: Probe(False, False, True))
        component.runtime = rt       # driven by hand: no probing thread
        rt.call(component.on_policy, rt.policy)
        offsite = rt.tree.site.offsite

        def observe(at, probe):
            clock.now = at
            rt.call(component._observe, offsite, probe, at)

        observe(0, Probe(False, False, True))
        observe(29, Probe(False, False, True))
        assert rt.network_location == SCHOOL
        observe(30, Probe(False, False, True))
        assert rt.network_location == OFFSITE
        observe(31, Probe(False, True, False))           # the school broker is back...
        observe(40, Probe(True, True, False))
        assert rt.network_location == OFFSITE            # ...9 s is not steady yet
        observe(41, Probe(True, False, False))
        assert rt.network_location == SCHOOL
        moves = [e for e in rt.events if e["type"] == "network_location"]
        assert [(e["previous"], e["location"]) for e in moves] == [(SCHOOL, OFFSITE), (OFFSITE, SCHOOL)]
        assert "off-site resolver answers" in moves[0]["reason"] and "resolver" in moves[1]["reason"]
        for event in moves:
            protocol.validate("event", event)

        # The settings removed while off-site: back to school at once.
        observe(100, Probe(False, False, True))
        observe(130, Probe(False, False, True))
        assert rt.network_location == OFFSITE
        rt.tree = dataclasses.replace(rt.tree, site=rt.tree.site.model_copy(update={"offsite": None}))
        rt.call(component.on_policy, rt.policy)
        assert rt.network_location == SCHOOL and component.rule is None
    finally:
        rt.close()


def test_off_site_the_filter_forwards_allowed_names_to_the_off_site_resolver_only(make_filter, filter_root):
    rt = filter_runtime(filter_root)
    rt.tree = offsite_tree(rt.tree, upstream_dns=["127.0.0.2"])
    comp, rt = make_filter(runtime=rt)
    servers = comp.paths.servers
    school = servers.read_text()
    assert "server=/bbc.co.uk/127.0.0.1#" in school and "127.0.0.2" not in school
    assert comp.upstream_dns(comp.filtering()) == (["127.0.0.1"], "filtering.upstream_dns")

    rt.network_location = OFFSITE
    rt.call(comp.on_policy, rt.policy)
    away = servers.read_text()
    assert "server=/bbc.co.uk/127.0.0.2#" in away and "127.0.0.1#" not in away
    # Still allowlist-only: the same names are forwarded, nothing else (no catch-all).
    assert sorted(line.split("/")[1] for line in away.splitlines() if line.startswith("server=/")) == \
        sorted(line.split("/")[1] for line in school.splitlines() if line.startswith("server=/"))
    assert "server=/#/" not in away
    rt.network_location = SCHOOL
    rt.call(comp.on_policy, rt.policy)
    assert servers.read_text() == school


def test_nftables_lets_dnsmasq_reach_only_the_resolver_in_use():
    from agent.filter import nftables
    from agent.filter.dnsclient import PROBE_MARK

    school = nftables.render(dnsmasq_user=101, upstreams=["10.20.0.1"])
    home = nftables.render(dnsmasq_user=101, upstreams=["203.0.113.53", "2001:db8::53"])
    assert "meta skuid 101 ip daddr { 10.20.0.1 } accept" in school and "203.0.113.53" not in school
    assert "meta skuid 101 ip daddr { 203.0.113.53 } accept" in home and "10.20.0.1" not in home
    assert "meta skuid 101 ip6 daddr { 2001:db8::53 } accept" in home
    for text in (school, home):
        bypass = text[text.index("chain bypass_block"):]
        # Anything else dnsmasq sends is refused, before the general accepts.
        assert bypass.index("meta skuid 101 counter reject") < bypass.index("udp dport 53 accept")
        assert f"meta mark {PROBE_MARK:#x} accept" in text[text.index("chain dns_redirect"):]
    # Without the resolvers (older callers): dnsmasq is not limited by address, as before.
    assert "meta skuid 101 accept" in nftables.render(dnsmasq_user=101)
    if nftables.find_nft() is not None:
        import os

        if os.geteuid() == 0:
            assert nftables.check(home) is None


# --------------------------------------------------------------------------- the contract


def test_network_location_event_and_the_alert_and_status_field():
    base = {"id": protocol.new_id(), "type": "network_location", "ts": protocol.now_ts(), "site": "penny-acres",
            "room": "5b", "device": "5b-pi-01"}
    protocol.validate("event", {**base, "location": "offsite", "previous": "school", "reason": "gone"})
    with pytest.raises(protocol.ProtocolError, match="location: 'home' is not one of school, offsite"):
        protocol.validate("event", {**base, "location": "home", "previous": "school", "reason": "x"})
    with pytest.raises(protocol.ProtocolError, match="previous: is required"):
        protocol.validate("event", {**base, "location": "offsite", "reason": "x"})
    alert = make_alert()
    protocol.validate("alert", {**alert, "location": "offsite"})
    with pytest.raises(protocol.ProtocolError, match="location: 3 is not a str"):
        protocol.validate("alert", {**alert, "location": 3})
    with pytest.raises(protocol.ProtocolError, match="location: 'away'"):
        protocol.validate("status", {"state": "online", "ts": protocol.now_ts(), "location": "away"})


def test_a_press_off_site_raises_an_alert_that_says_so(tmp_path):
    from agent.report.alert import Report
    from agent.report.screen import Screen
    from agent.desktop.headless import HeadlessScreen

    rt = filter_runtime(tmp_path)
    try:
        report = Report(Screen(HeadlessScreen()))
        rt.call(report.start, rt)
        rt.network_location = OFFSITE
        report.press("button")
        assert report.screen.is_blank                  # the press still blanks
        raised = wait_until(lambda: [p for k, p in rt.sent if k == "alert" and p["state"] == "raised"], 5)
        assert raised[0]["location"] == "offsite"
        protocol.validate("alert", raised[0])
    finally:
        rt.close()


# --------------------------------------------------------------------------- the collector


def _remote_tree(tmp_path, with_remote=True):
    from notify_fixtures import notify_tree_dir

    root = notify_tree_dir(tmp_path, REPO)
    site = yaml.safe_load((root / "site.yaml").read_text())
    if with_remote:
        site["escalation"]["contacts"].append({"name": "Remote learning lead", "role": "remote-learning",
                                               "email": REMOTE})
        site["offsite"] = {"upstream_dns": ["203.0.113.53"]}
    (root / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
    return load_tree(root)


def _notifier(store, tree, settings):
    from server.notify import Notifier
    from server.presence import Presence

    return Notifier(store, settings, lambda: tree, Presence(store))


def test_a_report_made_off_site_goes_to_the_remote_learning_contact(sqlite_store, smtp_server, tmp_path):
    from server.notify import load_notify

    smtp_server.start()
    tree = _remote_tree(tmp_path)
    notifier = _notifier(sqlite_store, tree, load_notify(write_notify_file(tmp_path, smtp_server, None)))
    alert = {**make_alert(), "location": "offsite"}
    sqlite_store.record_alert(alert)
    notifier.listener("alert", None, alert)
    assert notifier.run_once() == 1
    [mail] = smtp_server.to(REMOTE)
    assert "away from school" in mail["Subject"] and "remote-learning procedure" in mail.get_content()
    assert all(not smtp_server.to(a) for a in CONTACT_EMAILS.values())   # not the DSL or office: they escalate
    # Heard again: nothing new.  A report made in school still goes the usual way (not here).
    notifier.listener("alert", None, alert)
    assert notifier.run_once() == 0
    in_school = make_alert()
    sqlite_store.record_alert(in_school)
    notifier.listener("alert", None, in_school)
    notifier.run_once()
    assert len(smtp_server.to(REMOTE)) == 1
    # One answered before the collector heard of it (queued at home, acknowledged since): nobody.
    answered = {**make_alert(), "location": "offsite"}
    sqlite_store.record_alert(answered)
    sqlite_store.record_alert({**answered, "state": "acknowledged", "by": "m.khan", "ts": protocol.now_ts()})
    notifier.listener("alert", None, answered)
    assert notifier.run_once() == 0


def test_without_a_remote_learning_contact_an_off_site_report_goes_to_the_dsl_and_office(tmp_path, smtp_server):
    from server.notify import load_notify
    from server.notify.notifier import recipients_for

    tree = _remote_tree(tmp_path, with_remote=False)
    settings = load_notify(write_notify_file(tmp_path, smtp_server, None))  # not started: not sent to
    assert {r for _, r in recipients_for(settings, tree, "offsite")} == {CONTACT_EMAILS["dsl"],
                                                                         CONTACT_EMAILS["office"]}
    with_remote = _remote_tree(tmp_path / "b")
    assert recipients_for(settings, with_remote, "offsite") == [("email", REMOTE)]
    assert ("email", REMOTE) in recipients_for(settings, with_remote, "escalated")


# --------------------------------------------------------------------------- malformed settings


@pytest.fixture
def cfg(tmp_path):
    root = tmp_path / "cfg"
    shutil.copytree(REPO / "config", root, ignore=shutil.ignore_patterns("agent.example.yaml"))
    return root


def _with(root: Path, text: str, contacts: bool = True) -> list[str]:
    site = root / "site.yaml"
    body = site.read_text()
    if contacts:
        body = body.replace("    - {name: School office, role: office, staff: office, phone: \"01234 567890\"}\n",
                            "    - {name: School office, role: office, staff: office, phone: \"01234 567890\"}\n"
                            "    - {name: Remote learning lead, role: remote-learning}\n")
    site.write_text(body + "\n" + textwrap.dedent(text).lstrip("\n"))
    try:
        load_tree(root)
    except ConfigInvalid as exc:
        return [str(e) for e in exc.errors]
    return []


def _line(root: Path, needle: str) -> int:
    return next(i for i, line in enumerate((root / "site.yaml").read_text().splitlines(), 1)
                if needle in line and not line.lstrip().startswith("#"))   # a comment may name it too


@pytest.mark.parametrize("text, needle, expect", [
    ("offsite:\n  upstream_dns: [1.1.1.1]\n", "upstream_dns: [1.1.1.1]",
     "offsite.upstream_dns[0]: 1.1.1.1 is a public resolver"),
    ("offsite:\n  upstream_dns: []\n", "upstream_dns: []", "offsite.upstream_dns: "),
    ("offsite:\n  upstream_dns: [203.0.113.5]\n  broker_url: https://broker.trust.example\n", "broker_url",
     "offsite.broker_url: 'https://broker.trust.example' is not a URL (expected mqtt://host or mqtts://host)"),
    ("offsite:\n  upstream_dns: [203.0.113.5]\n  leave_after_seconds: 2\n", "leave_after_seconds",
     "offsite.leave_after_seconds: "),
    ("offsite:\n  upstream_dns: [203.0.113.5]\n  detect_by: [resolver, ping]\n", "detect_by",
     "offsite.detect_by[1]: 'ping' is not allowed"),
    ("offsite:\n  upstream_dns: [203.0.113.5]\n  brokr_url: mqtt://x\n", "brokr_url",
     "offsite.brokr_url: unknown key (did you mean 'broker_url'?)"),
    ("offsite:\n  upstream_dns: [203.0.113.5]\n  leave_after_seconds: 10\n  probe_seconds: 20\n", "offsite:",
     "offsite: probe_seconds 20 is longer than leave_after_seconds 10"),
    ("offsite:\n  upstream_dns: [203.0.113.5, 10.20.0.1]\n", "offsite:",
     "offsite.upstream_dns[1]: 10.20.0.1 is also the school's resolver"),
])
def test_malformed_offsite_settings_name_file_line_and_key(cfg, text, needle, expect):
    errors = _with(cfg, text)
    assert len(errors) == 1, errors
    line = _line(cfg, needle)
    if "is also the school's" in expect:
        line = _line(cfg, "upstream_dns: [203.0.113.5, 10.20.0.1]")
    assert errors[0].startswith(f"{cfg / 'site.yaml'}:{line}: {expect}") or \
        errors[0].startswith(f"cfg/site.yaml:{line}: {expect}"), errors[0]


def test_offsite_without_a_remote_learning_contact_is_refused(cfg):
    errors = _with(cfg, "offsite:\n  upstream_dns: [203.0.113.5]\n", contacts=False)
    assert len(errors) == 1 and f":{_line(cfg, 'offsite:')}: offsite: no escalation contact has role " \
        "remote-learning" in errors[0], errors


def test_role_typo_has_did_you_mean(cfg):
    site = cfg / "site.yaml"
    site.write_text(site.read_text().replace("role: office,", "role: remote_learning,"))
    with pytest.raises(ConfigInvalid) as info:
        load_tree(cfg)
    assert "role" in str(info.value.errors[0]) and "remote-learning" in str(info.value.errors[0])
