"""The DNS-bypass ruleset: syntax (nft -c) and real enforcement inside a test network namespace."""

from __future__ import annotations

import sys

import pytest

from agent.filter import nftables
from agent.filter.dnsmasq import (DnsmasqPaths, build_spec, render_conf, render_front_conf, render_hosts,
                                  render_servers)
from fake_runtime import FakeRuntime
from filter_fixtures import STUB_RECORDS, filter_root  # noqa: F401
from services import dig, require_binary, require_root, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("kw", [{}, {"block_quic": False}, {"dns_port": 5353, "dnsmasq_user": 999}])
def test_rendered_ruleset_passes_nft_check(kw):
    require_binary("nft")
    require_root()
    text = nftables.render(**kw)
    assert "table inet classroom_safety {" in text
    assert ("udp dport 443 counter reject" in text) == kw.get("block_quic", True)
    assert nftables.check(text) is None


def test_nft_check_reports_a_broken_ruleset():
    require_binary("nft")
    require_root()
    message = nftables.check("table inet classroom_safety { chain x { bogus } }")
    assert message and "\n" not in message


@pytest.mark.integration
def test_ruleset_redirects_dns_and_blocks_dot_in_a_namespace(netns, dnsmasq_factory, filter_root):
    require_binary("nft")
    dnsmasq = require_binary("dnsmasq")
    ns, outside = netns(), netns()
    # A route out of the namespace (to a namespace that answers nothing) so queries to
    # "outside" resolvers are really sent.
    _, gateway = ns.link(outside)
    ns.run(["ip", "route", "add", "default", "via", gateway])
    # The school's upstream, inside the namespace on its own address, standard port.
    dnsmasq_factory(STUB_RECORDS, port=53, netns=ns, listen_address="127.0.0.53")

    # The agent's dnsmasq, from the generated config, as the unprivileged dnsmasq user.
    rt = FakeRuntime(filter_root)
    rt.close()
    paths = DnsmasqPaths(filter_root / "dnsmasq")
    paths.dir.mkdir(mode=0o755)
    spec = build_spec(rt.policy, ["127.0.0.53"], upstream_port=53)
    paths.conf.write_text(render_conf(paths, port=5391, listen=("127.0.0.1",), user="dnsmasq"))
    paths.front_conf.write_text(render_front_conf(port=53, filter_port=5391, user="dnsmasq"))
    paths.servers.write_text(render_servers(spec))
    paths.hosts.write_text(render_hosts(spec, {}))
    paths.querylog.touch()
    import shutil

    shutil.chown(paths.querylog, "dnsmasq")
    ns.popen([dnsmasq, "--keep-in-foreground", f"--conf-file={paths.conf}"], log_path=paths.stderr)
    ns.popen([dnsmasq, "--keep-in-foreground", f"--conf-file={paths.front_conf}"], log_path=paths.front_stderr)

    def q(name, server):
        return dig(name, port=53, server=server, netns=ns.name, timeout=1)

    wait_until(lambda: q("bbc.co.uk", "127.0.0.1") == ("NOERROR", ["192.0.2.10"]), 10)
    # Before the rules: the upstream can be asked directly (a bypass), an outside resolver is silent.
    assert q("facebook.com", "127.0.0.53") == ("NOERROR", ["192.0.2.66"])
    assert q("facebook.com", "203.0.113.53")[0] == "TIMEOUT"

    nftables.apply(nftables.render(dns_port=53, dnsmasq_user="dnsmasq"), argv_prefix=ns.exec_argv([]))
    listed = ns.run(["nft", "list", "table", "inet", "classroom_safety"]).stdout
    assert "redirect to :53" in listed

    # Any resolver a pupil names is answered by the local dnsmasq: allowlist applies.
    assert q("facebook.com", "203.0.113.53") == ("NXDOMAIN", [])
    assert q("facebook.com", "127.0.0.53") == ("NXDOMAIN", [])        # even the real upstream, directly
    # dnsmasq's own queries to the upstream are exempt (else they would loop back to itself).
    assert q("bbc.co.uk", "203.0.113.53") == ("NOERROR", ["192.0.2.10"])
    # DNS over TLS is refused at once, not left to time out.
    probe = ("import socket,sys\ns=socket.socket();s.settimeout(3)\n"
             "try:\n s.connect(('203.0.113.53',853))\nexcept ConnectionRefusedError:\n print('refused')\n"
             "except OSError as e:\n print(type(e).__name__)\n")
    assert ns.run([sys.executable, "-c", probe]).stdout.strip() == "refused"
    # Applying again replaces the table atomically (idempotent), and removal leaves no table.
    nftables.apply(nftables.render(dns_port=53, dnsmasq_user="dnsmasq", block_quic=False),
                   argv_prefix=ns.exec_argv([]))
    assert "udp dport 443 counter reject" not in ns.run(["nft", "list", "table", "inet", "classroom_safety"]).stdout
    nftables.remove(argv_prefix=ns.exec_argv([]))
    assert ns.run(["nft", "list", "tables"]).stdout.strip() == ""


@pytest.mark.integration
def test_resolvers_on_odd_ports_and_public_resolvers_are_refused(netns, dnsmasq_factory):
    """The attack from review: a resolver on udp/5353 or tcp/443 answered blocked names,
    as the ruleset redirected only port 53 and rejected only 853."""
    require_binary("nft")
    ns, outside = netns(), netns()
    _, far = ns.link(outside)
    ns.run(["ip", "route", "add", "default", "via", far])
    # A rogue resolver "on the internet": plain DNS on udp+tcp 5353, and on 443 (DNS over TCP
    # where HTTPS lives).  It answers anything, including names the allowlist refuses.
    rogue = dnsmasq_factory(STUB_RECORDS, port=5353, netns=outside, listen_address=far)
    dnsmasq_factory(STUB_RECORDS, port=443, netns=outside, listen_address=far)

    def q(port, tcp=False):
        return dig("facebook.com", port=port, server=far, tcp=tcp, netns=ns.name, timeout=1)

    wait_until(lambda: q(5353) == ("NOERROR", ["192.0.2.66"]), 10)
    assert q(443, tcp=True) == ("NOERROR", ["192.0.2.66"])          # the bypass works without the table

    # The far address stands in for a public resolver (the real list holds 1.1.1.1, 8.8.8.8 ...);
    # test addresses stay inside 198.18.0.0/15.
    ruleset = nftables.render(dns_port=53, dnsmasq_user="dnsmasq", refuse_v4=(far,))
    nftables.apply(ruleset, argv_prefix=ns.exec_argv([]))
    assert q(5353)[0] in ("TIMEOUT", "REFUSED", "ERROR")            # UDP to an odd port: refused
    assert q(5353, tcp=True)[0] != "NOERROR"                        # DNS over TCP on the mDNS port
    assert q(443, tcp=True)[0] != "NOERROR"                         # a listed resolver, on any port
    assert q(443)[0] != "NOERROR"
    assert rogue.port == 5353

    # Without the address on the list, DNS over TCP/443 to an unknown resolver still gets
    # through: that is what the school's upstream filter and the browser policy are for
    # (docs/security.md).  UDP on odd ports stays closed; allow_udp_ports opens one.
    nftables.apply(nftables.render(dns_port=53, dnsmasq_user="dnsmasq", refuse_v4=(), allow_udp_ports=(5353,)),
                   argv_prefix=ns.exec_argv([]))
    assert q(443, tcp=True) == ("NOERROR", ["192.0.2.66"])
    assert q(5353) == ("NOERROR", ["192.0.2.66"])


def test_the_default_ruleset_refuses_the_well_known_public_resolvers():
    text = nftables.render()
    for address in ("8.8.8.8", "1.1.1.1", "9.9.9.9", "208.67.222.222", "2606:4700:4700::1111", "2001:4860:4860::8888"):
        assert address in text
    assert 'meta l4proto udp counter reject' in text
