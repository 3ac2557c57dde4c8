"""The filter inside the REAL agent runtime: outbox events, commands, evidence, no-dnsmasq fallback."""

from __future__ import annotations

import pytest

from agent import protocol
from agent.filter import dnsclient
from filter_fixtures import REPO, filter_root, filtering_for, stub_upstream  # noqa: F401
from services import free_port, require_binary, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def make_runtime(root, components, control=False):
    from gpiozero.pins.mock import MockFactory

    from agent.config.schema import AgentBootstrap
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessScreen
    from agent.report.screen import Screen

    boot = AgentBootstrap(device="5b-pi-01", site="penny-acres", broker_url="mqtt://127.0.0.1:9",
                          collector_url="http://127.0.0.1:9", credentials=str(root / "none.yaml"),
                          state_dir=str(root / "state"), control_socket=str(root / "control.sock"),
                          config_dir=str(REPO / "config"), screen_backend="headless",
                          dnsmasq_dir=str(root / "dnsmasq"), chromium_policy_dir=str(root / "chromium" / "managed"),
                          firefox_policy_dir=str(root / "firefox" / "policies"), apply_nftables=False,
                          blockpage_dir=str(root / "blockpage"),
                          chromium_native_hosts_dir=str(root / "chromium" / "native-messaging-hosts"))
    return Runtime(boot, screen=Screen(HeadlessScreen()), pin_factory=MockFactory(), connect=False,
                   control=control, components=components)


def outbox_events(runtime, kind):
    out = []
    for row in runtime.outbox.pending():
        if row.kind == "event":
            event = protocol.decode(row.payload)
            if event["type"] == kind:
                out.append(event)
    return out


def test_filter_in_the_real_runtime(filter_root, stub_upstream):
    require_binary("dnsmasq")
    from agent.filter.component import FilterComponent

    comp = FilterComponent(filtering=filtering_for(), port=free_port(), filter_port=free_port(),
                           upstream_port=stub_upstream.port, settle_seconds=0.2)
    runtime = make_runtime(filter_root, [comp]).start()
    try:
        wait_until(lambda: comp.spec is not None, 10)
        assert runtime.evidence_source == comp.evidence_for
        ask = lambda name: dnsclient.query(name, server="127.0.0.1", port=comp.port)  # noqa: E731
        assert ask("bbc.co.uk") == ("NOERROR", ["192.0.2.10"])
        assert ask("tiktok.com") == ("NXDOMAIN", [])
        # Through the outbox (durable first), with the DfE fields.
        [event] = wait_until(lambda: outbox_events(runtime, "blocked"), 10)
        assert event["domain"] == "tiktok.com" and event["profile"] == "ks2" and event["device_name"]
        # The runtime's command dispatch reaches the filter.
        runtime.call(runtime._on_command, {"cmd": "allow", "domain": "override-me.org", "minutes": 5,
                                           "by": "a.teacher", "reason": "lesson"})
        wait_until(lambda: ask("override-me.org") == ("NOERROR", ["192.0.2.77"]), 1.0)
        assert outbox_events(runtime, "override_opened")[0]["domain"] == "override-me.org"
        # A command with the collector's id is answered: done, or refused with the reason.
        done, refused = protocol.new_id(), protocol.new_id()
        runtime.call(runtime._on_command, {"cmd": "allow", "domain": "second.example.org", "by": "a.teacher",
                                           "id": done})
        runtime.call(runtime._on_command, {"cmd": "allow", "domain": "third.example.org", "minutes": 999,
                                           "by": "a.teacher", "id": refused})
        results = {e["cmd_id"]: e for e in outbox_events(runtime, "cmd_result")}
        assert results[done]["result"] == "done" and results[done]["cmd"] == "allow"
        assert results[refused]["result"] == "refused" and "minutes" in results[refused]["error"]
        assert [e["domain"] for e in outbox_events(runtime, "override_opened")] == ["override-me.org",
                                                                                 "second.example.org"]
        wait_until(lambda: {"bbc.co.uk", "tiktok.com", "override-me.org"}
                   <= {row["domain"] for row in runtime.evidence_source(10)}, 5)
    finally:
        runtime.stop()
    assert comp.dnsmasq is None and comp.front_proc is None   # dnsmasq stopped with the agent


def test_agent_runs_without_dnsmasq(filter_root, monkeypatch, caplog):
    import agent.filter.component as component_module

    monkeypatch.setattr(component_module, "find_dnsmasq", lambda: None)
    comp = component_module.FilterComponent(filtering=filtering_for(), port=free_port(), filter_port=free_port())
    runtime = make_runtime(filter_root, [comp]).start()
    try:
        wait_until(lambda: runtime.policy is not None and comp.policy is not None, 10)
        assert not comp.dns_enabled
        assert "dnsmasq is not installed: DNS filtering is OFF" in caplog.text
        # The rest of the agent works: the report button still blanks the screen.
        runtime.press()
        wait_until(lambda: runtime.screen.is_blank, 5)
    finally:
        runtime.stop()


def test_filter_check_through_the_running_agent(filter_root, stub_upstream, capsys, monkeypatch):
    import json

    from agent.cli import main as agent_main
    from agent.filter.component import FilterComponent

    comp = FilterComponent(filtering=filtering_for(), port=free_port(), filter_port=free_port(),
                           upstream_port=stub_upstream.port, settle_seconds=0.2)
    runtime = make_runtime(filter_root, [comp], control=True).start()
    monkeypatch.setenv("SUDO_USER", "j.tech")
    try:
        wait_until(lambda: "filter-check" in runtime.control.handlers and comp.spec is not None, 10)
        with pytest.raises(SystemExit) as done:
            agent_main(["filter", "check", "--socket", str(filter_root / "control.sock"), "--json"])
        result = json.loads(capsys.readouterr().out)
        assert done.value.code == 0, result
        assert result["ok"] and result["recorded"] and result["profile"] == "ks2" and result["failed"] == 0
        by_domain = {r["domain"]: r for r in result["results"]}
        assert by_domain["bbc.co.uk"]["expect"] == "allowed" and by_domain["bbc.co.uk"]["result"] == "pass"
        assert by_domain["facebook.com"]["rcode"] == "NXDOMAIN"
        assert by_domain["use-application-dns.net"]["result"] == "pass"
        [event] = wait_until(lambda: outbox_events(runtime, "filter_check"), 5)
        assert event["by"] == "j.tech" and event["ok"] is True and len(event["results"]) == len(result["results"])
        # The check's own look-ups of blocked test domains are not pupils' blocked attempts.
        blocked_names = {r["domain"] for r in result["results"] if r["expect"] == "blocked"}
        blocked_names.discard("use-application-dns.net")   # the canary is not evidence
        wait_until(lambda: blocked_names <= {row["domain"] for row in runtime.evidence_source(10)}, 5)
        runtime.call(comp._tick)
        assert not comp.blocked.coalescer._open and outbox_events(runtime, "blocked") == []
        # Checked locally (technician's laptop style): same verdicts, but not recorded.
        with pytest.raises(SystemExit) as done:
            agent_main(["filter", "check", "--config", str(REPO / "config"), "--device", "5b-pi-01",
                        "--port", str(comp.port)])
        out = capsys.readouterr().out
        assert done.value.code == 0 and "NOT recorded" in out and "PASS  blocked  tiktok.com" in out
    finally:
        runtime.stop()
