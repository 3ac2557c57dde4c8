"""Firefox ESR honours the policy the agent writes, where the agent writes it.

Found in review: the agent wrote /etc/firefox-esr/policies, which Debian's firefox-esr
never reads, so Firefox had no allowlist and a pupil could switch DNS over HTTPS on.
This drives a real headless Firefox ESR (tests/marionette.py) with the policy written by
``agent.filter.browser`` to the agent's DEFAULT ``firefox_policy_dir``, and a profile in
which the "pupil" has already switched DoH and a proxy on in their own prefs.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from agent.config.schema import AgentBootstrap
from agent.filter import browser
from fake_runtime import FakeRuntime
from filter_fixtures import filter_root, with_domains  # noqa: F401
from marionette import Firefox, MarionetteError
from services import free_port, require_binary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class _Page(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def policy(filter_root):
    rt = FakeRuntime(filter_root)
    yield rt.policy
    rt.close()


@pytest.fixture
def firefox_policy_dir():
    """The agent's default policy directory, with whatever was there put back afterwards.

    Firefox reads one machine-wide file, so two test runs on one machine take turns (a lock
    file), rather than one reading the other's policy."""
    import fcntl

    lock = open("/run/lock/classroom-safety-firefox-policy.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield from _policy_dir()
    finally:
        lock.close()


def _policy_dir():
    directory = Path(AgentBootstrap.model_fields["firefox_policy_dir"].default)
    target = directory / browser.FIREFOX_FILE
    created = [p for p in (directory.parent, directory) if not p.exists()]
    saved = target.read_bytes() if target.exists() else None
    directory.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # start from nothing: the agent's write is the only policy
    yield directory
    if saved is None:
        target.unlink(missing_ok=True)
    else:
        target.write_bytes(saved)
    for p in reversed(created):
        shutil.rmtree(p, ignore_errors=True)


def test_firefox_esr_enforces_the_policy_from_the_default_directory(tmp_path, policy, firefox_policy_dir):
    binary = require_binary("firefox-esr")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<html><body><h1>ALLOWED PAGE</h1></body></html>")
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Page, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    allowed = with_domains(policy, "allowed-site.example",
                           allow_urls=policy.allow_urls + ("http://www.allowed-site.example",))
    data = browser.firefox_policy(allowed)
    # DisableDeveloperTools also turns off Marionette, Firefox's remote control, which this
    # test drives it with (good: a pupil cannot drive it either); as with Chromium's
    # DeveloperToolsAvailability, the test leaves that one key out.
    assert data.pop("DisableDeveloperTools") is True
    assert browser.write_firefox(firefox_policy_dir, data) is True

    pupil_prefs = {
        "network.dns.forceResolve": "127.0.0.1",   # every name to the local test server
        "network.trr.mode": 2,                      # the pupil switched DNS over HTTPS on ...
        "network.trr.uri": "https://doh.example/dns-query",
        "network.proxy.type": 1,                    # ... and a proxy of their own
        "network.proxy.http": "127.0.0.1", "network.proxy.http_port": 9,
    }
    ff = Firefox(binary, tmp_path / "profile", pupil_prefs)
    try:
        active = json.loads(ff.chrome("return JSON.stringify(Services.policies.getActivePolicies())"))
        page = ff.navigate(f"http://www.allowed-site.example:{port}/")
        with pytest.raises(MarionetteError, match="blockedByPolicy"):
            ff.navigate(f"http://blocked-site.example:{port}/")
        with pytest.raises(MarionetteError, match="blockedByPolicy|about:config"):
            ff.navigate("about:config")
        trr = ff.chrome("return [Services.prefs.getIntPref('network.trr.mode'), "
                        "Services.prefs.prefIsLocked('network.trr.mode')]")
        proxy = ff.chrome("return [Services.prefs.getIntPref('network.proxy.type'), "
                          "Services.prefs.prefIsLocked('network.proxy.type')]")
    finally:
        ff.close()
        server.shutdown()
    assert active["DNSOverHTTPS"] == {"Enabled": False, "Locked": True}
    assert active["WebsiteFilter"]["Block"] == ["<all_urls>"]
    assert "ALLOWED PAGE" in page                   # the allowlist lets the lesson's site through
    assert trr == [5, True]                         # DoH off (5 = off by choice), locked against the pupil
    assert proxy == [0, True]                       # no proxy, locked
