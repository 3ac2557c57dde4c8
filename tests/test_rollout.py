"""Config rollout on the collector: publish, device fetch with ETag, applied status, rollback, audit diffs.

The core flow runs on SQLite and PostgreSQL (the ``store`` fixture); the real-agent and
real-broker path is in test_configsync.py, the CLI against a live server at the end here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from fastapi.testclient import TestClient

from agent import protocol
from agent.config import ConfigTree, load_tree
from server.rollout import RolloutError, check_files, etag_matches, read_files, unified_diff
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, REPO, STAFF, make_event
from web_fixtures import DEVICE_PASSWORD, collector, enrol_device  # noqa: F401

pytestmark = pytest.mark.timeout(60)

CONFIG = REPO / "config"
DEVICES = ["1a-pc-01", "1a-pi-01", "5b-pi-01", "5b-pi-02", "reception-pi-01", "reception-pi-02"]


def good_files() -> dict[str, str]:
    return read_files(CONFIG)


def renamed(files: dict[str, str]) -> dict[str, str]:
    out = dict(files)
    out["rooms/5b.yaml"] = out["rooms/5b.yaml"].replace("name: Year 5 Beech", "name: Year 5 Birch")
    return out


class Recorder:
    def __init__(self):
        self.sent = []

    def __call__(self, topic, payload, qos, retain=False):
        self.sent.append((topic, json.loads(payload), qos, retain))


@pytest.fixture
def setup(store, app_factory, staff_client):
    rec = Recorder()
    app = app_factory(store, publisher=rec)
    return app, rec, staff_client(app, "technician")


def _counts(store) -> dict:
    return {t: store.count(t) for t in ("rollouts", "config_versions", "audit")}


# --------------------------------------------------------------------------- the flow


def test_publish_then_device_fetches_with_etag_and_reports_applied(setup, store):
    app, rec, tech = setup
    r = tech.post("/api/v1/config/rollouts", json={"files": good_files(), "why": "start of term"})
    assert r.status_code == 201, r.text
    done = r.json()
    version = load_tree(CONFIG).version
    assert (done["version"], done["previous"], done["kind"], done["actor"]) == (version, None, "publish", "tech")
    assert done["devices"] == 6 and done["notified"] == 6

    # Every device is told on its own cmd topic, not retained: a device never acts on a retained
    # command, and an offline one fetches when it next connects (tests/test_delivery.py).
    assert sorted(t for t, *_ in rec.sent) == sorted(
        protocol.topic(protocol.DEFAULT_PREFIX, "penny-acres", d.split("-")[0], d, "cmd") for d in DEVICES)
    for _topic, payload, qos, retain in rec.sent:
        assert payload == {"cmd": "reload-config", "by": "tech"} and qos == 1 and retain is False
        protocol.validate("cmd", payload)

    enrol_device(store)
    device = TestClient(app)
    auth = ("5b-pi-01", DEVICE_PASSWORD)
    r = device.get("/api/v1/devices/5b-pi-01/config", auth=auth)
    assert r.status_code == 200
    assert r.headers["etag"] == f'"{version}"'
    body = r.json()
    assert body["version"] == version and body["device"] == "5b-pi-01" and list(body["rooms"]) == ["5b"]
    assert ConfigTree.from_dict(body).version == version
    # Unchanged: 304 with no body.
    r2 = device.get("/api/v1/devices/5b-pi-01/config", auth=auth, headers={"If-None-Match": r.headers["etag"]})
    assert r2.status_code == 304 and r2.content == b""
    # A stale ETag gets the full config again.
    r3 = device.get("/api/v1/devices/5b-pi-01/config", auth=auth, headers={"If-None-Match": '"000000000000"'})
    assert r3.status_code == 200

    # The device reports; the rollout view shows which version runs where.
    status = tech.get("/api/v1/config/status").json()
    assert status["live"] == version and status["counts"] == {"current": 0, "pending": 6, "rejected": 0}
    store.insert_events([make_event(type="config_applied", version=version, previous=None)])
    status = tech.get("/api/v1/config/status").json()
    assert status["counts"] == {"current": 1, "pending": 5, "rejected": 0}
    room = next(r for r in status["rooms"] if r["room"] == "5b")
    row = next(d for d in room["devices"] if d["device"] == "5b-pi-01")
    assert (row["running"], row["state"], row["event"]) == (version, "current", "config_applied")
    assert room["current"] == 1

    page = tech.get("/rollout")
    assert page.status_code == 200
    assert f'id="live-version">{version}<' in page.text
    assert "1/2 current" in page.text and 'class="state state-current">current' in page.text


def test_device_config_endpoint_is_device_only(setup, store, staff_client):
    app, rec, tech = setup
    assert tech.post("/api/v1/config/rollouts", json={"files": good_files(), "why": "x"}).status_code == 201
    enrol_device(store)
    enrol_device(store, "5b-pi-02", "device-secret-5b-pi-02")
    c = TestClient(app)
    url = "/api/v1/devices/5b-pi-01/config"
    assert c.get(url).status_code == 401
    assert c.get(url, auth=("5b-pi-01", "wrong-password")).status_code == 401
    assert c.get(url, auth=("5b-pi-02", "device-secret-5b-pi-02")).status_code == 403  # not its own
    assert c.get(url, headers={"Authorization": "Basic !!!not-base64"}).status_code == 401
    assert tech.get(url).status_code == 401  # staff are not devices
    # An enrolled device that is not in the live config: a clear 404, not a crash.
    enrol_device(store, "9z-pi-01", "device-secret-9z")
    r = c.get("/api/v1/devices/9z-pi-01/config", auth=("9z-pi-01", "device-secret-9z"))
    assert r.status_code == 404 and "not in the live config" in r.json()["detail"]


def test_bad_tree_is_rejected_with_file_line_errors_and_nothing_changes(setup, store):
    app, rec, tech = setup
    assert tech.post("/api/v1/config/rollouts", json={"files": good_files(), "why": "v1"}).status_code == 201
    live_tree = app.state.tree
    before, sent_before = _counts(store), len(rec.sent)
    bad = good_files()
    bad["rooms/5b.yaml"] = bad["rooms/5b.yaml"].replace("key_stage: ks2", "key_stage: ks9")
    bad["keystages/ks1.yaml"] = bad["keystages/ks1.yaml"] + "\nsafe_serch: true\n"
    r = tech.post("/api/v1/config/rollouts", json={"files": bad, "why": "typo'd change"})
    assert r.status_code == 422
    errors = r.json()["detail"]["errors"]
    assert any(e.startswith("config/rooms/5b.yaml:3: key_stage: unknown key stage 'ks9'") for e in errors), errors
    assert any(e.startswith("config/keystages/ks1.yaml:") and "safe_serch: unknown key (did you mean 'safe_search'?)"
               in e for e in errors), errors
    assert _counts(store) == before and len(rec.sent) == sent_before
    assert app.state.tree is live_tree
    assert tech.get("/api/v1/config/status").json()["live"] == load_tree(CONFIG).version


@pytest.mark.parametrize("body, expect", [
    ([1, 2], "body: expected a JSON object"),
    ({"files": "site.yaml", "why": "x"}, "files: expected an object"),
    ({"files": {}, "why": "x"}, "files: expected an object"),
    ({"files": {"../etc/passwd.yaml": "a: 1"}, "why": "x"}, "is not a config tree file"),
    ({"files": {"rooms/5b.yaml": 42}, "why": "x"}, "content must be text"),
    ({"files": {"site.yaml": "x" * 300_000}, "why": "x"}, "larger than 256 KiB"),
    ({"files": {"site.yaml": "site: [unclosed"}, "why": "x"}, "config/site.yaml:1"),
    ({"files": None, "why": "x"}, "files: expected an object"),
    ({"why": "x", "file": {}}, "file: unknown field"),
    ("FILES", "body: expected a JSON object"),
])
def test_malformed_publish_bodies_get_one_line_errors(sqlite_store, app_factory, staff_client, body, expect):
    app = app_factory(sqlite_store, publisher=Recorder())
    tech = staff_client(app, "technician")
    r = tech.post("/api/v1/config/rollouts", json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]["errors"]
    assert any(expect in e for e in errors), errors
    assert all("\n" not in e for e in errors)
    assert sqlite_store.count("rollouts") == 0 and sqlite_store.count("config_versions") == 0
    # The server keeps serving.
    assert tech.get("/api/v1/config/rollouts").json() == []


def test_why_is_required_and_same_version_is_not_republished(setup, store):
    app, rec, tech = setup
    r = tech.post("/api/v1/config/rollouts", json={"files": good_files(), "why": "   "})
    assert r.status_code == 422 and r.json()["detail"]["errors"][0].startswith("why:")
    assert tech.post("/api/v1/config/rollouts", json={"files": good_files(), "why": "v1"}).status_code == 201
    before = _counts(store)
    r = tech.post("/api/v1/config/rollouts", json={"files": good_files(), "why": "again"})
    assert r.status_code == 409 and "already live" in r.json()["detail"]["errors"][0]
    assert _counts(store) == before


def test_rollback_republishes_the_previous_version_as_a_new_record(setup, store):
    app, rec, tech = setup
    assert tech.post("/api/v1/config/rollback", json={"why": "nothing yet"}).status_code == 409
    v1 = tech.post("/api/v1/config/rollouts", json={"files": good_files(), "why": "v1"}).json()["version"]
    r = tech.post("/api/v1/config/rollback", json={"why": "only one"})
    assert r.status_code == 409 and "first one published" in r.json()["detail"]["errors"][0]
    v2 = tech.post("/api/v1/config/rollouts", json={"files": renamed(good_files()), "why": "rename 5b"}).json()["version"]
    assert v2 != v1 and app.state.tree.version == v2 and app.state.tree.rooms["5b"].name == "Year 5 Birch"
    assert tech.post("/api/v1/config/rollback", json={}).status_code == 422  # why is required
    rec.sent.clear()
    r = tech.post("/api/v1/config/rollback", json={"why": "the new name confused the children"})
    assert r.status_code == 201, r.text
    done = r.json()
    assert (done["version"], done["previous"], done["kind"]) == (v1, v2, "rollback")
    assert app.state.tree.version == v1 and app.state.tree.rooms["5b"].name == "Year 5 Beech"
    assert len(rec.sent) == 6  # devices told again
    history = tech.get("/api/v1/config/rollouts").json()
    assert [(h["kind"], h["version"]) for h in history] == [("rollback", v1), ("publish", v2), ("publish", v1)]
    # Devices now get v1 again.
    enrol_device(store)
    body = TestClient(app).get("/api/v1/devices/5b-pi-01/config", auth=("5b-pi-01", DEVICE_PASSWORD)).json()
    assert body["version"] == v1 and body["rooms"]["5b"]["name"] == "Year 5 Beech"


def test_audit_log_has_who_why_and_unified_diffs(setup, store, staff_client):
    app, rec, tech = setup
    v1 = tech.post("/api/v1/config/rollouts", json={"files": good_files(), "why": "v1"}).json()["version"]
    v2 = tech.post("/api/v1/config/rollouts", json={"files": renamed(good_files()), "why": "rename 5b"}).json()["version"]
    diff = tech.get("/api/v1/config/diff", params={"from": v1, "to": v2}).text
    assert f"--- {v1}/rooms/5b.yaml" in diff and f"+++ {v2}/rooms/5b.yaml" in diff
    assert "\n-name: Year 5 Beech\n" in diff and "\n+name: Year 5 Birch\n" in diff
    assert "site.yaml" not in diff  # only what changed
    assert tech.get("/api/v1/config/diff", params={"to": "nope"}).status_code == 404

    audit = [a for a in store.list_audit(limit=50) if a["action"].startswith("config.")]
    latest = max(audit, key=lambda a: a["ts"])
    details = json.loads(latest["details"])
    assert (latest["actor"], latest["action"], latest["target"]) == ("tech", "config.publish", v2)
    assert details["why"] == "rename 5b" and details["previous"] == v1
    assert "+name: Year 5 Birch" in details["diff"]

    page = tech.get("/rollout/audit")
    assert page.status_code == 200
    assert "rename 5b" in page.text and '<span class="add">+name: Year 5 Birch</span>' in page.text


def test_web_publish_and_rollback_forms(sqlite_store, tmp_path, staff_client, tree):
    from server.http.app import Settings, create_app
    from server_fixtures import add_staff

    for role, name in STAFF.items():
        add_staff(sqlite_store, name, role)
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    app = create_app(Settings(db_url="unused", config_dir=str(config)), store=sqlite_store, tree=tree,
                     publisher=Recorder())
    tech = staff_client(app, "technician")
    r = tech.post("/rollout/publish", data={"why": "first"})
    assert r.status_code == 200 and "Published version" in r.text
    # A broken file in the server's folder: errors shown, nothing changed.
    (config / "rooms" / "1a.yaml").write_text((CONFIG / "rooms" / "1a.yaml").read_text() + "devices: oops: [\n")
    r = tech.post("/rollout/publish", data={"why": "broken"})
    assert r.status_code == 422 and "Nothing was changed" in r.text and "config/rooms/1a.yaml:" in r.text
    assert sqlite_store.count("rollouts") == 1
    (config / "rooms" / "1a.yaml").write_text((CONFIG / "rooms" / "1a.yaml").read_text())
    (config / "rooms" / "5b.yaml").write_text(renamed(good_files())["rooms/5b.yaml"])
    assert "Published version" in tech.post("/rollout/publish", data={"why": "rename"}).text
    r = tech.post("/rollout/rollback", data={"why": "undo"})
    assert r.status_code == 200 and "Rolled back to version" in r.text
    assert sqlite_store.count("rollouts") == 3


def test_rollout_endpoints_refuse_other_roles(sqlite_store, app_factory, staff_client):
    app = app_factory(sqlite_store, publisher=Recorder())
    calls = [("POST", "/api/v1/config/rollouts", {"files": good_files(), "why": "x"}),
             ("POST", "/api/v1/config/rollback", {"why": "x"}), ("GET", "/api/v1/config/rollouts", None),
             ("GET", "/api/v1/config/status", None), ("GET", "/api/v1/config/diff?to=abc", None),
             ("GET", "/rollout", None), ("POST", "/rollout/publish", None), ("POST", "/rollout/rollback", None),
             ("GET", "/rollout/audit", None), ("GET", "/devices", None)]
    for role in (None, "teacher", "dsl"):
        client = staff_client(app, role)
        for method, url, body in calls:
            r = client.request(method, url, json=body) if body is not None else client.request(method, url)
            assert r.status_code == (401 if role is None else 403), (role, method, url, r.status_code)
    assert sqlite_store.count("rollouts") == 0
    admin = staff_client(app, "admin")
    assert admin.get("/api/v1/config/status").status_code == 200


# --------------------------------------------------------------------------- pure helpers


def test_check_files_matches_load_tree_and_stored_tree_round_trips():
    tree, files = check_files(good_files())
    assert tree.version == load_tree(CONFIG).version
    assert ConfigTree.from_dict(json.loads(json.dumps(tree.to_dict()))).version == tree.version
    with pytest.raises(RolloutError) as exc:
        check_files({"site.yaml": "site: penny-acres\n"})
    assert any("keystages" in e for e in exc.value.errors)


def test_etag_matching_and_diff_helpers():
    assert etag_matches('"abc"', '"abc"') and etag_matches('W/"abc"', '"abc"') and etag_matches("*", '"abc"')
    assert etag_matches('"x", "abc"', '"abc"') and not etag_matches('"abcd"', '"abc"') and not etag_matches(None, '"a"')
    d = unified_diff({"a.yaml": "x: 1\n"}, {"a.yaml": "x: 2\n", "b.yaml": "y: 1"}, "v1", "v2")
    assert "-x: 1\n+x: 2\n" in d and "+++ v2/b.yaml" in d and "--- /dev/null" in d and d.endswith("\n")


# --------------------------------------------------------------------------- the CLI against a live server


@pytest.mark.integration
def test_cli_publish_and_rollback_against_a_live_collector(collector, tmp_path):
    from web_fixtures import CmdRecorder

    recorder = CmdRecorder(collector.broker, "classroom/v1/penny-acres/+/+/cmd")
    env = {**os.environ, "CLASSROOM_SERVER": collector.url, "CLASSROOM_USER": STAFF["technician"],
           "CLASSROOM_PASSWORD": PASSWORD, "DEBUG": ""}
    cli = [str(REPO / ".venv" / "bin" / "classroom-server")]

    def run(*args):
        return subprocess.run(cli + list(args), capture_output=True, text=True, env=env, timeout=60)

    bad = tmp_path / "bad"
    shutil.copytree(CONFIG, bad)
    (bad / "rooms" / "5b.yaml").write_text((CONFIG / "rooms" / "5b.yaml").read_text().replace("ks2", "ks9", 1))
    r = run("config", "publish", str(bad), "--why", "oops")
    assert r.returncode == 1
    assert "bad/rooms/5b.yaml:3: key_stage: unknown key stage 'ks9'" in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("nothing was changed")
    assert collector.store.count("rollouts") == 0

    r = run("config", "publish", str(CONFIG), "--why", "start of term")
    assert r.returncode == 0, r.stderr
    version = load_tree(CONFIG).version
    assert r.stdout.startswith(f"published version {version} (was nothing): 6 of 6 devices told")
    topic, cmd, _ = recorder.wait_for(lambda m: m[0].endswith("/5b/5b-pi-01/cmd"))
    assert cmd == {"cmd": "reload-config", "by": "tech"}

    r = run("config", "rollback", "--why", "test")
    assert r.returncode == 1 and "first one published" in r.stderr
    r = run("config", "publish", str(CONFIG), "--why", "")
    assert r.returncode == 1 and r.stderr.startswith("classroom-server: error: --why:")
    r = run("config", "publish", str(CONFIG), "--why", "x", "--server", "http://127.0.0.1:9")
    assert r.returncode == 1 and r.stderr.strip() == \
        "classroom-server: error: --server http://127.0.0.1:9: cannot connect (ConnectionError)"
    env["CLASSROOM_PASSWORD"] = "wrong-password-here"
    r = run("config", "rollback", "--why", "x")
    assert r.returncode == 1 and "login as 'tech' refused" in r.stderr and "wrong-password-here" not in r.stderr
    recorder.close()


def test_a_restarted_server_serves_the_last_published_version(sqlite_store, app_factory, staff_client, tree):
    app = app_factory(sqlite_store, publisher=Recorder())
    tech = staff_client(app, "technician")
    v2 = tech.post("/api/v1/config/rollouts", json={"files": renamed(good_files()), "why": "rename"}).json()["version"]
    assert v2 != tree.version
    # Started again with the original --config tree: the published version outranks it.
    again = app_factory(sqlite_store, publisher=Recorder())
    assert again.state.tree.version == v2 and again.state.tree.rooms["5b"].name == "Year 5 Birch"
    assert again.state.rollouts.current()["version"] == v2


def test_status_reads_rejections_and_heartbeat_versions(setup, store):
    from server_fixtures import make_heartbeat, make_status, topic_of

    from agent.protocol import parse_topic

    app, rec, tech = setup
    v1 = tech.post("/api/v1/config/rollouts", json={"files": good_files(), "why": "v1"}).json()["version"]
    v2 = tech.post("/api/v1/config/rollouts", json={"files": renamed(good_files()), "why": "v2"}).json()["version"]
    # 5b-pi-01 applied v1 earlier, then refused v2; 5b-pi-02 reports v2 in its heartbeat only;
    # 1a-pi-01's retained status still says v1.
    store.insert_events([make_event(type="config_applied", version=v1, ts="2026-11-24T08:00:00.000Z"),
                         make_event(type="config_rejected", version=v2, ts="2026-11-24T09:00:00.000Z",
                                    errors=["<compiled config>: rooms.5b.devices[0].hardware.button_pin: not a pin"],
                                    kept=v1)])
    store.ingest([(parse_topic(topic_of("5b", "5b-pi-02", "status")),
                   make_status(config_version=None, ts="2026-11-24T07:00:00.000Z"))])
    store.ingest([(parse_topic(topic_of("5b", "5b-pi-02", "heartbeat")), make_heartbeat(config_version=v2))])
    where = parse_topic(topic_of("1a", "1a-pi-01", "status"))
    store.ingest([(where, make_status(config_version=v1))])
    status = tech.get("/api/v1/config/status").json()
    rows = {d["device"]: d for room in status["rooms"] for d in room["devices"]}
    assert (rows["5b-pi-01"]["state"], rows["5b-pi-01"]["running"]) == ("rejected", v1)
    assert "button_pin: not a pin" in rows["5b-pi-01"]["reason"]
    assert (rows["5b-pi-02"]["state"], rows["5b-pi-02"]["running"]) == ("current", v2)
    assert (rows["1a-pi-01"]["state"], rows["1a-pi-01"]["running"], rows["1a-pi-01"]["online"]) == \
        ("pending", v1, "online")
    assert status["counts"] == {"current": 1, "pending": 4, "rejected": 1}
    page = tech.get("/rollout").text
    assert 'class="state state-rejected">rejected: &lt;compiled config&gt;' in page


# --------------------------------------------------------------------------- bench/rollout.py


@pytest.mark.timeout(300)
def test_rollout_bench_runs_and_prints_its_summary_line():
    # The numbers are the bench's business (no timed assertions in tests); this keeps it runnable:
    # a real collector, broker and agent runtimes, 5 devices publish -> config_applied.
    import sys

    from services import require_binary

    require_binary("mosquitto")
    r = subprocess.run([sys.executable, str(REPO / "bench" / "rollout.py"), "--devices", "5", "--timeout", "60"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("rollout devices=5 p50_s=") and " p95_s=" in last and last.endswith(" failed=0"), last
    assert "'current': 5, 'pending': 0, 'rejected': 0" in r.stdout, r.stdout


@pytest.mark.parametrize("flag", ["--devices", "--procs", "--timeout"])
def test_rollout_bench_refuses_a_count_below_one_in_one_line(flag):
    import sys

    r = subprocess.run([sys.executable, str(REPO / "bench" / "rollout.py"), flag, "0"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(f"{flag}: must be at least 1"), r.stderr
