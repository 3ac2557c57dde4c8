"""Browser policy: generated files, atomic writes, and real headless Chromium enforcing them."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from agent.filter import browser
from fake_runtime import FakeRuntime
from filter_fixtures import filter_root, with_domains  # noqa: F401
from services import free_port, require_binary


@pytest.fixture
def policy(filter_root):
    rt = FakeRuntime(filter_root)
    yield rt.policy
    rt.close()


def test_chromium_policy_content(policy):
    data = browser.chromium_policy(policy, ["override-me.org"], block_quic=True)
    assert data["URLBlocklist"] == ["*"]
    assert "https://scratch.mit.edu" in data["URLAllowlist"]          # allow_urls
    assert "https://www.bbc.co.uk/bitesize" in data["URLAllowlist"] and "override-me.org" in data["URLAllowlist"]
    assert "bbci.co.uk" not in data["URLAllowlist"]                 # a CDN: resolvable, not browsable
    domain_only = browser.chromium_policy(with_domains(policy, allow_urls=()))
    assert "bbci.co.uk" in domain_only["URLAllowlist"]              # no allow_urls: domains are the list
    assert data["IncognitoModeAvailability"] == 1
    assert data["DeveloperToolsAvailability"] == 2
    assert data["BrowserGuestModeEnabled"] is False and data["BrowserAddPersonEnabled"] is False
    assert data["DnsOverHttpsMode"] == "off"
    assert data["ForceGoogleSafeSearch"] is True and data["ForceYouTubeRestrict"] == 2
    assert data["DownloadRestrictions"] == 3
    assert data["QuicAllowed"] is False
    moderate = browser.chromium_policy(with_domains(policy, youtube_restrict="moderate", safe_search=False))
    assert moderate["ForceYouTubeRestrict"] == 1 and moderate["ForceGoogleSafeSearch"] is False


def test_firefox_policy_merges_and_keeps_others(tmp_path, policy):
    d = tmp_path / "firefox" / "policies"
    d.mkdir(parents=True)
    (d / "policies.json").write_text(json.dumps({"policies": {"DisableTelemetry": True,
                                                              "WebsiteFilter": {"Block": []}}}))
    assert browser.write_firefox(d, browser.firefox_policy(policy, ["override-me.org"])) is True
    data = json.loads((d / "policies.json").read_text())["policies"]
    assert data["DisableTelemetry"] is True                             # someone else's key survives
    assert data["WebsiteFilter"]["Block"] == ["<all_urls>"]
    assert "https://www.bbc.co.uk/bitesize/*" in data["WebsiteFilter"]["Exceptions"]
    assert "*://override-me.org/*" in data["WebsiteFilter"]["Exceptions"]
    assert data["DNSOverHTTPS"] == {"Enabled": False, "Locked": True}
    assert data["DisablePrivateBrowsing"] is True
    # Unchanged content: not rewritten.
    assert browser.write_firefox(d, browser.firefox_policy(policy, ["override-me.org"])) is False
    # A damaged file is replaced by a valid one.
    (d / "policies.json").write_text("{not json")
    browser.write_firefox(d, browser.firefox_policy(policy))
    assert "WebsiteFilter" in json.loads((d / "policies.json").read_text())["policies"]


def test_atomic_write_uses_a_temp_file_outside_the_directory(tmp_path, policy, monkeypatch):
    managed = tmp_path / "policies" / "managed"
    managed.mkdir(parents=True)
    (managed / "someone-else.json").write_text('{"HomepageLocation": "x"}')
    seen = []
    real = tempfile.mkstemp

    def spy(*a, **kw):
        seen.append(Path(kw["dir"]))
        return real(*a, **kw)

    import agent.files

    monkeypatch.setattr(agent.files.tempfile, "mkstemp", spy)
    assert browser.write_chromium(managed, browser.chromium_policy(policy)) is True
    assert seen == [managed.parent]                                     # never inside the watched dir
    assert sorted(p.name for p in managed.iterdir()) == ["classroom-safety.json", "someone-else.json"]
    assert (managed / "someone-else.json").read_text() == '{"HomepageLocation": "x"}'
    assert [p.name for p in managed.parent.iterdir() if p.is_file()] == []  # no temp file left behind
    assert oct(os.stat(managed / "classroom-safety.json").st_mode & 0o777) == "0o644"


class _Page(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_headless_chromium_enforces_the_generated_policy(tmp_path, policy):
    chromium = require_binary("chromium")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<html><body><h1>ALLOWED PAGE</h1></body></html>")
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Page, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()

    managed = Path("/etc/chromium/policies/managed")
    created = [p for p in (managed.parent, managed) if not p.exists()]
    ours = managed / f"classroom-safety-test-{uuid.uuid4().hex[:10]}.json"
    data = browser.chromium_policy(with_domains(policy, "allowed-site.example",
                                                allow_urls=policy.allow_urls + ("http://www.allowed-site.example",)))
    # Headless --dump-dom drives the page through DevTools, which this policy (rightly) forbids
    # on pupil devices; without this one key the test would hang instead of loading anything.
    assert data.pop("DeveloperToolsAvailability") == 2

    def load(url: str, profile: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / profile}", f"--host-resolver-rules=MAP * 127.0.0.1:{port}",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=60)

    try:
        managed.mkdir(parents=True, exist_ok=True)
        browser.write_outside(ours, json.dumps(data))
        allowed = load("http://www.allowed-site.example/", "p1")
        blocked = load("http://blocked-site.example/", "p2")
    finally:
        ours.unlink(missing_ok=True)
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:
                pass
        server.shutdown()
    assert not ours.exists()
    assert "ALLOWED PAGE" in allowed.stdout, allowed.stderr[-2000:]
    assert "ERR_BLOCKED_BY_ADMINISTRATOR" not in allowed.stdout + allowed.stderr
    assert "ALLOWED PAGE" not in blocked.stdout
    assert "ERR_BLOCKED_BY_ADMINISTRATOR" in blocked.stdout + blocked.stderr, blocked.stderr[-2000:]


def test_atomic_write_when_only_the_policy_dir_is_writable(tmp_path, policy, monkeypatch):
    """The systemd unit makes only .../managed writable (a bind mount): the parent is refused."""
    import errno

    managed = tmp_path / "policies" / "managed"
    real = tempfile.mkstemp

    def read_only_parent(*a, **kw):
        if Path(kw["dir"]) == managed.parent:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, **kw)

    import agent.files

    monkeypatch.setattr(agent.files.tempfile, "mkstemp", read_only_parent)
    assert browser.write_chromium(managed, browser.chromium_policy(policy)) is True
    assert json.loads((managed / "classroom-safety.json").read_text())["URLBlocklist"] == ["*"]
    # Chromium reads only the directory's own files: the temp dir is empty and not a file.
    assert sorted(p.name for p in managed.iterdir() if p.is_file()) == ["classroom-safety.json"]
    assert list((managed / browser.TMP_SUBDIR).iterdir()) == []


def test_both_browsers_are_locked_to_a_direct_connection_or_the_schools_proxy(policy):
    chromium = browser.chromium_policy(policy)
    assert chromium["ProxyMode"] == "direct" and "ProxyServer" not in chromium
    assert chromium["RemoteDebuggingAllowed"] is False
    firefox = browser.firefox_policy(policy)
    assert firefox["Proxy"] == {"Mode": "none", "Locked": True}
    assert firefox["BlockAboutConfig"] is True and firefox["BlockAboutProfiles"] is True
    assert firefox["DNSOverHTTPS"] == {"Enabled": False, "Locked": True}
    school = "proxy.penny-acres.sch.uk:3128"
    assert browser.chromium_policy(policy, proxy=school)["ProxyServer"] == school
    assert browser.firefox_policy(policy, proxy=school)["Proxy"]["HTTPProxy"] == school
