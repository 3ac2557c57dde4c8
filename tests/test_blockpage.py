"""The block page a child understands, and "Ask my teacher" (issue 16 item 2).

Unit: the CRX3 the agent signs with the device's own key, the policy that force-installs
it, the ``ask`` op's checks and limits, the native host's framing, and key stage mode
``upstream`` in dnsmasq and both browsers.

End to end, everything real: mosquitto, the collector (ingest, store, web), the agent
runtime with its filter writing Chromium's managed policy, and Debian's Chromium run as
the pupil (``nobody``).  The agent force-installs the extension from a local file; a
blocked address (the browser allowlist's refusal, or the DNS filter's NXDOMAIN) shows our
page with the key stage's words and picture; "Ask my teacher" reaches the agent through
the native host and the control socket as the pupil, the room page lists the request
(domain, seat), the teacher taps "Allow for this lesson" in their own browser, the device
opens the site, and the pupil's reload shows it.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest

from agent.config import load_tree
from agent.config.policy import effective_policy
from agent.filter import blockpage
from agent.filter import browser as browser_policy
from agent.filter.ask_host import read_message, write_message
from agent.filter.blockpage import AskTeacher, BlockPage, build_crx, ensure_key, extension_files, extension_id
from agent.filter.dnsmasq import build_spec, render_servers
from fake_runtime import FakeRuntime
from filter_fixtures import filter_root, make_filter, stub_upstream, with_domains  # noqa: F401
from services import free_port, require_binary, require_root, spawn, terminate, wait_until
from test_browser_e2e import browser  # noqa: F401 - the teacher's browser (a fixture)
from web_fixtures import collector  # noqa: F401 - a fixture
from server_fixtures import tree  # noqa: F401 - a fixture

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def policy(filter_root):
    rt = FakeRuntime(filter_root)
    yield rt.policy
    rt.close()


# --------------------------------------------------------------------------- the package


def test_the_crx_is_signed_with_the_devices_own_key_and_is_the_same_each_time(tmp_path):
    require_binary("openssl")
    key = tmp_path / "state" / "blockpage-key.pem"
    public = ensure_key(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert ensure_key(key) == public                                  # made once
    files = extension_files()
    assert {"manifest.json", "background.js", "blocked.html", "blocked.js", "images/blocked.svg",
            "sounds/en/blocked.wav", "sounds/cy/asked_teacher.wav", "sounds/chime.wav"} <= set(files)
    manifest = json.loads(files["manifest.json"])
    # No content scripts and no host permissions: it can read no page, only navigation errors.
    assert "content_scripts" not in manifest and "host_permissions" not in manifest
    assert set(manifest["permissions"]) == {"webNavigation", "storage", "nativeMessaging"}
    crx = build_crx(files, key, public)
    assert crx[:4] == b"Cr24" and int.from_bytes(crx[4:8], "little") == 3
    header_len = int.from_bytes(crx[8:12], "little")
    assert public in crx[12:12 + header_len]
    assert crx[12 + header_len:12 + header_len + 2] == b"PK"           # the zip follows the header
    assert build_crx(files, key, public) == crx                       # unchanged files: unchanged package
    assert len(extension_id(public)) == 32 and set(extension_id(public)) <= set("abcdefghijklmnop")


def test_the_policy_force_installs_it_from_the_local_file_and_gives_it_its_words(tmp_path, policy):
    page = BlockPage(tmp_path / "state", tmp_path / "blockpage", tmp_path / "hosts", "/run/x/control.sock")
    assert page.prepare(), page.error
    part = page.policy(policy.messages, "en", volume=60, sound=True)
    assert part["ExtensionSettings"][page.id] == {"installation_mode": "force_installed",
                                                  "update_url": (tmp_path / "blockpage" / "updates.xml").as_uri()}
    assert part["ExtensionSettings"]["*"] == {"installation_mode": "blocked"}
    words = part["3rdparty"]["extensions"][page.id]
    assert words["blocked"] == policy.messages["blocked"] and words["ask_teacher"] == "Ask my teacher"
    assert words["sound_blocked"] == "en/blocked.wav" and words["volume"] == 60
    assert part["NativeMessagingAllowlist"] == [blockpage.HOST_NAME] and part["NativeMessagingUserLevelHosts"] is False
    host = json.loads((tmp_path / "hosts" / f"{blockpage.HOST_NAME}.json").read_text())
    assert host["allowed_origins"] == [f"chrome-extension://{page.id}/"]   # only our extension
    assert os.access(host["path"], os.X_OK)
    assert f"codebase='{(tmp_path / 'blockpage' / blockpage.CRX_FILE).as_uri()}'" in \
        (tmp_path / "blockpage" / "updates.xml").read_text()
    full = browser_policy.chromium_policy(policy, extension=part, extension_urls=page.allow_url())
    assert full["URLBlocklist"] == ["*"] and f"chrome-extension://{page.id}" in full["URLAllowlist"]
    # School's own words: no voice saying other words, the chime instead.
    own = page.policy({**policy.messages, "blocked": "Not for school today."}, "en", volume=60, sound=True)
    assert own["3rdparty"]["extensions"][page.id]["sound_blocked"] == "chime.wav"


def test_ask_checks_the_domain_and_limits_how_often(policy):
    asked: list[str] = []
    now = [1000.0]
    ask = AskTeacher(asked.append, clock=lambda: now[0])
    assert ask({"domain": "WWW.Example.ORG."}) == {"asked": True}
    assert asked == ["example.org"]
    assert ask({"domain": "example.org"}) == {"asked": True, "again": True}   # already asked
    for bad in ({"domain": "not a domain"}, {"domain": "http://x.com/path"}, {}):
        with pytest.raises(ValueError):
            ask(bad)
    for i in range(blockpage.MAX_ASKS - 1):
        ask({"domain": f"site{i}.example.com"})
    with pytest.raises(ValueError, match="enough sites"):
        ask({"domain": "one-more.example.com"})
    now[0] += blockpage.ASK_WINDOW + 1
    assert ask({"domain": "one-more.example.com"}) == {"asked": True}
    assert len(asked) == blockpage.MAX_ASKS + 1


def test_the_native_host_passes_only_the_domain_to_the_control_socket(tmp_path):
    path = tmp_path / "control.sock"
    got: list[dict] = []
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        with conn:
            got.append(json.loads(conn.makefile("rb").readline()))
            conn.sendall(b'{"ok": true, "asked": true, "status": "secret"}\n')

    threading.Thread(target=serve, daemon=True).start()
    message = json.dumps({"op": "ask", "domain": "tiktok.com", "url": "https://tiktok.com/@x"}).encode()
    out = subprocess.run(["/usr/bin/python3", "-I", str(REPO / "agent/filter/ask_host.py"), "--socket", str(path),
                          "chrome-extension://x/"], input=struct.pack("=I", len(message)) + message,
                         capture_output=True, timeout=30)
    server.close()
    assert got == [{"op": "ask", "domain": "tiktok.com"}]              # the URL never leaves the page
    length = struct.unpack("=I", out.stdout[:4])[0]
    assert json.loads(out.stdout[4:4 + length]) == {"ok": True, "asked": True}
    # framing both ways
    buf = __import__("io").BytesIO()
    write_message(buf, {"a": 1})
    buf.seek(0)
    assert read_message(buf) == {"a": 1}


# --------------------------------------------------------------------------- mode upstream


def test_mode_upstream_lets_the_schools_filter_decide_with_a_blocklist_on_top(policy):
    older = with_domains(policy, mode="upstream", block_domains=("tiktok.com", "roblox.com"))
    spec = build_spec(older, ["10.20.0.1"], overrides=["roblox.com"])
    servers = render_servers(spec)
    assert "server=/#/10.20.0.1" in servers                 # everything goes to the school's filter
    assert "server=/tiktok.com/" in servers                 # refused here, logged as a blocked attempt
    assert "server=/roblox.com/" not in servers             # a teacher opened it for the lesson
    assert "server=/www.google.com/" in servers             # safe search forced on every engine
    chromium = browser_policy.chromium_policy(older, ["roblox.com"])
    assert chromium["URLBlocklist"] == ["tiktok.com"] and chromium["URLAllowlist"] == []
    firefox = browser_policy.firefox_policy(older)
    assert firefox["WebsiteFilter"]["Block"] == ["*://roblox.com/*", "*://*.roblox.com/*", "*://tiktok.com/*",
                                                  "*://*.tiktok.com/*"]


@pytest.mark.integration
def test_mode_upstream_with_real_dnsmasq_forwards_and_still_logs_what_it_refuses(tmp_path, policy):
    """dnsmasq's own precedence: the servers-file's ``server=/#/`` outranks the conf's
    ``address=/#/``, and a blocked name is logged as ``config NAME is NXDOMAIN``."""
    from agent.filter.dnsclient import query
    from agent.filter.dnsmasq import DnsmasqPaths, DnsmasqProcess, find_dnsmasq, render_conf, render_hosts
    from agent.filter.querylog import parse_line

    binary = find_dnsmasq() or require_binary("dnsmasq")
    up_port, port = free_port(), free_port()
    up_conf = tmp_path / "up.conf"
    up_conf.write_text(f"port={up_port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n"
                       "address=/#/192.0.2.7\npid-file=\nuser=root\n")
    upstream = DnsmasqProcess(up_conf, tmp_path / "up.err", port=up_port, binary=binary)
    paths = DnsmasqPaths(tmp_path / "dns")
    paths.dir.mkdir()
    # user=root: dnsmasq would drop to nobody, who cannot read pytest's private folder.
    paths.conf.write_text(render_conf(paths, port=port, log_async=None, user="root"))
    spec = build_spec(with_domains(policy, mode="upstream", block_domains=("tiktok.com",)), ["127.0.0.1"],
                      upstream_port=up_port)
    paths.servers.write_text(render_servers(spec))
    paths.hosts.write_text(render_hosts(spec, {}))
    paths.querylog.touch()
    dns = DnsmasqProcess(paths.conf, paths.stderr, port=port, binary=binary)
    upstream.start()
    dns.start()
    try:
        answer = query("anything.example.org", "A", server="127.0.0.1", port=port)
        assert answer[1] == ["192.0.2.7"], (answer, paths.servers.read_text(), paths.querylog.read_text())
        rcode, _ = query("www.tiktok.com", "A", server="127.0.0.1", port=port)
        assert rcode == "NXDOMAIN"
        records = wait_until(lambda: [r for r in map(parse_line, paths.querylog.read_text().splitlines())
                                      if r is not None and r.kind == "blocked"], timeout=10)
        assert [r.name for r in records] == ["www.tiktok.com"]
    finally:
        dns.stop()
        upstream.stop()


# --------------------------------------------------------------------------- end to end in Chromium


class _Page(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class DevTools:
    """Chromium's DevTools HTTP and WebSocket endpoints: the tabs, and evaluating in one."""

    def __init__(self, port: int):
        self.port = port

    def targets(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as r:
            return json.load(r)

    def open(self, url: str) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?{url}", method="PUT")
        urllib.request.urlopen(req, timeout=5).read()

    def page(self, prefix: str) -> dict | None:
        return next((t for t in self.targets() if t["type"] == "page" and t["url"].startswith(prefix)), None)

    def evaluate(self, target: dict, expression: str):
        import websocket

        ws = websocket.create_connection(target["webSocketDebuggerUrl"], suppress_origin=True, timeout=10)
        try:
            ws.send(json.dumps({"id": 1, "method": "Runtime.evaluate",
                                "params": {"expression": expression, "returnByValue": True}}))
            while True:
                answer = json.loads(ws.recv())
                if answer.get("id") == 1:
                    return answer["result"]["result"].get("value")
        finally:
            ws.close()


@pytest.fixture
def chromium_dirs():
    """Chromium's real managed-policy and native-host folders, put back as they were."""
    created = []
    for d in (Path("/etc/chromium/policies/managed"), Path("/etc/chromium/native-messaging-hosts")):
        for p in (*reversed(d.parents[:2]), d):
            if not p.exists():
                p.mkdir()
                created.append(p)
    yield
    for name in (Path("/etc/chromium/policies/managed") / browser_policy.CHROMIUM_FILE,
                 Path("/etc/chromium/native-messaging-hosts") / f"{blockpage.HOST_NAME}.json"):
        name.unlink(missing_ok=True)
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            pass


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_block_page_and_ask_my_teacher_end_to_end(collector, browser, chromium_dirs, monkeypatch, tmp_path):
    from agent.config.schema import AgentBootstrap
    from agent.core.runtime import Runtime
    from agent.filter.component import FilterComponent
    from server_fixtures import PASSWORD
    from web_fixtures import DEVICE_PASSWORD, enrol_device

    require_root("running Chromium and the native host as the pupil")
    chromium = require_binary("chromium")
    pupil = pwd.getpwnam("nobody")
    # The pupil's browser needs DevTools for the test to read its page; everything else is the agent's.
    real_policy = browser_policy.chromium_policy

    def with_devtools(*args, **kwargs):
        data = real_policy(*args, **kwargs)
        data.update(DeveloperToolsAvailability=1, RemoteDebuggingAllowed=True)
        return data

    monkeypatch.setattr(browser_policy, "chromium_policy", with_devtools)

    # A site to unblock, served locally (Chromium maps every name here).
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<html><body><h1>VOLCANO VIDEO</h1></body></html>")
    site_port = free_port()
    site = http.server.ThreadingHTTPServer(("127.0.0.1", site_port), functools.partial(_Page, directory=str(www)))
    threading.Thread(target=site.serve_forever, daemon=True).start()

    # The agent: real runtime, connected to the collector's broker, control socket for the press group.
    enrol_device(collector.store)
    creds = tmp_path / "credentials.yaml"
    creds.write_text(f"username: 5b-pi-01\npassword: {DEVICE_PASSWORD}\n")
    private = Path(tempfile.mkdtemp(prefix="agent-run-", dir="/tmp"))
    private.chmod(0o750)
    shared = Path(tempfile.mkdtemp(prefix="blockpage-", dir="/tmp"))   # readable by the pupil's browser
    shared.chmod(0o755)
    boot = AgentBootstrap(device="5b-pi-01", site="penny-acres", broker_url=f"mqtt://127.0.0.1:{collector.broker.port}",
                          collector_url=collector.url, credentials=str(creds), state_dir=str(tmp_path / "state"),
                          control_socket=str(private / "control.sock"), control_group="nogroup",
                          config_dir=str(REPO / "config"), screen_backend="headless", pin_factory="mock",
                          blockpage_dir=str(shared / "blockpage"), dnsmasq_dir=str(tmp_path / "dns"),
                          firefox_policy_dir=str(tmp_path / "firefox"), apply_nftables=False)
    (tmp_path / "dns").mkdir()  # the DNS filter's files (dnsmasq itself is test_filter_dns.py's)
    web_filter = FilterComponent(manage_dnsmasq=False, apply_nftables=False)
    rt = Runtime(boot, components=[web_filter])
    home = Path(tempfile.mkdtemp(prefix="pupil-", dir="/tmp"))
    os.chown(home, pupil.pw_uid, pupil.pw_gid)
    devtools_port = free_port()
    proc = None
    try:
        rt.start()
        page = web_filter.blockpage
        assert page is not None and page.id, page.error if page else "no block page"
        wait_until(lambda: rt.link is not None and rt.link.is_connected, timeout=20, message="agent not connected")
        words = rt.policy.messages

        proc = spawn(["runuser", "-u", "nobody", "--", "env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", chromium,
                      "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                      f"--user-data-dir={home / 'profile'}", f"--remote-debugging-port={devtools_port}",
                      "--remote-allow-origins=*", "--autoplay-policy=no-user-gesture-required",
                      f"--host-resolver-rules=MAP volcano.example 127.0.0.1:{site_port}, "
                      "MAP blocked-by-dns.example ~NOTFOUND, MAP * 127.0.0.1:9", "about:blank"],
                     log_path=tmp_path / "chromium.log")
        tools = DevTools(devtools_port)
        ours = f"chrome-extension://{page.id}/"
        wait_until(lambda: any(t["url"].startswith(ours) for t in tools.targets()), timeout=60,
                   message=lambda: f"the extension was not installed: {(tmp_path / 'chromium.log').read_text()[-1500:]}")

        def block_page_for(host: str):
            """Open http://HOST/ until our page shows for it.  A pupil who reloads: for about a
            second after the force-install Chromium dispatches no navigation event to the
            extension (not even onBeforeNavigate: 3 of 8 runs opening at once, none of 8 three
            seconds later), so it shows its own page, still blocked, only less kind
            (docs/filtering.md says so)."""
            found = tools.page(ours + "blocked.html#" + host)
            if found is None:
                tools.open(f"http://{host}/")
                # Not there in 3 s: raises, which the caller's wait_until counts as "not yet".
                found = wait_until(lambda: tools.page(ours + "blocked.html#" + host), timeout=3)
            return found

        # Refused by the browser allowlist: our page, the key stage's words, the picture.
        target = wait_until(lambda: block_page_for("volcano.example"), timeout=30, interval=0.5,
                            message=lambda: f"no block page: {[t['url'] for t in tools.targets()]}")
        wait_until(lambda: tools.evaluate(target, "document.getElementById('message').textContent") == words["blocked"],
                   timeout=20, message="the key stage's words never showed")
        assert tools.evaluate(target, "document.getElementById('picture').getAttribute('src')") == "images/blocked.svg"
        assert tools.evaluate(target, "document.getElementById('ask-words').textContent") == "Ask my teacher"
        assert tools.evaluate(target, "document.getElementById('domain').textContent") == "volcano.example"
        # Refused by the DNS filter (NXDOMAIN): the same page.
        wait_until(lambda: block_page_for("blocked-by-dns.example"), timeout=30, interval=0.5,
                   message="no block page for a name the DNS filter refused")

        # "Ask my teacher": the native host, as the pupil, to the agent's control socket.
        tools.evaluate(target, "document.getElementById('ask').click()")
        wait_until(lambda: tools.evaluate(target, "document.body.classList.contains('asked')"), timeout=20,
                   message=lambda: "the page was not told it was asked")
        assert tools.evaluate(target, "document.getElementById('message').textContent") == words["asked_teacher"]
        assert tools.evaluate(target, "document.getElementById('picture').getAttribute('src')") == \
            "images/asked_teacher.svg"

        # The collector has the request: domain, seat, time.
        found = wait_until(lambda: collector.store.open_unblock_requests("penny-acres", "5b"), timeout=20,
                           message="the request never reached the collector")
        assert (found[0]["domain"], found[0]["seat"], found[0]["device"]) == ("volcano.example", "Table 1", "5b-pi-01")

        # The teacher, on the room page in their own browser, allows it for the lesson in one tap.
        from selenium.webdriver.common.by import By

        teacher = browser
        if True:
            teacher.get(collector.url + "/rooms/5b")
            wait_until(lambda: teacher.find_elements(By.ID, "username"), timeout=15)
            teacher.find_element(By.ID, "username").send_keys("m.khan")
            teacher.find_element(By.ID, "password").send_keys(PASSWORD)
            teacher.find_element(By.ID, "login-submit").click()
            allow = wait_until(lambda: teacher.find_elements(By.CSS_SELECTOR, f"#ask-{found[0]['id']} .allow"),
                               timeout=20, message="the request is not on the room page")[0]
            assert "volcano.example" in teacher.find_element(By.ID, f"ask-{found[0]['id']}").text
            allow.click()
            wait_until(lambda: not teacher.find_elements(By.ID, f"ask-{found[0]['id']}"), timeout=15)

        # The device opened it (its own audit event) and the pupil's browser now shows the site.
        wait_until(lambda: [e for e in collector.store.events(type="override_opened", device="5b-pi-01")
                            if e["domain"] == "volcano.example"], timeout=20, message="the device never opened it")
        assert collector.store.open_unblock_requests("penny-acres", "5b") == []
        assert [a["action"] for a in collector.store.list_audit(limit=50) if a["action"].startswith("unblock.")] \
            == ["unblock.allow"]

        def shows_site():
            tools.open("http://volcano.example/")
            return any(t["url"] == "http://volcano.example/" for t in tools.targets() if t["type"] == "page")
        managed = Path("/etc/chromium/policies/managed") / browser_policy.CHROMIUM_FILE
        # Chromium re-reads its policy folder by itself, after a settle time of its own.
        wait_until(shows_site, timeout=120, interval=2.0,
                   message=lambda: f"the site stayed blocked after the allow: "
                                   f"{json.loads(managed.read_text())['URLAllowlist']} "
                                   f"{[t['url'] for t in tools.targets() if t['type'] == 'page'][:6]}")
    finally:
        if proc is not None:
            terminate(proc)
        rt.stop()
        site.shutdown()
        for d in (home, private, shared):
            shutil.rmtree(d, ignore_errors=True)



@pytest.mark.integration
def test_mode_upstream_in_the_running_filter_still_reports_blocked_attempts_with_the_dfe_fields(make_filter):
    """The agent's own dnsmasq pair in mode upstream: the school's resolver (a stub) answers
    what the key stage never allowed, the key stage's blocklist is refused, and the refusal
    is a ``blocked`` event with the DfE fields, as in allowlist mode."""
    from test_filter_dns import DFE_FIELDS, ask

    comp, rt = make_filter()
    assert ask(comp, "facebook.com") == ("NXDOMAIN", [])          # allowlist mode: not allowed
    older = with_domains(rt.policy, mode="upstream", block_domains=("tiktok.com",))
    rt.call(comp.on_policy, older)
    assert ask(comp, "facebook.com") == ("NOERROR", ["192.0.2.66"])  # the school's filter decides
    assert ask(comp, "tiktok.com") == ("NXDOMAIN", [])
    wait_until(lambda: "tiktok.com" in comp.blocked.coalescer._open, 5)
    rt.clock.advance(1)
    event = wait_until(lambda: [e for e in rt.of_type("blocked") if e["domain"] == "tiktok.com"], 5)[0]
    for key in DFE_FIELDS:
        assert event.get(key) not in (None, ""), key
    assert (event["profile"], event["user"]) == ("ks2", "pupil.5b.07")
