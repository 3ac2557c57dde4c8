"""A tiny stub DNS client (stdlib only) for the agent's own look-ups.

The agent needs to ask a resolver a handful of questions: the address behind a
safe-search name, and the test domains of ``filter check``.  A full DNS library is not
worth a dependency for that, and the system resolver cannot be told which server and
port to ask, so this builds one query and reads A / AAAA / CNAME answers back.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct

# The mark (SO_MARK) on the agent's own probes of a named resolver (agent/uplink/location.py):
# nftables lets a packet with it through to that resolver instead of redirecting it to the
# device's dnsmasq (nftables.py).  Setting a mark needs CAP_NET_ADMIN, which pupils never have.
PROBE_MARK = 0x436C5301
QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "AAAA": 28, "HTTPS": 65}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        if not raw or len(raw) > 63:
            raise ValueError(f"{name!r} is not a domain name")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(name: str, qtype: str = "A", ident: int | None = None) -> tuple[int, bytes]:
    ident = random.randrange(0, 65536) if ident is None else ident
    header = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # RD set, one question
    return ident, header + _encode_name(name) + struct.pack(">HH", QTYPES[qtype], 1)


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    jumped_end = None
    for _ in range(128):  # bounded: a pointer loop must not hang the agent
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if jumped_end is None:
                jumped_end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        pos += 1
        if length == 0:
            break
        labels.append(msg[pos:pos + length].decode("ascii", "replace"))
        pos += length
    return ".".join(labels), (jumped_end if jumped_end is not None else pos)


def parse_response(msg: bytes, ident: int | None = None) -> tuple[str, list[str]]:
    """(rcode, answers) of a DNS response; answers are A/AAAA addresses or CNAME targets."""
    if len(msg) < 12:
        raise ValueError("short DNS response")
    rid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", msg[:12])
    if ident is not None and rid != ident:
        raise ValueError("DNS response id does not match the query")
    rcode = RCODES.get(flags & 0x0F, str(flags & 0x0F))
    try:
        return rcode, _answers(msg, qd, an)
    except (IndexError, struct.error) as exc:
        # A truncated or garbled packet is a bad response, not an agent crash.
        raise ValueError(f"malformed DNS response: {exc}") from None


def _answers(msg: bytes, qd: int, an: int) -> list[str]:
    pos = 12
    for _ in range(qd):
        _, pos = _read_name(msg, pos)
        pos += 4
    answers: list[str] = []
    for _ in range(an):
        _, pos = _read_name(msg, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", msg[pos:pos + 10])
        pos += 10
        rdata = msg[pos:pos + rdlen]
        if rtype == 1 and rdlen == 4:
            answers.append(str(ipaddress.IPv4Address(rdata)))
        elif rtype == 28 and rdlen == 16:
            answers.append(str(ipaddress.IPv6Address(rdata)))
        elif rtype == 5:
            answers.append(_read_name(msg, pos)[0] + ".")
        pos += rdlen
    return answers


def query(name: str, qtype: str = "A", *, server: str = "127.0.0.1", port: int = 53,
          timeout: float = 2.0, mark: int | None = None) -> tuple[str, list[str]]:
    """Ask *server*:*port* over UDP.  Returns (rcode, answers); rcode 'TIMEOUT' if no answer.
    *mark*: SO_MARK the query (``PROBE_MARK``), if this process may."""
    ident, packet = build_query(name, qtype)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if mark is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), mark)
            except OSError:
                pass  # no CAP_NET_ADMIN: then no nftables of ours either, and nothing to get past
        sock.settimeout(timeout)
        sock.connect((server, port))
        sock.send(packet)
        try:
            while True:
                data = sock.recv(4096)
                try:
                    return parse_response(data, ident)
                except ValueError:
                    continue  # a stray or late packet: keep waiting for ours
        except (socket.timeout, ConnectionRefusedError):
            return "TIMEOUT", []
