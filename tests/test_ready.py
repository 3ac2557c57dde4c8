"""READY means protected (issue 13 item 8), and the button works with no network at all.

systemd's READY=1 (agent/core/sdnotify.py) is received on a real unix datagram socket, as
systemd would: it comes only after the boot job has run (every component started, the
filter's real dnsmasq up and closed), with the control socket serving and the GPIO button
armed, here on the pins the device last knew, with no config loaded.  An agent started in
a network namespace with nothing but loopback is READY, takes a press at once, and keeps
it across a restart.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from agent.config.schema import AgentBootstrap
from agent.core.control import request
from agent.core.runtime import Runtime
from agent.core.sdnotify import Notifier
from agent.desktop.headless import HeadlessScreen
from agent.filter import dnsclient
from agent.report.screen import Screen
from filter_fixtures import filter_root, filtering_for, stub_upstream  # noqa: F401
from runtime_fixtures import REPO
from services import free_port, require_binary, terminate, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

AGENT = [sys.executable, "-c", "import sys; from agent.cli import main; main(sys.argv[1:])"]


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


def boot_for(root: Path, **overrides) -> AgentBootstrap:
    fields = dict(device="5b-pi-01", site="penny-acres", broker_url="mqtt://127.0.0.1:9",
                  collector_url="http://127.0.0.1:9", credentials=str(root / "none.yaml"),
                  state_dir=str(root / "state"), control_socket=str(root / "control.sock"),
                  config_dir=str(REPO / "config"), screen_backend="headless",
                  dnsmasq_dir=str(root / "dnsmasq"), chromium_policy_dir=str(root / "chromium" / "managed"),
                  firefox_policy_dir=str(root / "firefox" / "policies"), apply_nftables=False,
                  chromium_native_hosts_dir=str(root / "chromium" / "native-messaging-hosts"),
                  blockpage_dir=str(root / "blockpage"))
    fields.update(overrides)
    return AgentBootstrap(**fields)


class Gate:
    """A component whose start waits until the test opens it (a slow desktop, a slow disk)."""

    name = "gate"

    def __init__(self):
        self.entered, self.opened = threading.Event(), threading.Event()

    def start(self, runtime):
        self.entered.set()
        assert self.opened.wait(30)

    def stop(self):
        pass

    def on_policy(self, policy):
        pass

    def on_command(self, cmd):
        return False


def test_ready_waits_for_the_boot_then_dnsmasq_is_closed_and_the_button_armed(filter_root, stub_upstream):
    require_binary("dnsmasq")
    from agent.filter.component import FilterComponent

    # Configured once: the device keeps its place (room, seat, pins).
    first = Runtime(boot_for(filter_root), screen=Screen(HeadlessScreen()), pin_factory=MockFactory(),
                    connect=False, control=False).start()
    first.stop()
    # Now it boots with no config at all (no local tree, no cached copy, the collector away).
    pins = MockFactory()
    comp = FilterComponent(filtering=filtering_for(), port=free_port(), filter_port=free_port(),
                           upstream_port=stub_upstream.port)
    gate = Gate()
    runtime = Runtime(boot_for(filter_root, config_dir=None), screen=Screen(HeadlessScreen()), pin_factory=pins,
                      connect=False, control=True, components=[comp, gate])
    ready = notify_socket(filter_root / "notify.sock")
    runtime.notifier = Notifier(str(filter_root / "notify.sock"))
    started = threading.Thread(target=runtime.start, daemon=True)
    started.start()
    try:
        assert gate.entered.wait(20)
        ready.setblocking(False)
        with pytest.raises(BlockingIOError):
            ready.recv(4096)                       # the boot job has not finished: not READY
        gate.opened.set()
        ready.setblocking(True)
        ready.settimeout(30)
        message = ready.recv(4096).decode()
        assert message.startswith("READY=1") and "room 5b" in message
        # At READY: the filter's dnsmasq answers and is closed (no policy yet: nothing resolves) ...
        assert dnsclient.query("bbc.co.uk", server="127.0.0.1", port=comp.port)[1] == []
        # ... the control socket serves, and the GPIO button is armed on the last-known pin.
        assert request(runtime.bootstrap.control_socket, {"op": "ping"})["ok"]
        pins.pin(17).drive_low()
        assert runtime.screen.is_blank
        runtime.call(lambda: None)
        alert = runtime.report.alert
        assert (alert["room"], alert["seat"], alert["source"]) == ("5b", "Table 1", "button")
        assert runtime.outbox.count("alert") == 1  # addressed to the last-known room, on disk
    finally:
        gate.opened.set()
        started.join(30)
        pins.pin(17).drive_high()
        runtime.stop()
        ready.close()


def test_no_network_at_all_the_agent_is_ready_and_a_press_is_kept(tmp_path, netns):
    offline = netns()                               # loopback only: no route to anything
    state = tmp_path / "state"
    # A device configured before (its place is known), now booting with the network down
    # and no usable cached config.
    Runtime(boot_for(tmp_path), screen=Screen(HeadlessScreen()), pin_factory=MockFactory(), connect=False,
            control=False).start().stop()
    boot = boot_for(tmp_path, config_dir=None, broker_url="mqtt://198.18.255.1:1883",
                    collector_url="http://198.18.255.1:8080")
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(boot.model_dump(mode="json", exclude_none=True)))
    sock = tmp_path / "control.sock"
    log = tmp_path / "agent.log"

    def run():
        ready = notify_socket(tmp_path / f"notify-{len(list(tmp_path.glob('notify-*')))}.sock")
        env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": ready.getsockname()}
        proc = offline.popen([*AGENT, "run", "--config", str(config), "--simulate"], log_path=log, env=env,
                             cwd=str(REPO))
        ready.settimeout(30)
        try:
            assert ready.recv(4096).startswith(b"READY=1"), log.read_text()
        finally:
            ready.close()
        return proc

    proc = run()
    try:
        assert request(sock, {"op": "press", "source": "key"}) == {"ok": True}   # at once, no network
        status = request(sock, {"op": "status"})["status"]
        assert status["screen"]["blank"] and not status["connected"]
        aid = status["alert"]["id"]
        assert status["alert"]["room"] == "5b" and status["outbox_pending"] >= 1
        wait_until(lambda: (state / "alert.json").exists(), 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        proc = run()                                # a clean restart, still offline
        status = request(sock, {"op": "status"})["status"]
        assert status["screen"]["blank"] and status["alert"]["id"] == aid
    finally:
        terminate(proc)
