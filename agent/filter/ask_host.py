"""The block page's native messaging host: "Ask my teacher" from the browser to the agent.

Chromium starts this (as the pupil, the browser's own user) when the block page
(agent/filter/extension/blocked.js) sends ``{"op": "ask", "domain": ...}``; its host
manifest (agent/filter/blockpage.py writes it) lets only our extension reach it.  It
passes the domain on to the agent's control socket as the ``ask`` op, which the press
group (the desktop users) may use like ``press`` (agent/core/control.py), and answers the
page with the agent's reply.  The agent checks the domain, limits how often a device may
ask, and adds everything else (seat, user, time); nothing from the page but a domain name
is ever sent.

Native messaging framing: a 4-byte length (native byte order) and UTF-8 JSON, both ways.
Standard library only: it runs on the system Python (``/usr/bin/python3 -I``).
"""

from __future__ import annotations

import json
import socket
import struct
import sys

MAX_MESSAGE = 4096


def read_message(stream) -> dict | None:
    header = stream.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack("=I", header)
    if length > MAX_MESSAGE:
        raise ValueError(f"message of {length} bytes; the most is {MAX_MESSAGE}")
    data = json.loads(stream.read(length).decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("a message must be a JSON object")
    return data


def write_message(stream, message: dict) -> None:
    data = json.dumps(message).encode("utf-8")
    stream.write(struct.pack("=I", len(data)) + data)
    stream.flush()


def ask_agent(socket_path: str, domain: str, timeout: float = 5.0) -> dict:
    """The agent's answer to ``{"op": "ask", "domain": domain}`` on its control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(json.dumps({"op": "ask", "domain": domain}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n") and len(buf) < 65536:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    answer = json.loads(buf.decode() or "{}")
    return answer if isinstance(answer, dict) else {"ok": False, "error": "the agent said nothing useful"}


def main(argv: list[str]) -> int:
    socket_path = "/run/classroom-agent/control.sock"
    if "--socket" in argv:
        socket_path = argv[argv.index("--socket") + 1]
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            message = read_message(stdin)
        except (ValueError, UnicodeDecodeError) as exc:
            write_message(stdout, {"ok": False, "error": f"bad message: {exc}"})
            return 1
        if message is None:
            return 0
        domain = message.get("domain")
        if message.get("op") != "ask" or not isinstance(domain, str) or len(domain) > 253:
            write_message(stdout, {"ok": False, "error": "only {op: ask, domain} is understood"})
            continue
        try:
            answer = ask_agent(socket_path, domain)
        except (OSError, ValueError) as exc:
            answer = {"ok": False, "error": f"the agent is not reachable: {exc}"}
        write_message(stdout, {k: answer[k] for k in ("ok", "error", "asked") if k in answer})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
