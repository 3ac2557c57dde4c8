"""Bypass prevention: the nftables ruleset of the agent's own table ``inet classroom_safety``.

- every DNS query (UDP/TCP 53) leaving the device is redirected to the local dnsmasq,
  except dnsmasq's own queries to the school's upstream (matched by its user, ``skuid``);
- DNS over TLS / QUIC (853) is rejected, so clients fall back to plain DNS;
- DNS on other ports: outgoing UDP is refused except what a classroom device needs
  (DHCP, NTP, mDNS multicast, and ``filtering.allow_udp_ports``), so a resolver on
  udp/5353 or any other odd port cannot be asked; DNS over TCP on 5353 is refused too;
- the well-known public resolvers (``PUBLIC_RESOLVERS``: Google, Cloudflare, Quad9,
  OpenDNS, AdGuard, CleanBrowsing...) are refused on every port and protocol, which
  closes DNS over HTTPS and DNS over TCP/443 to them;
- optionally QUIC (UDP 443) is rejected, so browsers use TCP (where the browser policy
  and any school proxy apply).

Only dnsmasq itself (``skuid``) is exempt from all of this: it alone talks to the
school's upstream, and when the agent passes the resolvers in use (``upstreams``) only to
them: the off-site resolver (agent/uplink/location.py) is let through only while the device
is off-site, and the school's only while it is at school.  The agent's own probes of a
named resolver carry ``PROBE_MARK`` (agent/filter/dnsclient.py) and are not redirected;
setting a mark needs CAP_NET_ADMIN, which no pupil process has.  What is left is DNS over TCP or HTTPS to a resolver that is not on
the list, on an ordinary port: that cannot be told apart from HTTPS here, and relies on
the browser policy (DoH off, no extensions, no proxies), the guard (bypass tools) and
the school's upstream filter (docs/security.md says so).

The file replaces the table atomically (create, delete, recreate in one ``nft -f``
transaction) and never touches any other table.  Applied only when the device's
agent.yaml allows it (``apply_nftables``) and the agent runs as root; it is left in
place when the agent stops, so DNS fails closed rather than open.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import ipaddress
from typing import Sequence

from .dnsclient import PROBE_MARK

TABLE = "classroom_safety"


# Public resolvers a pupil could name instead of the device's dnsmasq (plain DNS on any
# port, DNS over TCP, DNS over HTTPS/TLS).  Sources: each operator's own documentation.
PUBLIC_RESOLVERS_V4 = (
    "8.8.8.8", "8.8.4.4",                                   # Google Public DNS
    "1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3",  # Cloudflare (+ families)
    "9.9.9.9", "149.112.112.112", "9.9.9.10", "149.112.112.10", "9.9.9.11", "149.112.112.11",  # Quad9
    "208.67.222.222", "208.67.220.220", "208.67.222.123", "208.67.220.123",  # OpenDNS / FamilyShield
    "94.140.14.14", "94.140.15.15", "94.140.14.15", "94.140.15.16",  # AdGuard
    "185.228.168.9", "185.228.169.9", "185.228.168.168", "185.228.169.168",  # CleanBrowsing
    "76.76.2.0", "76.76.10.0",                              # Control D
    "45.90.28.0/24", "45.90.30.0/24",                       # NextDNS anycast
    "64.6.64.6", "64.6.65.6",                               # Verisign
    "77.88.8.8", "77.88.8.1",                               # Yandex
    "156.154.70.1", "156.154.71.1",                         # Neustar / UltraDNS
)
PUBLIC_RESOLVERS_V6 = (
    "2001:4860:4860::8888", "2001:4860:4860::8844",
    "2606:4700:4700::1111", "2606:4700:4700::1001", "2606:4700:4700::1112", "2606:4700:4700::1002",
    "2606:4700:4700::1113", "2606:4700:4700::1003",
    "2620:fe::fe", "2620:fe::9", "2620:fe::10", "2620:fe::11",
    "2620:119:35::35", "2620:119:53::53", "2620:119:35::123", "2620:119:53::123",
    "2a10:50c0::ad1:ff", "2a10:50c0::ad2:ff",
    "2a0d:2a00:1::2", "2a0d:2a00:2::2",
    "2a07:a8c0::/33", "2a07:a8c1::/33",
)
# UDP a classroom device needs besides DNS: DHCP (v4, v6) and NTP.  mDNS is allowed to its
# multicast groups only (printers, casting), never to a unicast host.
NEEDED_UDP_PORTS = (67, 68, 123, 546, 547)


def render(*, dns_port: int = 53, dnsmasq_user: str | int = "dnsmasq", block_quic: bool = True,
           allow_udp_ports: Sequence[int] = (), refuse_v4: Sequence[str] = PUBLIC_RESOLVERS_V4,
           refuse_v6: Sequence[str] = PUBLIC_RESOLVERS_V6, upstreams: Sequence[str] = ()) -> str:
    """The table's text.  *upstreams*: the resolvers dnsmasq forwards to now; given, dnsmasq
    may send nothing anywhere else (empty: dnsmasq is not limited by address)."""
    user = str(dnsmasq_user) if isinstance(dnsmasq_user, int) else f'"{dnsmasq_user}"'
    if upstreams:
        v4 = [str(a) for a in map(ipaddress.ip_address, upstreams) if a.version == 4]
        v6 = [str(a) for a in map(ipaddress.ip_address, upstreams) if a.version == 6]
        dnsmasq_out = "".join(
            f'\t\tmeta skuid {user} {family} daddr {{ {", ".join(found)} }} accept '
            f'comment "dnsmasq: the resolver in use"\n'
            for family, found in (("ip", v4), ("ip6", v6)) if found)
        dnsmasq_out += f'\t\tmeta skuid {user} counter reject comment "dnsmasq: no other resolver"\n'
    else:
        dnsmasq_out = f'\t\tmeta skuid {user} accept comment "dnsmasq alone talks to the upstream"\n'
    udp_ports = ", ".join(str(p) for p in sorted(set(NEEDED_UDP_PORTS) | set(allow_udp_ports)))
    quic = ('\t\tudp dport 443 counter reject comment "QUIC: browsers fall back to TCP"\n' if block_quic
            else "\t\tudp dport 443 accept\n")
    sets = ""
    refuse = ""
    if refuse_v4:
        sets += ("\tset public_resolvers_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
                 f"\t\telements = {{ {', '.join(refuse_v4)} }}\n\t}}\n")
        refuse += ('\t\tip daddr @public_resolvers_v4 counter reject '
                   'comment "public resolvers: DNS on any port, DoH, DoT"\n')
    if refuse_v6:
        sets += ("\tset public_resolvers_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n"
                 f"\t\telements = {{ {', '.join(refuse_v6)} }}\n\t}}\n")
        refuse += "\t\tip6 daddr @public_resolvers_v6 counter reject\n"
    return (
        "#!/usr/sbin/nft -f\n"
        "# classroom-safety: stop DNS bypass. Generated by classroom-agent; only this table is ours.\n"
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        f"{sets}"
        "\tchain dns_redirect {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        f'\t\tmeta skuid {user} accept comment "dnsmasq itself may ask the school upstream"\n'
        f'\t\tmeta mark {PROBE_MARK:#x} accept comment "the agent\'s own probe of a named resolver"\n'
        f'\t\tudp dport 53 counter redirect to :{dns_port} comment "all DNS goes to the local dnsmasq"\n'
        f"\t\ttcp dport 53 counter redirect to :{dns_port}\n"
        "\t}\n"
        "\tchain bypass_block {\n"
        "\t\ttype filter hook output priority filter; policy accept;\n"
        '\t\toif "lo" accept\n'
        f"{dnsmasq_out}"
        f"{refuse}"
        '\t\ttcp dport 853 counter reject with tcp reset comment "DNS over TLS"\n'
        '\t\tudp dport 853 counter reject comment "DNS over QUIC"\n'
        '\t\ttcp dport 5353 counter reject with tcp reset comment "DNS over TCP on the mDNS port"\n'
        f"{quic}"
        '\t\tudp dport 53 accept comment "already redirected to the local dnsmasq"\n'
        f"\t\tudp dport {{ {udp_ports} }} accept\n"
        "\t\tip daddr 224.0.0.251 udp dport 5353 accept comment \"mDNS multicast only\"\n"
        "\t\tip6 daddr ff02::fb udp dport 5353 accept\n"
        '\t\tmeta l4proto udp counter reject comment "UDP elsewhere: no resolver on an odd port"\n'
        "\t}\n"
        "}\n"
    )


def find_nft() -> str | None:
    return shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)


def _run(argv: Sequence[str], text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=text, capture_output=True, text=True, timeout=30)


def check(ruleset: str, *, argv_prefix: Sequence[str] = ()) -> str | None:
    """``nft -c -f -``: None if the ruleset is valid, else nft's one-line complaint."""
    nft = find_nft()
    if nft is None:
        return "nft is not installed"
    r = _run([*argv_prefix, nft, "-c", "-f", "-"], ruleset)
    return None if r.returncode == 0 else " | ".join((r.stderr or r.stdout).strip().splitlines()[:3])


def apply(ruleset: str, *, argv_prefix: Sequence[str] = ()) -> None:
    """Load the table (``nft -f -``).  Raises RuntimeError with nft's message."""
    nft = find_nft()
    if nft is None:
        raise RuntimeError("nft is not installed")
    r = _run([*argv_prefix, nft, "-f", "-"], ruleset)
    if r.returncode != 0:
        raise RuntimeError("nft -f failed: " + " | ".join((r.stderr or r.stdout).strip().splitlines()[:3]))


def remove(*, argv_prefix: Sequence[str] = ()) -> None:
    """Delete our table (uninstall / tests).  No error if it is not there."""
    nft = find_nft()
    if nft is not None:
        _run([*argv_prefix, nft, "delete", "table", "inet", TABLE])
