"""A device taken off the school network and back (issue 17 item 4), in network namespaces
this test creates: never the host's network.

* "school": the school's filtered resolver (dnsmasq) and broker (mosquitto);
* "home": another filtered resolver (the trust's, public-facing) and the trust's public broker;
* "device": the real agent runtime with the real filter (its own dnsmasq pair on
  127.0.0.1:53 and the nftables table, both inside this namespace), linked to both by veths.

The school veth goes down: the agent keeps filtering allowlist-only (nothing resolves that is
not allowed, whichever resolver is asked), switches to the home resolver once the school has
been gone ``leave_after_seconds``, its queued events reach the public broker, nftables lets
dnsmasq reach only the home resolver, and a press made at home (the screen still blanks)
says ``location: offsite`` and reaches the remote-learning contact through server/notify (a
real SMTP server).  The veth comes back: the agent returns to the school resolver and broker
and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from agent.config.schema import AgentBootstrap
from agent.core.control import request
from filter_fixtures import STUB_RECORDS, world_readable_dir
from notify_fixtures import smtp_server, wait_for_mail, write_notify_file  # noqa: F401
from runtime_fixtures import REPO, unbatched
from server_fixtures import sqlite_store  # noqa: F401
from services import dig, require_binary, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SITE = "penny-acres"
PREFIX = "classroom/v1"
DEVICE = "5b-pi-01"
REMOTE = "remote@penny-acres.test"
# The home resolver answers allowed names with other addresses, so a test can tell who answered.
HOME_RECORDS = STUB_RECORDS.replace("192.0.2.10", "192.0.2.110")

RUNNER = textwrap.dedent("""
    import signal, sys, threading
    from gpiozero.pins.mock import MockFactory
    from agent.cli import _bootstrap
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessScreen
    from agent.filter.component import FilterComponent
    from agent.report.screen import Screen

    # The real runtime and filter (dnsmasq, nftables in this namespace); no guard, lock or
    # sessions, which would act on the whole machine.
    runtime = Runtime(_bootstrap(sys.argv[1]), screen=Screen(HeadlessScreen()), pin_factory=MockFactory(),
                      components=[FilterComponent(write_browser=False, settle_seconds=0.3)]).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    runtime.stop()
""")


def _broker(ns, address: str, directory: Path):
    """A broker in *ns* and a mosquitto_sub recording everything on it: the file it writes."""
    ns.mosquitto(address, 1883, directory)
    out = directory / "observed.txt"
    ns.popen([require_binary("mosquitto_sub"), "-h", address, "-p", "1883", "-q", "1", "-V", "mqttv5",
              "-t", f"{PREFIX}/#", "-F", "%t %p"], stdout=open(out, "wb"))
    return out


def _messages(out: Path) -> list[tuple[str, dict]]:
    found = []
    for line in out.read_text().splitlines():
        topic, payload = line.split(" ", 1)
        found += unbatched(topic.rsplit("/", 1)[1], json.loads(payload))
    return found


def _events(out: Path, kind: str) -> list[dict]:
    return [p for k, p in _messages(out) if k == "event" and p["type"] == kind]


def test_a_device_moves_from_school_to_home_and_back(tmp_path, netns, dnsmasq_factory, smtp_server, sqlite_store):
    require_binary("dnsmasq")
    require_binary("nft")
    device, school, home = netns(), netns(), netns()
    dev_school, school_addr = device.link(school)
    dev_home, home_addr = device.link(home)
    dnsmasq_factory(STUB_RECORDS, port=53, netns=school, listen_address=school_addr)
    dnsmasq_factory(HOME_RECORDS, port=53, netns=home, listen_address=home_addr)
    at_school = _broker(school, school_addr, tmp_path / "school-broker")
    at_home = _broker(home, home_addr, tmp_path / "public-broker")

    # The example tree, with this test's resolvers and brokers and quick off-site timings.
    tree = tmp_path / "config"
    shutil.copytree(REPO / "config", tree)
    site = yaml.safe_load((tree / "site.yaml").read_text())
    site["filtering"]["upstream_dns"] = [school_addr]
    site["broker"]["keepalive_seconds"] = 5
    site["escalation"]["contacts"].append({"name": "Remote learning lead", "role": "remote-learning",
                                           "email": REMOTE})
    site["offsite"] = {"upstream_dns": [home_addr], "broker_url": f"mqtt://{home_addr}:1883",
                       "leave_after_seconds": 5, "return_after_seconds": 2, "probe_seconds": 1}
    (tree / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
    state = world_readable_dir("cs-offsite-")   # dnsmasq reads its files after dropping root
    sock = tmp_path / "control.sock"
    boot = AgentBootstrap(device=DEVICE, site=SITE, broker_url=f"mqtt://{school_addr}:1883",
                          collector_url="http://127.0.0.1:9", credentials=str(tmp_path / "none.yaml"),
                          state_dir=str(state / "state"), control_socket=str(sock), config_dir=str(tree),
                          screen_backend="headless", dnsmasq_dir=str(state / "dnsmasq"),
                          blockpage_dir=str(state / "blockpage"), chromium_native_hosts_dir=None,
                          chromium_policy_dir=str(state / "chromium"), firefox_policy_dir=str(state / "firefox"))
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(boot.model_dump(mode="json", exclude_none=True)))
    (tmp_path / "runner.py").write_text(RUNNER)
    log = tmp_path / "agent.log"
    agent = device.popen([sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "agent.yaml")],
                         log_path=log, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO))
    try:
        _run(device, agent, log, sock, school_addr, home_addr, dev_school, dev_home, at_school, at_home,
             smtp_server, sqlite_store, tmp_path)
    finally:
        if agent.poll() is None:
            agent.terminate()
            agent.wait(20)
        shutil.rmtree(state, ignore_errors=True)


def _run(device, agent, log, sock, school_addr, home_addr, dev_school, dev_home, at_school, at_home,
         smtp_server, store, tmp_path):
    def status():
        if agent.poll() is not None:
            raise AssertionError(log.read_text()[-3000:])
        return request(sock, {"op": "status"})["status"]

    def ask(name, server="127.0.0.1"):
        return dig(name, port=53, server=server, netns=device.name)

    def table():
        return device.run(["nft", "list", "table", "inet", "classroom_safety"]).stdout

    def why():
        return f"{status()}\n{log.read_text()[-3000:]}"

    # At school: the school's resolver answers allowed names; nothing else resolves; nftables
    # sends a pupil's query for another resolver to the device's dnsmasq.
    wait_until(lambda: sock.exists() and status()["connected"], 30, message=why)
    wait_until(lambda: ask("bbc.co.uk") == ("NOERROR", ["192.0.2.10"]), 10, message=why)
    assert status()["location"] == "school"
    assert ask("tiktok.com") == ("NXDOMAIN", [])
    assert ask("tiktok.com", server=home_addr) == ("NXDOMAIN", [])     # redirected: still the allowlist
    wait_until(lambda: school_addr in table(), 10, message=why)
    assert home_addr not in table()                                     # not in use: not let through

    # The school network goes (the laptop goes home).  A blocked attempt is queued meanwhile.
    device.run(["ip", "link", "set", device.interface(dev_school), "down"])
    assert ask("tiktok.com") == ("NXDOMAIN", [])
    wait_until(lambda: status()["location"] == "offsite", 60, message=why)
    wait_until(lambda: ask("bbc.co.uk") == ("NOERROR", ["192.0.2.110"]), 10, message=why)  # the home resolver
    assert ask("tiktok.com") == ("NXDOMAIN", [])                        # still allowlist-only
    assert ask("facebook.com", server=home_addr) == ("NXDOMAIN", [])    # asking it directly changes nothing
    wait_until(lambda: home_addr in table(), 10, message=why)
    assert school_addr not in table()
    wait_until(lambda: status()["connected"] and status()["broker"] == f"mqtt://{home_addr}:1883"
               and status()["outbox_pending"] == 0, 30, message=why)
    # What was queued reached the trust's public broker: the blocked attempt and the move.
    assert any(e["domain"] == "tiktok.com" for e in _events(at_home, "blocked"))
    [moved] = [e for e in _events(at_home, "network_location") if e["location"] == "offsite"]
    assert moved["previous"] == "school" and "off-site resolver answers" in moved["reason"]
    wait_until(lambda: any(k == "status" and p["state"] == "online" and p.get("location") == "offsite"
                           for k, p in _messages(at_home)), 10)
    # A blocked attempt made at home is logged with the device's address on the home network.
    [at_home_blocked] = wait_until(lambda: [e for e in _events(at_home, "blocked") if e["domain"] == "facebook.com"],
                                   15, message=why)
    assert at_home_blocked["device_ip"] == dev_home

    # A press at home: the screen blanks, the alert says where it was made...
    assert request(sock, {"op": "press", "source": "key"})["ok"]
    assert status()["screen"]["blank"]
    raised = wait_until(lambda: [p for k, p in _messages(at_home) if k == "alert" and p["state"] == "raised"],
                        15, message=why)
    assert raised[0]["location"] == "offsite" and raised[0]["device"] == DEVICE
    # ...and the collector sends it to the remote-learning contact (server/notify, real SMTP).
    from server.notify import Notifier, load_notify
    from server.presence import Presence
    from agent.config import load_tree

    smtp_server.start()
    notifier = Notifier(store, load_notify(write_notify_file(tmp_path, smtp_server, None)),
                        lambda: load_tree(tmp_path / "config"), Presence(store))
    store.record_alert(raised[0])
    notifier.listener("alert", None, raised[0])
    notifier.run_once()
    [mail] = wait_for_mail(smtp_server, REMOTE)
    assert "away from school" in mail["Subject"]

    # Back at school: the school resolver and broker again, and the move reported there.
    device.run(["ip", "link", "set", device.interface(dev_school), "up"])
    wait_until(lambda: status()["location"] == "school", 60, message=why)
    wait_until(lambda: ask("bbc.co.uk") == ("NOERROR", ["192.0.2.10"]), 10, message=why)
    assert ask("tiktok.com") == ("NXDOMAIN", [])
    wait_until(lambda: school_addr in table() and home_addr not in table(), 10, message=why)
    wait_until(lambda: status()["connected"] and status()["broker"] == f"mqtt://{school_addr}:1883"
               and status()["outbox_pending"] == 0, 30, message=why)
    back = wait_until(lambda: [e for e in _events(at_school, "network_location") if e["location"] == "school"],
                      10, message=why)
    assert back[0]["previous"] == "offsite"
