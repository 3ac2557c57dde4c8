"""docs/scaling.md's set-up of a trust, followed literally: two schools' brokers bridged to a
central broker, and a central collector on PostgreSQL.

Every ``sh`` block between the doc's "tested" markers runs in order, as written, with only
these changes.  The three hosts are one folder each (``ROOT/<host>``): every absolute path
under ``/etc`` or ``/var`` is taken inside the host's folder, where the test has put what the
doc's "Before you start" asks for (each school's config tree, the TLS files from a test CA).
Host names become 127.0.0.1 and each host's ``--port 8883`` its own free port;
``broker-config`` also gets ``--bind 127.0.0.1 --run-as root --log-file`` (this test's
processes run as root in root-only temporary folders).  The PostgreSQL URL becomes a
database the test starts.  ``scp root@central.trust.example:PATH DEST`` copies between the
host folders; ``tee FILE <<'EOF'`` writes the heredoc; ``systemctl daemon-reload`` does
nothing; ``systemctl restart mosquitto`` starts the Mosquitto whose config the host's systemd
drop-in names in its ``ExecStart``; ``systemctl restart classroom-server`` starts
``classroom-server serve`` with the arguments in the host's ``server.env``.  ``install -o
classroom-server`` installs as root (no such user here).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services import Mosquitto, free_port, spawn, terminate, wait_until
from trust_fixtures import (A, B, DEVICE, PREFIX, REPO, alert, connect, event, make_ca, make_school_a,
                            make_school_b, publish, start_generated, subscribe)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent
DOC = REPO / "docs" / "scaling.md"
START = "<!-- tests/test_scaling_doc.py runs every `sh` block"
END = "<!-- end of the tested blocks -->"
CENTRAL, HOST_A, HOST_B = "central.trust.example", "classroom.penny-acres.sch.uk", "classroom.hilltop.sch.uk"


def doc_blocks() -> list[tuple[str, list[str]]]:
    """[(host, commands)] of the tested part; a heredoc stays one command with its lines."""
    text = DOC.read_text()
    assert START in text and END in text, "scaling.md lost its test markers"
    part = text[text.index(START):text.index(END)]
    blocks = []
    for block in re.findall(r"```sh\n(.*?)```", part, re.S):
        lines = block.replace("\\\n", " ").splitlines()
        host = re.fullmatch(r"# on (\S+)", lines[0].strip())
        assert host, f"a tested block must start with '# on HOST': {lines[0]!r}"
        commands, i = [], 1
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not line:
                continue
            heredoc = re.search(r"<<'(\w+)'$", line)
            if heredoc:
                body = []
                while lines[i].strip() != heredoc.group(1):
                    body.append(lines[i])
                    i += 1
                i += 1
                commands.append(line + "\n" + "\n".join(body) + "\n")
            else:
                commands.append(line)
        blocks.append((host.group(1), commands))
    return blocks


def test_the_doc_names_three_hosts_in_order():
    assert [host for host, _ in doc_blocks()] == [CENTRAL, CENTRAL, HOST_A, HOST_B]


def test_following_scaling_md_gives_two_bridged_schools_and_a_central_collector(tmp_path, postgres_dsn):
    import httpx

    from server.store import Store

    roots = {host: tmp_path / host for host in (CENTRAL, HOST_A, HOST_B)}
    ports = {host: free_port() for host in roots}
    tls = make_ca(tmp_path / "ca")
    # "Before you start": the config trees and TLS files where the doc expects them.
    trees = {A: make_school_a(tmp_path), B: make_school_b(tmp_path)}
    for site, host in ((A, HOST_A), (B, HOST_B)):
        shutil.copytree(trees[site], roots[host] / "etc/classroom-safety/config")
        shutil.copytree(trees[site], roots[CENTRAL] / f"etc/classroom-safety/sites/{site}")
    for root in roots.values():
        ssl_dir = root / "etc/ssl/classroom"
        ssl_dir.mkdir(parents=True)
        shutil.copy(tls["cert"], ssl_dir / "fullchain.pem")
        shutil.copy(tls["key"], ssl_dir / "privkey.pem")
        (root / "etc/mosquitto").mkdir(parents=True, exist_ok=True)
        (root / "var/lib/mosquitto").mkdir(parents=True)
    shutil.copy(tls["ca"], roots[CENTRAL] / "etc/ssl/classroom/trust-ca.pem")
    http_port = free_port()

    brokers: dict[str, Mosquitto] = {}
    collector = None
    serve_log = tmp_path / "serve.log"

    def local(host: str, text: str) -> str:
        """The doc's text with the host's folder, loopback addresses and test ports."""
        text = text.replace(f"{CENTRAL}:8883", f"127.0.0.1:{ports[CENTRAL]}")
        text = text.replace("--port 8883", f"--port {ports[host]}").replace("--port 8080", f"--port {http_port}")
        text = text.replace("postgresql://classroom-server@localhost/classroom", postgres_dsn)
        return re.sub(r"(?<![\w./:-])/(etc|var)/", lambda m: f"{roots[host]}/{m.group(1)}/", text)

    try:
        for host, commands in doc_blocks():
            for command in commands:
                if "<<'" in command:
                    first, _, body = command.partition("\n")
                    argv = shlex.split(local(host, first.split("<<")[0]))
                    assert argv[0] == "tee", command
                    target = Path(argv[1])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(local(host, body))
                    continue
                argv = shlex.split(local(host, command))
                if argv[0] == "scp":
                    source = argv[1].removeprefix(f"root@{CENTRAL}:")
                    shutil.copy(roots[CENTRAL] / source.lstrip("/"), argv[2])
                    continue
                if argv[:2] == ["systemctl", "daemon-reload"]:
                    continue
                if argv[:3] == ["systemctl", "restart", "mosquitto"]:
                    drop_in = (roots[host] / "etc/systemd/system/mosquitto.service.d/classroom.conf").read_text()
                    exec_start = [ln for ln in drop_in.splitlines() if ln.startswith("ExecStart=")][-1]
                    conf = Path(shlex.split(exec_start.removeprefix("ExecStart="))[-1])
                    assert exec_start.startswith("ExecStart=/usr/sbin/mosquitto -c ") and conf.exists(), drop_in
                    # (A port taken meanwhile by another test moves to a free one; later steps use it.)
                    brokers[host] = start_generated(conf.parent, ports[host])
                    ports[host] = brokers[host].port
                    continue
                if argv[:3] == ["systemctl", "restart", "classroom-server"]:
                    env = (roots[host] / "etc/classroom-safety/server.env").read_text()
                    args = shlex.split(re.search(r"^CLASSROOM_SERVER_ARGS=(.*)$", env, re.M).group(1))
                    collector = spawn([str(BIN / "classroom-server"), "serve", *args,
                                       "--reports-dir", str(tmp_path / "reports")], log_path=serve_log, cwd=str(REPO))
                    continue
                if argv[0] == "classroom-server":
                    argv = [str(BIN / "classroom-server"), *argv[1:]]
                    if argv[1] == "broker-config":
                        argv += ["--bind", "127.0.0.1", "--run-as", "root",
                                 "--log-file", str(roots[host] / "etc/mosquitto/classroom/mosquitto.log")]
                if argv[0] == "install" and "-o" in argv:
                    argv[argv.index("-o") + 1] = "root"
                result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
                assert result.returncode == 0, f"{host}: {command}\n{result.stdout}\n{result.stderr}"
        assert set(brokers) == {CENTRAL, HOST_A, HOST_B} and collector is not None

        wait_until(lambda: httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2).json()["broker"],
                   timeout=60, message=lambda: serve_log.read_text()[-3000:])
        for host in (HOST_A, HOST_B):
            conf = (roots[host] / "etc/mosquitto/classroom/mosquitto.conf").read_text()
            assert "use_username_as_clientid true" in conf and f"listener {ports[host]} 127.0.0.1" in conf

        def creds(host: str, name: str) -> str:
            import yaml

            return yaml.safe_load((roots[host] / f"etc/mosquitto/classroom/credentials/{name}.yaml").read_text())[
                "password"]

        ca = tls["ca"]
        school = {A: HOST_A, B: HOST_B}
        clients = []
        store = Store.open(postgres_dsn)
        try:
            device = {}
            for site, host in school.items():
                device[site] = connect(brokers[host], DEVICE[site][1], creds(host, DEVICE[site][1]), ca=ca)
                clients.append(device[site])
            # A device's event in each school reaches the central collector, through its bridge.
            for site in (A, B):
                topic, payload, event_id = event(site)
                publish(device[site], topic, payload)
                wait_until(lambda: store.count("events", "id = ?", (event_id,)), timeout=60,
                           message=lambda: serve_log.read_text()[-3000:])
            # With the central broker stopped, a press in school A reaches school A's teacher ...
            teacher = connect(brokers[HOST_A], "m.khan", creds(HOST_A, "m.khan"), ca=ca)
            clients.append(teacher)
            seen = subscribe(teacher, f"{PREFIX}/{A}/5b/+/alert")
            brokers[CENTRAL].stop()
            topic, payload, alert_id = alert(A)
            publish(device[A], topic, payload, retain=True)
            seen.wait_for(alert_id, timeout=15)
            # ... and the collector once it is back.
            brokers[CENTRAL].start()
            wait_until(lambda: store.count("incidents", "id = ?", (alert_id,)), timeout=90,
                       message=lambda: serve_log.read_text()[-3000:])
        finally:
            store.close()
            for c in clients:
                c.disconnect()
                c.loop_stop()
    finally:
        terminate(collector)
        for broker in brokers.values():
            broker.stop()
