"""``classroom-agent filter show`` and ``classroom-agent filter check``.

``show`` renders everything the filter would install for a device (dnsmasq config,
servers-file, safe-search hosts, Chromium and Firefox policies, the nftables ruleset) so
a technician can inspect it without touching the device.  ``check`` resolves the
profile's test domains; when the agent is running it asks the agent (control socket op
``filter-check``), which also sends the ``filter_check`` event for the DfE check log.

agent/cli.py wires these in with ``add_parser(sub, load_policy)``: it hands over its own
``--config/--device/--at`` reader rather than this module importing the CLI back.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Callable

from ..errors import UserError

PARTS = ("front", "dnsmasq", "servers", "hosts", "chromium", "firefox", "nftables")


def add_parser(sub, load_policy: Callable) -> None:
    """Add ``filter show|check`` to the CLI's subparsers; *load_policy(args)* returns
    (tree, effective policy) for ``--config``, ``--device`` and ``--at``."""
    p = sub.add_parser("filter", help="inspect and check the device's web filter")
    p.set_defaults(load_policy=load_policy)
    fsub = p.add_subparsers(dest="filter_command", metavar="ACTION")
    fsub.required = True

    s = fsub.add_parser("show", help="render the dnsmasq config, browser policies and nftables ruleset")
    s.add_argument("--config", required=True, metavar="DIR|FILE", help="config tree or compiled device config")
    s.add_argument("--device", required=True, metavar="ID")
    s.add_argument("--at", metavar="ISO8601", help="moment to evaluate (default: now)")
    s.add_argument("--part", choices=PARTS, help="show only this part")
    s.add_argument("--dnsmasq-dir", default="/run/classroom-agent/dnsmasq", metavar="DIR",
                   help="where the agent keeps its dnsmasq files (paths inside the config)")
    s.add_argument("--port", type=int, default=53, help="port the agent's dnsmasq listens on")
    s.add_argument("--filter-port", type=int, default=5391, help="internal port of the filtering dnsmasq")
    s.set_defaults(func=cmd_show)

    c = fsub.add_parser("check", help="resolve the profile's test domains and report pass/fail")
    c.add_argument("--config", metavar="DIR|FILE",
                   help="config tree or compiled config: check locally instead of asking the agent")
    c.add_argument("--device", metavar="ID", help="device whose profile to check (with --config)")
    c.add_argument("--server", default="127.0.0.1", help="resolver to ask (with --config; default 127.0.0.1)")
    c.add_argument("--port", type=int, default=53, help="its port (default 53)")
    c.add_argument("--socket", metavar="PATH", default="/run/classroom-agent/control.sock",
                   help="the running agent's control socket")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=cmd_check)


def render_all(tree, policy, *, dnsmasq_dir: str, port: int = 53,
               filter_port: int = 5391) -> dict[str, tuple[str, str]]:
    """{part: (where it goes, text)} for a device's policy."""
    from . import browser, nftables
    from .dnsmasq import (DnsmasqPaths, FilterError, build_spec, render_conf, render_front_conf, render_hosts,
                          render_servers)

    from urllib.parse import urlsplit

    from ..config.schema import is_domain

    filtering = tree.site.filtering
    hosts = {(urlsplit(u).hostname or "").lower() for u in (tree.site.broker.url, tree.site.collector.url)}
    try:
        spec = build_spec(policy, filtering.upstream_dns, infrastructure=[h for h in hosts if is_domain(h)])
    except FilterError as exc:
        raise UserError(str(exc)) from None
    paths = DnsmasqPaths(Path(dnsmasq_dir))
    return {
        "front": (str(paths.front_conf), render_front_conf(port=port, filter_port=filter_port, user="dnsmasq")),
        "dnsmasq": (str(paths.conf), render_conf(paths, port=filter_port, user="dnsmasq")),
        "servers": (str(paths.servers), render_servers(spec)),
        "hosts": (str(paths.hosts), render_hosts(spec, None)),
        "chromium": ("/etc/chromium/policies/managed/" + browser.CHROMIUM_FILE,
                     json.dumps(browser.chromium_policy(policy, block_quic=filtering.block_quic,
                                                             proxy=filtering.browser_proxy), indent=2) + "\n"),
        "firefox": ("/etc/firefox/policies/" + browser.FIREFOX_FILE + " (keys merged)",
                    json.dumps({"policies": browser.firefox_policy(policy, proxy=filtering.browser_proxy)}, indent=2) + "\n"),
        "nftables": (f"nft -f (table inet {nftables.TABLE})",
                     nftables.render(dns_port=port, block_quic=filtering.block_quic,
                                     allow_udp_ports=filtering.allow_udp_ports)),
    }


def cmd_show(args) -> int:
    tree, policy = args.load_policy(args)
    parts = render_all(tree, policy, dnsmasq_dir=args.dnsmasq_dir, port=args.port, filter_port=args.filter_port)
    chosen = [args.part] if args.part else list(PARTS)
    for i, name in enumerate(chosen):
        where, text = parts[name]
        if not args.part:
            print(("\n" if i else "") + f"### {name}: {where}")
        print(text, end="")
    return 0


def _who() -> str:
    return os.environ.get("SUDO_USER") or getpass.getuser()


def cmd_check(args) -> int:
    from .check import check_domains, event_fields

    if args.config:
        if not args.device:
            raise UserError("--device: required with --config")
        tree, policy = args.load_policy(args)
        check = tree.profiles[policy.key_stage].check
        results = check_domains(check.allowed, check.blocked, server=args.server, port=args.port)
        fields = event_fields(results, policy.key_stage, _who())
        fields["recorded"] = False
    else:
        from ..core.control import request

        try:
            reply = request(args.socket, {"op": "filter-check", "by": _who()}, timeout=60)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot reach the agent at {args.socket} ({exc}); "
                            "use --config DIR --device ID to check without it (not recorded)") from None
        if not reply.get("ok"):
            raise UserError(f"agent refused: {reply.get('error', 'no reason given')}")
        fields = reply["check"]
        fields["recorded"] = True
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        for r in fields["results"]:
            print(f"{r['result'].upper():4}  {r['expect']:7}  {r['domain']}  ({r['rcode']})")
        note = "recorded in the check log" if fields["recorded"] else "NOT recorded (checked without the agent)"
        print(f"{fields['profile']}: {fields['passed']} passed, {fields['failed']} failed; {note}")
    return 0 if fields["ok"] else 1
