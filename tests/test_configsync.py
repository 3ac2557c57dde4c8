"""The agent's config sync: fetch with ETag, validate, cache atomically, keep last-known-good.

Unit tests talk to a tiny stdlib HTTP server that can send the malformed answers a real
collector never would; the integration test runs the REAL agent runtime against the
REAL collector and broker: publish -> reload-config -> fetch 200 -> applied -> status
shows it -> fetch 304 -> publish again -> rollback.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.config import load_tree
from agent.uplink.configsync import ConfigSync, cache_path, load_cached, save_cached
from server_fixtures import PASSWORD, REPO, STAFF, tree  # noqa: F401
from services import wait_until
from web_fixtures import DEVICE_PASSWORD, collector, enrol_device  # noqa: F401

pytestmark = pytest.mark.timeout(60)

CONFIG = REPO / "config"
DEVICE = "5b-pi-01"


@pytest.fixture(scope="module")
def compiled():
    t = load_tree(CONFIG)
    return t.for_device(DEVICE)


class Stub:
    """An HTTP server answering from a list of (status, headers, body); records requests."""

    def __init__(self):
        self.answers: list[tuple[int, dict, bytes]] = []
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub.requests.append({"path": self.path, "headers": dict(self.headers)})
                status, headers, body = stub.answers.pop(0) if stub.answers else (500, {}, b"")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


class FakeRuntime:
    def __init__(self, verdict=True):
        self.events: list[tuple[str, dict]] = []
        self.applied: list[dict] = []
        self.verdict = verdict

    def emit_event(self, type, **fields):
        self.events.append((type, fields))
        return {"type": type, **fields}

    def apply_config(self, data):
        self.applied.append(data)
        return self.verdict


def _ok(body: dict) -> tuple[int, dict, bytes]:
    return 200, {"ETag": f'"{body["version"]}"', "Content-Type": "application/json"}, json.dumps(body).encode()


def test_fetch_applies_caches_and_then_sends_if_none_match(stub, tmp_path, compiled):
    rt = FakeRuntime()
    sync = ConfigSync(stub.url, DEVICE, tmp_path, auth=("5b-pi-01", "pw"))
    sync.runtime = rt
    stub.answers.append(_ok(compiled))
    result = sync.fetch()
    assert result.status == "applied" and result.version == compiled["version"]
    assert rt.applied == [compiled]
    assert rt.events == []  # the runtime reports config_applied itself
    assert stub.requests[0]["path"] == f"/api/v1/devices/{DEVICE}/config"
    assert "If-None-Match" not in stub.requests[0]["headers"]
    assert stub.requests[0]["headers"]["Authorization"].startswith("Basic ")
    assert json.loads(cache_path(tmp_path).read_text()) == compiled
    assert list(tmp_path.glob(".*tmp")) == []  # atomic write left nothing behind

    stub.answers.append((304, {}, b""))
    assert sync.fetch().status == "unchanged"
    assert stub.requests[1]["headers"]["If-None-Match"] == f'"{compiled["version"]}"'
    assert len(rt.applied) == 1

    # A restarted agent starts from the cache and still asks conditionally.
    again = ConfigSync(stub.url, DEVICE, tmp_path)
    assert again.version == compiled["version"] and again.etag == f'"{compiled["version"]}"'


@pytest.mark.parametrize("answer, reason", [
    ((200, {}, b"<html>oops</html>"), "not JSON"),
    ((200, {}, b"[1, 2, 3]"), "expected a JSON object"),
    ((200, {}, json.dumps({"device": "5b-pi-02", "version": "x"}).encode()), "not '5b-pi-01'"),
    ((200, {}, json.dumps({"device": DEVICE}).encode()), "version: is required"),
    ((200, {}, json.dumps({"device": DEVICE, "version": "abc", "site": {}, "profiles": {}, "rooms": {}}).encode()),
     "<compiled config>"),
])
def test_bad_bodies_are_rejected_and_last_known_good_is_kept(stub, tmp_path, compiled, answer, reason):
    save_cached(tmp_path, compiled, f'"{compiled["version"]}"')
    before = cache_path(tmp_path).read_bytes()
    rt = FakeRuntime()
    sync = ConfigSync(stub.url, DEVICE, tmp_path)
    sync.runtime = rt
    stub.answers.append(answer)
    result = sync.fetch()
    assert result.status == "rejected" and reason in result.reason, result
    assert rt.applied == []
    assert cache_path(tmp_path).read_bytes() == before
    assert sync.version == compiled["version"]
    [(kind, fields)] = rt.events
    assert kind == "config_rejected" and fields["kept"] == compiled["version"] and reason in fields["errors"][0]


@pytest.mark.parametrize("status", [401, 403, 404, 500, 503])
def test_http_errors_and_no_network_keep_running_on_the_cache(stub, tmp_path, compiled, status):
    save_cached(tmp_path, compiled, None)
    rt = FakeRuntime()
    sync = ConfigSync(stub.url, DEVICE, tmp_path)
    sync.runtime = rt
    stub.answers.append((status, {}, b'{"detail": "no"}'))
    result = sync.fetch()
    assert result.status == "failed" and str(status) in result.reason
    assert rt.events == [] and rt.applied == [] and sync.version == compiled["version"]
    down = ConfigSync("http://127.0.0.1:9", DEVICE, tmp_path, timeout=2)
    down.runtime = rt
    assert down.fetch().status == "failed" and rt.events == []


def test_runtime_refusal_keeps_the_old_cache(stub, tmp_path, compiled):
    rt = FakeRuntime(verdict=False)
    sync = ConfigSync(stub.url, DEVICE, tmp_path)
    sync.runtime = rt
    stub.answers.append(_ok(compiled))
    assert sync.fetch().status == "rejected"
    assert not cache_path(tmp_path).exists() and sync.version is None
    assert rt.events == []  # Runtime._reject already emitted config_rejected


def test_on_apply_hook_that_raises_is_a_rejection(stub, tmp_path, compiled):
    rt = FakeRuntime()

    def refuse(tree, data):
        raise RuntimeError("dnsmasq would not start")

    sync = ConfigSync(stub.url, DEVICE, tmp_path, on_apply=refuse)
    sync.runtime = rt
    stub.answers.append(_ok(compiled))
    result = sync.fetch()
    assert result.status == "rejected" and "dnsmasq would not start" in result.reason
    assert rt.events[0][0] == "config_rejected" and rt.events[0][1]["version"] == compiled["version"]


def test_damaged_cache_is_ignored_not_fatal(tmp_path, compiled):
    cache_path(tmp_path).write_text("{not json")
    assert load_cached(tmp_path) == (None, None)
    cache_path(tmp_path).write_text(json.dumps({"device": DEVICE, "site": 1}))
    assert load_cached(tmp_path) == (None, None)
    save_cached(tmp_path, compiled, '"etag-of-another-version"')
    (tmp_path / "config.etag").write_text(json.dumps({"version": "000000000000", "etag": '"zzz"'}))
    data, etag = load_cached(tmp_path)
    assert data == compiled and etag is None  # an ETag for another version is not trusted


def test_reload_config_command_triggers_one_fetch(stub, tmp_path, compiled):
    rt = FakeRuntime()
    sync = ConfigSync(stub.url, DEVICE, tmp_path)
    sync.runtime = rt
    assert sync.on_command({"cmd": "lock", "by": "x"}) is False
    stub.answers.append(_ok(compiled))
    assert sync.on_command({"cmd": "reload-config", "by": "tech"}) is True
    assert wait_until(lambda: sync.wait_idle(0) and sync.last_result is not None, timeout=10)
    assert sync.last_result.status == "applied" and sync.fetches == 1


# --------------------------------------------------------------------------- the real thing


@pytest.mark.integration
def test_real_agent_follows_publish_and_rollback_from_the_collector(collector, tmp_path):
    import httpx
    from gpiozero.pins.mock import MockFactory

    from agent.config.schema import AgentBootstrap
    from agent.core.runtime import Runtime
    from agent.desktop.headless import HeadlessScreen
    from agent.report.screen import Screen
    from server.rollout import read_files

    api = httpx.Client(base_url=collector.url, timeout=30)
    token = api.post("/api/v1/login", json={"username": STAFF["technician"], "password": PASSWORD}).json()["token"]
    api.headers["Authorization"] = f"Bearer {token}"
    files = read_files(CONFIG)
    r = api.post("/api/v1/config/rollouts", json={"files": files, "why": "start of term"})
    assert r.status_code == 201, r.text
    v1 = r.json()["version"]

    enrol_device(collector.store)
    creds = tmp_path / "credentials.yaml"
    creds.write_text(f"username: {DEVICE}\npassword: {DEVICE_PASSWORD}\n")
    boot = AgentBootstrap(device=DEVICE, site="penny-acres", broker_url=f"mqtt://127.0.0.1:{collector.broker.port}",
                          collector_url=collector.url, credentials=str(creds), state_dir=str(tmp_path / "state"),
                          control_socket=str(tmp_path / "control.sock"), screen_backend="headless")
    runtime = Runtime(boot, screen=Screen(HeadlessScreen()), pin_factory=MockFactory(), control=False)
    sync = next(c for c in runtime.components if isinstance(c, ConfigSync))
    runtime.start()

    def device_row(version):
        # The device's status or heartbeat may name the version before its config_applied
        # event is stored (they are separate messages): wait for both.
        status = api.get("/api/v1/config/status").json()
        room = next(r for r in status["rooms"] if r["room"] == "5b")
        row = next(d for d in room["devices"] if d["device"] == DEVICE)
        wanted = (version, version, "current", "config_applied")
        return row if (status["live"], row["running"], row["state"], row["event"]) == wanted else None

    def applied():
        return [e["data"]["version"] for e in collector.store.events(type="config_applied", device=DEVICE)][::-1]

    try:
        # Boot: fetch (200), apply, config_applied over MQTT -> ingest -> the rollout view.
        wait_until(lambda: runtime.tree is not None and runtime.tree.version == v1, timeout=20)
        wait_until(lambda: device_row(v1), timeout=20, message="applied v1 never showed in the status")
        assert applied() == [v1]
        # Once connected (backlog drained) the device looks again: a conditional fetch, 304.
        # (It does not act on the retained reload-config: retained commands never replay.)
        wait_until(lambda: sync.fetches >= 2 and sync.wait_idle(0), timeout=20)
        assert sync.last_result.status == "unchanged"
        assert json.loads((tmp_path / "state" / "config.json").read_text())["version"] == v1

        # A new version: told over MQTT, fetched, applied, reported.
        changed = dict(files)
        changed["rooms/5b.yaml"] = changed["rooms/5b.yaml"].replace("Year 5 Beech", "Year 5 Birch")
        v2 = api.post("/api/v1/config/rollouts", json={"files": changed, "why": "rename"}).json()["version"]
        wait_until(lambda: device_row(v2) and applied() == [v1, v2], timeout=20, message="v2 never applied")
        assert runtime.tree.rooms["5b"].name == "Year 5 Birch"
        page = api.get("/rollout").text
        assert f'id="live-version">{v2}<' in page and "1/2 current" in page

        # One-step rollback brings the room back.
        r = api.post("/api/v1/config/rollback", json={"why": "children preferred Beech"})
        assert r.status_code == 201 and r.json()["version"] == v1
        wait_until(lambda: device_row(v1) and applied() == [v1, v2, v1], timeout=20,
                   message=lambda: f"rollback never applied: {applied()}")
        assert runtime.tree.rooms["5b"].name == "Year 5 Beech"

        # Published while the device cannot hear it (broker down): nothing retained waits for
        # it on the broker, yet once its connection is back and drained it fetches and applies.
        collector.broker.stop()
        away = dict(files)
        away["rooms/5b.yaml"] = away["rooms/5b.yaml"].replace("Year 5 Beech", "Year 5 Rowan")
        v3 = api.post("/api/v1/config/rollouts", json={"files": away, "why": "while away"}).json()["version"]
        collector.broker.start()
        wait_until(lambda: runtime.tree.version == v3, timeout=30,
                   message=lambda: f"the device never caught up after reconnecting: runs {runtime.tree.version}")

        def running():
            rooms = api.get("/api/v1/config/status").json()["rooms"]
            row = next(d for d in next(r for r in rooms if r["room"] == "5b")["devices"] if d["device"] == DEVICE)
            return row["running"]
        # The collector sees it too, from the device's retained status (this test's collector keeps
        # no broker session, so events sent before it resubscribed are not what it goes by).
        wait_until(lambda: running() == v3, timeout=30, message=lambda: f"the collector sees {running()}")
        assert runtime.tree.rooms["5b"].name == "Year 5 Rowan"
    finally:
        runtime.stop()
        api.close()


def test_failed_fetches_are_retried_with_backoff_until_the_collector_answers(stub, tmp_path, compiled):
    rt = FakeRuntime()
    sync = ConfigSync(stub.url, DEVICE, tmp_path, retry_initial=0.05, retry_max=0.2)
    stub.answers += [(503, {}, b""), (502, {}, b""), _ok(compiled)]
    sync.start(rt)
    try:
        wait_until(lambda: sync.last_result and sync.last_result.status == "applied" and sync.wait_idle(0),
                   timeout=10, message="never retried")
        assert sync.fetches == 3 and len(rt.applied) == 1
        assert sync._retry_delay == 0.05  # reset after success
    finally:
        sync.stop()
