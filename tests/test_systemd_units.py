"""The systemd units and the mosquitto drop-in, checked by the real tools.

``systemd-analyze verify`` insists that ExecStart's binary exists, so each unit is
verified inside a throw-away root (``--root``) holding a copy of the system's units,
the unit under test and a stub /opt/classroom-safety/venv/bin/classroom-*: nothing is
skipped or filtered, any complaint on stderr fails the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from agent.config.schema import AgentBootstrap
from services import free_port, port_open, require_binary, skip_or_fail, spawn, terminate, wait_until

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values...]}} (systemd keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    require_binary("systemd-analyze")
    if not SYSTEM_UNITS.is_dir():
        skip_or_fail("no systemd unit directory on this machine")
    root = tmp_path_factory.mktemp("root")
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")  # merged /usr, as Debian and Raspberry Pi OS
    (root / "etc/systemd/system").mkdir(parents=True)
    bindir = root / "opt/classroom-safety/venv/bin"
    bindir.mkdir(parents=True)
    for name in ("classroom-agent", "classroom-server"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    return root


def verify(root: Path, unit_text: str, name: str) -> subprocess.CompletedProcess:
    (root / "etc/systemd/system" / name).write_text(unit_text)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{name}"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["classroom-agent.service", "classroom-server.service"])
def test_units_pass_systemd_analyze_verify(fake_root, name):
    result = verify(fake_root, (UNITS / name).read_text(), name)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_verify_would_catch_a_broken_unit(fake_root):
    """Positive control: the check above can fail."""
    text = (UNITS / "classroom-agent.service").read_text().replace("WatchdogSec=30", "WatchdogSec=thirty")
    result = verify(fake_root, text, "broken.service")
    assert "WatchdogSec" in result.stderr or "sec value" in result.stderr


@pytest.mark.parametrize("name,limit", [("classroom-agent.service", 3.0), ("classroom-server.service", 2.5)])
def test_exposure_level(fake_root, name, limit):
    (fake_root / "etc/systemd/system" / name).write_text((UNITS / name).read_text())
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={fake_root}",
                             f"/etc/systemd/system/{name}"], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    assert float(match.group(1)) <= limit


def test_agent_unit_settings():
    unit = parse_unit(UNITS / "classroom-agent.service")
    svc = unit["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "30" and one["Restart"] == "always"
    assert one["ExecStart"].startswith("/opt/classroom-safety/venv/bin/classroom-agent run ")
    assert one["User"] == "classroom-agent"  # never root, never the pupil
    assert one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "read-only"
    assert one["RuntimeDirectory"] == "classroom-agent" and one["WorkingDirectory"] == "/run/classroom-agent"
    assert "GPIOZERO_PIN_FACTORY=lgpio" in svc["Environment"]
    caps = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"}
    assert set(one["CapabilityBoundingSet"].split()) == caps
    assert set(one["AmbientCapabilities"].split()) == caps
    assert one.get("PrivateTmp", "no") == "no"  # /tmp/.X11-unix must stay reachable


def test_agent_unit_lets_the_agent_write_exactly_where_its_defaults_point():
    svc = parse_unit(UNITS / "classroom-agent.service")["Service"]
    writable = [p.lstrip("-") for p in " ".join(svc["ReadWritePaths"]).split()]
    defaults = AgentBootstrap(device="x", site="y", broker_url="mqtt://b", collector_url="http://c")

    def covered(path: str) -> bool:
        return any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable)
    for path in (defaults.state_dir, defaults.control_socket, defaults.dnsmasq_dir,
                 defaults.chromium_policy_dir, defaults.firefox_policy_dir, defaults.chromium_native_hosts_dir):
        assert covered(path), f"{path} is read-only under ProtectSystem=strict"
    # The block page lives in the unit's CacheDirectory (writable, and 0755 for the pupil's browser).
    assert svc["CacheDirectory"] == ["classroom-agent"] and svc["CacheDirectoryMode"] == ["0755"]
    assert defaults.blockpage_dir.startswith("/var/cache/classroom-agent/")
    assert not covered("/etc/classroom-safety/agent.yaml")  # its own config stays read-only


def test_server_unit_settings():
    svc = {k: v[-1] for k, v in parse_unit(UNITS / "classroom-server.service")["Service"].items()}
    assert svc["User"] == "classroom-server" and svc["NoNewPrivileges"] == "yes"
    assert svc["CapabilityBoundingSet"] == "" and svc["ProtectSystem"] == "strict"
    assert svc["ExecStart"].startswith("/opt/classroom-safety/venv/bin/classroom-server serve")


# --------------------------------------------------------------------------- mosquitto


def make_cert(directory: Path) -> tuple[Path, Path]:
    require_binary("openssl")
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def connect(port: int, username=None, password=None, ca=None) -> str:
    """Connect once; return the CONNACK reason as text ('Success', 'Not authorized', ...)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    if ca:
        client.tls_set(ca_certs=str(ca))
    done = threading.Event()
    result = {}

    def on_connect(c, userdata, flags, reason_code, properties):
        result["rc"] = str(reason_code)
        done.set()
    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return result["rc"]


@pytest.mark.integration
def test_mosquitto_drop_in_runs_with_tls_passwords_and_acl(tmp_path):
    mosquitto = require_binary("mosquitto")
    require_binary("mosquitto_passwd")
    cert, key = make_cert(tmp_path)
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "5b-pi-01", "s3cret-device"], check=True,
                   capture_output=True)
    acl.write_text("user 5b-pi-01\ntopic write classroom/v1/penny-acres/5b/5b-pi-01/#\n")
    tls_port, local_port = free_port(), free_port()
    text = (UNITS / "mosquitto-classroom.conf").read_text()
    # Same file, with this test's paths and free ports instead of the production ones.
    for old, new in (("/etc/ssl/classroom/fullchain.pem", cert), ("/etc/ssl/classroom/privkey.pem", key),
                     ("/etc/mosquitto/classroom/passwd", passwd), ("/etc/mosquitto/classroom/acl", acl),
                     ("listener 8883", f"listener {tls_port} 127.0.0.1"),
                     ("listener 1883 127.0.0.1", f"listener {local_port} 127.0.0.1")):
        assert str(old) in text
        text = text.replace(str(old), str(new))
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "classroom.conf").write_text(text)
    main = tmp_path / "mosquitto.conf"
    # As Debian's /etc/mosquitto/mosquitto.conf: settings, then include_dir.
    main.write_text(f"persistence false\nlog_dest file {tmp_path / 'log'}\nuser root\ninclude_dir {confd}\n")
    proc = spawn([mosquitto, "-c", str(main)], log_path=tmp_path / "stdout")
    try:
        wait_until(lambda: port_open(tls_port) and port_open(local_port), timeout=10,
                   message=lambda: (tmp_path / "stdout").read_text() + (tmp_path / "log").read_text())
        assert connect(tls_port, "5b-pi-01", "s3cret-device", ca=cert) == "Success"
        assert connect(tls_port, "5b-pi-01", "wrong", ca=cert) != "Success"
        assert connect(local_port) != "Success"  # anonymous refused
        assert connect(local_port, "5b-pi-01", "s3cret-device") == "Success"
    finally:
        terminate(proc)


def test_agent_starts_without_the_network_and_before_the_desktop():
    """Protected from power-on: the button works with the Wi-Fi down, and no greeter or
    login appears before the agent is READY (Type=notify: "started" means READY)."""
    unit = parse_unit(UNITS / "classroom-agent.service")
    after = " ".join(unit["Unit"].get("After", [])).split()
    wants = " ".join(unit["Unit"].get("Wants", []) + unit["Unit"].get("Requires", [])).split()
    assert "network-online.target" not in after + wants
    assert "network.target" not in after
    before = " ".join(unit["Unit"]["Before"]).split()
    assert {"display-manager.service", "systemd-user-sessions.service"} <= set(before)
    assert unit["Service"]["Type"] == ["notify"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]  # graphical.target pulls it in first


def test_the_greeter_is_ordered_after_the_agent_without_a_cycle(fake_root):
    """A display manager installed as display-manager.service (LightDM on Raspberry Pi OS)
    and the agent load together with no ordering cycle; the DM starts after the agent."""
    system = fake_root / "etc/systemd/system"
    (system / "lightdm.service").write_text(
        "[Unit]\nDescription=stand-in display manager\nAfter=systemd-user-sessions.service\n"
        "[Service]\nExecStart=/opt/classroom-safety/venv/bin/classroom-server\n[Install]\nAlias=display-manager.service\n")
    alias = system / "display-manager.service"
    alias.unlink(missing_ok=True)
    alias.symlink_to("/etc/systemd/system/lightdm.service")
    result = verify(fake_root, (UNITS / "classroom-agent.service").read_text(), "classroom-agent.service")
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    dm = subprocess.run(["systemd-analyze", "verify", f"--root={fake_root}", "/etc/systemd/system/lightdm.service",
                         "/etc/systemd/system/classroom-agent.service"], capture_output=True, text=True, timeout=60)
    assert "cycle" not in dm.stderr.lower(), dm.stderr
    assert dm.returncode == 0, dm.stderr
    # Positive control: the same check sees a cycle when the agent waits for the greeter.
    cyclic = (UNITS / "classroom-agent.service").read_text().replace(
        "After=systemd-logind.service", "After=systemd-logind.service display-manager.service")
    (system / "classroom-agent.service").write_text(cyclic)
    bad = subprocess.run(["systemd-analyze", "verify", f"--root={fake_root}", "/etc/systemd/system/lightdm.service",
                          "/etc/systemd/system/classroom-agent.service"], capture_output=True, text=True, timeout=60)
    assert "ordering cycle" in bad.stderr
    (system / "classroom-agent.service").write_text((UNITS / "classroom-agent.service").read_text())
