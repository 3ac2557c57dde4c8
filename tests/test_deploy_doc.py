"""docs/deploy-pi.md, followed literally (minus GPIO and systemd): a device that connects,
fetches its config and delivers a press.

The server side is set up first as docs/broker.md and docs/server.md say (broker-config,
Mosquitto with the generated password file and ACL, ``classroom-server serve``).  Then
every ``sh`` block of deploy-pi.md between its "tested" markers runs in order, as written,
with only these changes: the example hosts and paths become this test's (loopback ports,
temp folders), ``TOKEN`` becomes the token the first block printed, ``sudo`` is dropped,
``install-agent.sh`` gets ``--root DIR --service-user nobody`` (no packages, no systemd:
an SD-card install), and ``systemctl reload mosquitto`` is Mosquitto's own SIGHUP.  The
installed agent then runs (``--simulate``: mock GPIO, headless screen) with the files the
script wrote.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server_fixtures import REPO
from services import Mosquitto, free_port, require_root, spawn, terminate, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BIN = Path(sys.executable).parent
DOC = REPO / "docs" / "deploy-pi.md"
START = "<!-- tests/test_deploy_doc.py runs every `sh` block"
END = "<!-- end of the tested blocks -->"


def doc_commands() -> list[str]:
    """The shell commands of the tested part of deploy-pi.md, continuation lines joined."""
    text = DOC.read_text()
    assert START in text and END in text, "deploy-pi.md lost its test markers"
    part = text[text.index(START):text.index(END)]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", part, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #")[0].strip()
            if command:
                commands.append(command)
    return commands


def test_deploy_pi_doc_gives_a_device_that_connects_fetches_config_and_delivers_a_press(tmp_path):
    require_root("installing into an SD-card root with file owners")
    import httpx

    from notify_fixtures import notify_tree_dir  # a plain copy of the example config is what we need
    from server.store import Store

    config = notify_tree_dir(tmp_path, REPO)
    out = tmp_path / "mosquitto-classroom"
    db_path = tmp_path / "server.db"
    db = f"sqlite:///{db_path}"
    root = tmp_path / "sdcard"
    server_cli = str(BIN / "classroom-server")

    # The server side, per broker.md / server.md: broker files, Mosquitto, the collector.
    subprocess.run([server_cli, "broker-config", "--config", str(config), "--out", str(out)], check=True,
                   capture_output=True, timeout=120)
    broker = Mosquitto(tmp_path / "broker", password_file=out / "passwd", acl_file=out / "acl").start()
    port = free_port()
    collector = f"http://127.0.0.1:{port}"
    serve_log = tmp_path / "serve.log"
    serve = spawn([server_cli, "serve", "--config", str(config), "--db", db,
                   "--broker", f"mqtt://127.0.0.1:{broker.port}", "--mqtt-username", "classroom-server",
                   "--mqtt-password-file", str(out / "credentials/classroom-server.yaml"), "--port", str(port),
                   "--reports-dir", str(tmp_path / "reports")], log_path=serve_log, cwd=str(REPO))
    agent = None
    try:
        wait_until(lambda: httpx.get(f"{collector}/healthz", timeout=2).json()["broker"], timeout=30,
                   message=lambda: serve_log.read_text()[-3000:])
        # A stand-in venv in the SD-card root (as tests/test_install_script.py): the real classroom-agent.
        venv_bin = root / "opt/classroom-safety/venv/bin"
        venv_bin.mkdir(parents=True)
        (venv_bin / "python").symlink_to("/usr/bin/python3")
        (venv_bin / "pip").write_text("#!/bin/sh\nexit 0\n")
        (venv_bin / "pip").chmod(0o755)
        (venv_bin / "classroom-agent").symlink_to(BIN / "classroom-agent")

        swaps = {"sqlite:////var/lib/classroom-server/server.db": db,
                 "/etc/classroom-safety/config": str(config),
                 "mqtts://classroom.penny-acres.sch.uk:8883": f"mqtt://127.0.0.1:{broker.port}",
                 "https://classroom.penny-acres.sch.uk": collector,
                 "/etc/mosquitto/classroom": str(out)}
        token = None
        commands = doc_commands()
        assert [c.split()[1] if c.startswith("sudo ") else c.split()[0] for c in commands] == \
            ["classroom-server", "cd", "scripts/install-agent.sh", "scripts/install-agent.sh", "classroom-server",
             "systemctl"], commands
        for command in commands:
            for old, new in swaps.items():
                command = command.replace(old, new)
            if token:
                command = re.sub(r"\bTOKEN\b", token, command)
            argv = shlex.split(command)
            if argv[0] == "sudo":
                argv = argv[1:]
            if argv[0] == "cd":
                continue  # the checkout is REPO
            if argv[:2] == ["systemctl", "reload"]:
                broker.proc.send_signal(signal.SIGHUP)  # Mosquitto re-reads passwd and acl
                continue
            if argv[0] == "classroom-server":
                argv[0] = server_cli
            elif argv[0] == "scripts/install-agent.sh":
                argv = ["bash", str(REPO / argv[0]), *argv[1:], "--root", str(root), "--service-user", "nobody"]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            if "enrol-token" in argv:
                token = result.stdout.strip().splitlines()[-1]
                assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", token), result.stdout
        assert token is not None

        # The installed device, minus GPIO and systemd: its agent.yaml with the SD-card root's paths.
        installed = yaml.safe_load((root / "etc/classroom-safety/agent.yaml").read_text())
        installed.update(credentials=str(root / "etc/classroom-safety/credentials.yaml"),
                         state_dir=str(root / "var/lib/classroom-agent"), control_socket=str(tmp_path / "control.sock"),
                         chromium_policy_dir=str(tmp_path / "chromium"), firefox_policy_dir=str(tmp_path / "firefox"),
                         chromium_native_hosts_dir=str(tmp_path / "native-hosts"),
                         blockpage_dir=str(tmp_path / "blockpage"), dnsmasq_dir=str(tmp_path / "dnsmasq"))
        agent_yaml = tmp_path / "agent.yaml"
        agent_yaml.write_text(yaml.safe_dump(installed))
        agent_log = tmp_path / "agent.log"
        agent = spawn([str(BIN / "classroom-agent"), "run", "--config", str(agent_yaml), "--simulate"],
                      log_path=agent_log, cwd=str(REPO))
        store = Store.open(db)
        try:
            # It connects (its retained online status reaches the collector) and fetches its config.
            wait_until(lambda: (store.get_device("5b-pi-01") or {}).get("status") == "online", timeout=60,
                       message=lambda: agent_log.read_text()[-3000:])
            wait_until(lambda: store.count("events", "type = ? AND device = ?", ("config_applied", "5b-pi-01")),
                       timeout=60, message=lambda: agent_log.read_text()[-3000:])
            # ...and a press is delivered.
            press = subprocess.run([str(BIN / "classroom-agent"), "press", "--config", str(agent_yaml)],
                                   capture_output=True, text=True, timeout=30)
            assert press.returncode == 0, press.stderr
            incident = wait_until(lambda: next((i for i in store.list_incidents() if i["device"] == "5b-pi-01"), None),
                                  timeout=30, message=lambda: agent_log.read_text()[-3000:])
            assert (incident["room"], incident["alert_state"]) == ("5b", "raised")
            assert "HTTP 401" not in agent_log.read_text() and "not authorised" not in agent_log.read_text().lower()
        finally:
            store.close()
    finally:
        terminate(agent)
        terminate(serve)
        broker.stop()
